"""The operator's two other ways of running, against the real control plane: watching chosen namespaces only,
and several replicas of which kopf's peering keeps exactly one at work.

Each operator authenticates as a ServiceAccount of its own whose ClusterRole is built from
``kubeinfer.operator.kube`` RBAC_RULES (and PEERING_RBAC_RULES with --peering), so the real RBAC authorizer
checks those rules and the audit log tells this operator's requests apart by user name.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_operator_support import (
    Operator,
    bind_cluster_role,
    granted,
    permissions,
    refused,
    requests_by,
    username,
    wait,
)
from cluster_support import Api, Kubectl, LocalCluster, new_namespace, service_account_kubeconfig, wait_established
from operator_support import CRD_PATH, EXAMPLES, deployment_path, is_path, load_yaml

from kubeinfer.operator.kube import PEERING_RBAC_RULES, RBAC_RULES

IMAGE = "registry.example.com/kubeinfer/runtime:modes"
PEERING_CRDS = CRD_PATH.parents[1] / "charts" / "kubeinfer" / "charts" / "kopf-peering" / "crds"
NAMESPACED = {"inferenceservices", "deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets",
              "pods", "events"}
_accounts = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def crds(kubectl: Kubectl) -> None:
    """The InferenceService CRD and kopf's peering CRDs."""
    kubectl("apply", "-f", str(CRD_PATH), "-f", str(PEERING_CRDS))
    wait_established(kubectl, "inferenceservices.kubeinfer.io", "clusterkopfpeerings.kopf.dev",
                     "kopfpeerings.kopf.dev")


@pytest.fixture(scope="module")
def home(api: Api, kubectl: Kubectl) -> Iterator[str]:
    """The namespace of the operators' ServiceAccounts."""
    name = new_namespace(api, "modes")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture()
def namespaces(api: Api, kubectl: Kubectl, kube_cluster: LocalCluster) -> Iterator[Any]:
    """Make fresh namespaces (with the `models` claim); all are deleted after the test."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = new_namespace(api, prefix)
        kube_cluster.add_models_claim(name)
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def account(kube_cluster: LocalCluster, api: Api, home: str, rules: Any, tmp: Path) -> tuple[str, Path]:
    """A fresh ServiceAccount holding ``rules`` cluster-wide: (its user name, a kubeconfig for it)."""
    name = f"modes-operator-{next(_accounts)}"
    bind_cluster_role(api, f"{home}-{name}", rules, home, name)
    return username(home, name), service_account_kubeconfig(kube_cluster, home, name, tmp / f"{name}.kubeconfig")


def apply_example(kubectl: Kubectl, ns: str, file: str) -> dict[str, Any]:
    doc = load_yaml(EXAMPLES / file)
    kubectl.apply(doc, "-n", ns)
    return doc


def status(api: Api, ns: str, name: str) -> dict[str, Any]:
    return ((api.get(is_path(ns, name)) or {}).get("status")) or {}


def test_a_namespaced_operator_sees_only_its_namespaces(kube_cluster: LocalCluster, api: Api, kubectl: Kubectl,
                                                        home: str, namespaces: Any, tmp_path: Path) -> None:
    mine, also_mine, theirs = namespaces("mine"), namespaces("mine"), namespaces("theirs")
    user, kubeconfig = account(kube_cluster, api, home, RBAC_RULES, tmp_path)
    audit_start = len(kube_cluster.audit())
    # Configured through the environment, as a Deployment's env would (a flag would win).
    operator = Operator(kubeconfig, tmp_path / "operator.log", env={
        "KUBEINFER_OPERATOR_NAMESPACE": f"{mine},{also_mine}", "KUBEINFER_OPERATOR_RUNTIME_IMAGE":
            "example.org/from-env:1", "KUBEINFER_OPERATOR_RUNTIME_CPU_IMAGE": "example.org/from-env:1-cpu"})
    try:
        apply_example(kubectl, theirs, "video-processing.yaml")
        apply_example(kubectl, mine, "video-processing.yaml")
        apply_example(kubectl, also_mine, "stream-classification.yaml")
        for ns, name in ((mine, "video-processing"), (also_mine, "stream-classification")):
            wait(operator, lambda ns=ns, name=name: status(api, ns, name).get("phase") == "Ready",
                 f"{ns}/{name} Ready")
        deployment = api.get(deployment_path(mine, "video-processing"))
        assert deployment is not None
        # an ONNX detector: the cpu image, named by the environment
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "example.org/from-env:1-cpu"
        also = api.get(deployment_path(also_mine, "stream-classification"))  # TorchScript: the image with torch
        assert also is not None
        assert also["spec"]["template"]["spec"]["containers"][0]["image"] == "example.org/from-env:1"
        # Theirs was applied first, and is still untouched.
        assert api.get(deployment_path(theirs, "video-processing")) is None
        assert status(api, theirs, "video-processing") == {}
    finally:
        assert operator.stop() == 0, operator.logs()

    events = requests_by(kube_cluster, user, audit_start)
    assert refused(events) == []
    used = permissions(events)
    assert {("", "namespaces", "list"), ("", "namespaces", "watch")} <= used <= granted(RBAC_RULES), sorted(used)
    # Every namespaced request names one of its namespaces: no cluster-wide list or watch of namespaced
    # resources, so RoleBindings in the watched namespaces are all it needs (the chart's watchNamespaces).
    scopes = {(e["objectRef"]["resource"], e["objectRef"].get("namespace")) for e in events
              if (e.get("objectRef") or {}).get("resource") in NAMESPACED}
    assert {ns for _, ns in scopes} == {mine, also_mine}, sorted(scopes, key=str)


WRITES = ("create", "update", "patch", "delete")


def writes_in(events: list[dict[str, Any]], ns: str) -> list[tuple[str, str]]:
    return [(e["verb"], e["objectRef"]["resource"]) for e in events
            if e["verb"] in WRITES and (e.get("objectRef") or {}).get("namespace") == ns]


@pytest.mark.slow  # 20-40 s: kopf's peering keep-alives decide who pauses and when the standby resumes
def test_with_peering_one_replica_works_and_another_takes_over(kube_cluster: LocalCluster, api: Api,
                                                               kubectl: Kubectl, home: str, namespaces: Any,
                                                               tmp_path: Path) -> None:
    peering = f"{home}-peering"
    kubectl.apply({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}})
    ns = namespaces("peering")
    # Two replicas, each with its own ServiceAccount (the same rules), so the audit log tells them apart.
    standby_user, standby_kubeconfig = account(kube_cluster, api, home, RBAC_RULES + PEERING_RBAC_RULES, tmp_path)
    active_user, active_kubeconfig = account(kube_cluster, api, home, RBAC_RULES + PEERING_RBAC_RULES, tmp_path)
    audit_start = len(kube_cluster.audit())
    replicas: list[Operator] = []
    try:
        standby = Operator(standby_kubeconfig, tmp_path / "standby.log", "--peering", peering, "--priority", "10",
                           "--runtime-image", IMAGE)
        replicas.append(standby)
        active = Operator(active_kubeconfig, tmp_path / "active.log", "--peering", peering, "--priority", "20",
                          "--runtime-image", IMAGE)
        replicas.append(active)
        wait(standby, lambda: "Pausing operations in favour of" in standby.logs(10**7), "the standby to pause")
        paused_at = len(kube_cluster.audit())
        apply_example(kubectl, ns, "video-processing.yaml")
        wait(active, lambda: status(api, ns, "video-processing").get("phase") == "Ready", "Ready by the active one")
        assert "Pausing operations" not in active.logs(10**7)
        live = api.get(f"/apis/kopf.dev/v1/clusterkopfpeerings/{peering}")
        assert live is not None and len(live.get("status") or {}) == 2, live  # both keep their keep-alives
        # The active replica did the work; the paused one wrote nothing there.
        assert ("create", "deployments") in writes_in(requests_by(kube_cluster, active_user, paused_at), ns)
        assert writes_in(requests_by(kube_cluster, standby_user, paused_at), ns) == []

        seen = len(standby.logs(10**7))
        assert active.stop() == 0, active.logs()
        replicas.remove(active)
        wait(standby, lambda: "Resuming operations after the pause" in standby.logs(10**7)[seen:],
             "the standby to resume")
        resumed_at = len(kube_cluster.audit())
        apply_example(kubectl, ns, "stream-classification.yaml")
        wait(standby, lambda: status(api, ns, "stream-classification").get("phase") == "Ready",
             "the standby to take over")
        assert ("create", "deployments") in writes_in(requests_by(kube_cluster, standby_user, resumed_at), ns)
        assert writes_in(requests_by(kube_cluster, active_user, resumed_at), ns) == []
    finally:
        for replica in replicas:
            replica.stop()
        kubectl("delete", "clusterkopfpeering", peering, "--wait=false", check=False)

    for user in (standby_user, active_user):
        events = requests_by(kube_cluster, user, audit_start)
        assert refused(events, [ns]) == []
        used = permissions(events)
        on_peering = {(group, resource, verb) for group, resource, verb in used if group == "kopf.dev"}
        assert on_peering and on_peering <= granted(PEERING_RBAC_RULES), sorted(on_peering)
        assert used - on_peering <= granted(RBAC_RULES), sorted(used - on_peering - granted(RBAC_RULES))
