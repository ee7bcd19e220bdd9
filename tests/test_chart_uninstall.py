"""The chart's CRDs on the real control plane: kopf's peering CRDs come with peering only, and the uninstall recipe
of docs/helm.md removes everything `helm uninstall` leaves behind (Helm never deletes the CRDs it installed from crds/).

The release is the page's own (`kubeinfer` in `kubeinfer-system`), so its commands run as written. The operator
runs out of cluster with the chart's flags, as the chart's ServiceAccount (tests/test_chart_cluster.py does the
same), long enough to give an InferenceService its runtime. This module deletes cluster-wide CRDs: it puts the
InferenceService CRD back when done (later modules apply what they need themselves, kopf's peering CRDs included).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chart_support import CHART, REPO, helm, helm_binary
from cluster_operator_support import Operator, wait
from cluster_support import Api, Kubectl, LocalCluster, new_namespace, service_account_kubeconfig, wait_established
from operator_support import CRD_PATH, deployment_path, is_path, service_path

RELEASE, NAMESPACE = "kubeinfer", "kubeinfer-system"  # as in docs/helm.md
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
IS_CRD = "inferenceservices.kubeinfer.io"
VALUES = ["--set", "runtime.images.gpu.repository=registry.example.com/kubeinfer/runtime", "--set",
          "runtime.images.gpu.tag=uninstall-test"]


@pytest.fixture(scope="module", autouse=True)
def clean_slate(kube_cluster: LocalCluster, kubectl: Kubectl) -> Iterator[None]:
    # A clean slate: kopf's peering CRDs may have been applied by earlier modules (tests/test_operator_modes.py).
    kubectl("delete", "crd", *PEERING_CRDS, "--ignore-not-found")
    yield
    helm_cluster(kube_cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
    kubectl("apply", "-f", str(CRD_PATH))
    wait_established(kubectl)


def helm_cluster(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return helm(*args, "--kubeconfig", str(cluster.kubeconfig), check=check)


def crd_exists(api: Api, name: str) -> bool:
    return api.get(f"{CRDS}/{name}") is not None


def uninstall_recipe() -> list[str]:
    """The commands of the Uninstall section of docs/helm.md, in order."""
    page = (REPO / "docs" / "helm.md").read_text()
    section = re.search(r"^## Uninstall\n(.*?)(?=^#|\Z)", page, re.S | re.M)
    assert section, "docs/helm.md has no '## Uninstall' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the Uninstall section of docs/helm.md has no bash block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def run(cluster: LocalCluster, kubectl: Kubectl, command: str) -> None:
    """One recipe line, as a person would type it, against the test's cluster."""
    argv = shlex.split(command)
    if argv[0] == "helm":
        argv = [str(helm_binary()), *argv[1:], "--kubeconfig", str(cluster.kubeconfig)]
    env = {**kubectl.env, "HELM_CACHE_HOME": str(REPO / ".cache" / "helm-home" / "cache"),
           "HELM_CONFIG_HOME": str(REPO / ".cache" / "helm-home" / "config"),
           "HELM_DATA_HOME": str(REPO / ".cache" / "helm-home" / "data")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"


def operator_for(cluster: LocalCluster, api: Api, tmp: Path) -> Operator:
    """The operator with the flags the chart gives its container, as the chart's ServiceAccount."""
    deployment = api.get(deployment_path(NAMESPACE, f"{RELEASE}-operator"))
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
    kubeconfig = service_account_kubeconfig(cluster, NAMESPACE, pod["serviceAccountName"], tmp / "kubeconfig")
    return Operator(kubeconfig, tmp / "operator.log", *container["args"], env=env)


def managed_children(api: Api, ns: str) -> list[str]:
    found = []
    for path in (f"/apis/apps/v1/namespaces/{ns}/deployments", service_path(ns),
                 f"/api/v1/namespaces/{ns}/pods"):
        listed: Any = api.get(path + "?labelSelector=app.kubernetes.io/managed-by%3Dkubeinfer-operator") or {}
        found += [f"{path.rsplit('/', 1)[1]}/{item['metadata']['name']}" for item in listed.get("items") or []]
    return found


def test_kopf_peering_crds_are_installed_with_peering_only(kube_cluster: LocalCluster, api: Api,
                                                           kubectl: Kubectl) -> None:
    helm_cluster(kube_cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
                 "--wait", "--timeout", "120s", *VALUES)
    try:
        assert crd_exists(api, IS_CRD)
        assert [crd for crd in PEERING_CRDS if crd_exists(api, crd)] == []
    finally:
        helm_cluster(kube_cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")


def test_the_readme_recipe_removes_what_helm_uninstall_leaves(kube_cluster: LocalCluster, api: Api,
                                                              kubectl: Kubectl, tmp_path: Path) -> None:
    recipe = uninstall_recipe()
    assert recipe[0].startswith(f"helm uninstall {RELEASE} --namespace {NAMESPACE}"), recipe
    helm_cluster(kube_cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
                 "--wait", "--timeout", "120s", "--set", "operator.peering.enabled=true", *VALUES)
    assert all(crd_exists(api, crd) for crd in (IS_CRD, *PEERING_CRDS))  # peering: its CRDs came along
    ns = new_namespace(api, "uninstall")
    operator = operator_for(kube_cluster, api, tmp_path)
    try:
        api.create(is_path(ns), {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                                 "metadata": {"name": "left"},
                                 "spec": {"task": "detect", "model": {"uri": "/models/m.pt"}}})
        wait(operator, lambda: ((api.get(is_path(ns, "left")) or {}).get("status") or {}).get("phase") == "Ready",
             "the InferenceService Ready")
    finally:
        assert operator.stop() == 0, operator.logs()

    run(kube_cluster, kubectl, recipe[0])
    # Helm's rule for crds/: the CRDs, the InferenceService and its runtime all stay, with no operator left.
    assert api.get(deployment_path(NAMESPACE, f"{RELEASE}-operator")) is None
    assert all(crd_exists(api, crd) for crd in (IS_CRD, *PEERING_CRDS))
    assert api.get(is_path(ns, "left")) is not None and api.get(deployment_path(ns, "left")) is not None

    for command in recipe[1:]:
        run(kube_cluster, kubectl, command)
    assert [crd for crd in (IS_CRD, *PEERING_CRDS) if crd_exists(api, crd)] == []
    # The garbage collector deletes the runtimes of the deleted InferenceServices.
    wait(None, lambda: managed_children(api, ns) == [], "the runtime's Deployment, Services and pods gone",
         timeout=60)
    assert (api.get(f"/api/v1/namespaces/{NAMESPACE}") or {}).get("status", {}).get("phase") in (None, "Terminating")
    assert RELEASE not in helm_cluster(kube_cluster, "list", "--all-namespaces", "--short").stdout.split()
