"""The chart installed into the real control plane, and the operator working with exactly the access it grants.

`helm install` puts the CRDs, the RBAC, the ServiceAccount and the operator Deployment in place (its pods are
scheduled onto kwok's fake nodes and go Running; they run nothing). The operator itself then runs out of
cluster, with the flags the chart gives its container, authenticated as the chart's ServiceAccount through a
TokenRequest: the real RBAC authorizer decides every call. The audit log shows what it asked for: nothing may
be refused, and everything used must be in ``kubeinfer.operator.kube.RBAC_RULES``. Both ways of installing are
covered: watching every namespace, and ``operator.watchNamespaces`` (RoleBindings in those namespaces only).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chart_support import CHART, helm
from cluster_operator_support import (
    Operator,
    forbidden_by_rbac,
    granted,
    permissions,
    refused,
    requests_by,
    username,
    wait,
)
from cluster_support import Api, Kubectl, LocalCluster, create_quota, new_namespace, service_account_kubeconfig
from operator_support import EXAMPLES, deployment_path, is_path, load_yaml, service_path

from kubeinfer.operator.kube import RBAC_RULES

IMAGE = "registry.example.com/kubeinfer/runtime:chart-test"
RBAC = "/apis/rbac.authorization.k8s.io/v1"


@dataclass
class Installed:
    mode: str
    release: str
    namespace: str  # the release's namespace
    service_account: str
    watched: list[str]  # the namespaces the operator manages; empty: all
    kubeconfig: Path  # the ServiceAccount's
    operator: Operator
    install_output: str
    audit_start: int  # audit events before the operator started
    created: list[str] = field(default_factory=list)

    @property
    def user(self) -> str:
        return username(self.namespace, self.service_account)

    @property
    def role(self) -> str:
        return f"{self.release}-operator"


def helm_cluster(kube_cluster: LocalCluster, *args: str, check: bool = True) -> Any:
    return helm(*args, "--kubeconfig", str(kube_cluster.kubeconfig), check=check)


def chart_args(deployment: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The operator container's flags and plain environment, as the chart rendered them."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
    return list(container.get("args") or []), env


@pytest.fixture(scope="module", params=["cluster-wide", "namespaced"])
def installed(request: pytest.FixtureRequest, kube_cluster: LocalCluster, api: Api, kubectl: Kubectl,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    mode = request.param
    release = "kubeinfer-cw" if mode == "cluster-wide" else "kubeinfer-ns"
    namespace = f"{release}-system"
    watched = [new_namespace(api, "watched") for _ in range(2)] if mode == "namespaced" else []
    values = ["--set", f"runtime.images.gpu.repository={IMAGE.rsplit(':', 1)[0]}",
              "--set", f"runtime.images.gpu.tag={IMAGE.rsplit(':', 1)[1]}",
              "--set", "monitoring.podMonitor.enabled=false", "--set", "monitoring.serviceMonitor.enabled=false"]
    if watched:
        values += ["--set", f"operator.watchNamespaces={{{','.join(watched)}}}"]
    done = helm_cluster(kube_cluster, "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
                        "--wait", "--timeout", "120s", *values)
    tmp = tmp_path_factory.mktemp(f"chart-{mode}")
    running: Operator | None = None
    created = list(watched)
    try:
        deployment = api.get(deployment_path(namespace, f"{release}-operator"))
        assert deployment is not None, done.stdout
        service_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = service_account_kubeconfig(kube_cluster, namespace, service_account, tmp / "kubeconfig")
        args, env = chart_args(deployment)
        audit_start = len(kube_cluster.audit())
        running = Operator(kubeconfig, tmp / "operator.log", *args, env=env)
        yield Installed(mode, release, namespace, service_account, watched, kubeconfig, running, done.stdout,
                        audit_start, created)
    finally:
        if running is not None:
            code = running.stop()
            assert code == 0, running.logs()
        helm_cluster(kube_cluster, "uninstall", release, "--namespace", namespace, "--wait", check=False)
        for name in [*created, namespace]:
            kubectl("delete", "namespace", name, "--wait=false", check=False)


def workspace(installed: Installed, api: Api, kube_cluster: LocalCluster, index: int = 0) -> str:
    """A namespace the operator manages (a watched one, or a fresh one when it watches all), with `models`."""
    if installed.watched:
        ns = installed.watched[index]
    else:
        ns = new_namespace(api, "chart")
        installed.created.append(ns)
    kube_cluster.add_models_claim(ns)
    return ns


def apply_example(kubectl: Kubectl, ns: str, file: str, **changes: Any) -> dict[str, Any]:
    doc = load_yaml(EXAMPLES / file)
    doc["spec"].update(changes)
    kubectl.apply(doc, "-n", ns)
    return doc


def status(api: Api, ns: str, name: str) -> dict[str, Any]:
    return ((api.get(is_path(ns, name)) or {}).get("status")) or {}


def flatten(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def can_i(kubectl: Kubectl, installed: Installed, *args: str) -> bool:
    done = kubectl("auth", "can-i", *args, f"--as={installed.user}", check=False)
    return done.stdout.strip() == "yes"


# -- the install --------------------------------------------------------------------------------------------------
def test_helm_install_puts_the_operator_in_place(installed: Installed, kube_cluster: LocalCluster, api: Api,
                                                 kubectl: Kubectl) -> None:
    assert "STATUS: deployed" in installed.install_output
    # kopf's peering CRDs come only with operator.peering.enabled (tests/test_chart_uninstall.py).
    found = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/inferenceservices.kubeinfer.io")
    assert found is not None
    assert {c["type"]: c["status"] for c in found["status"]["conditions"]}["Established"] == "True"
    assert api.get(f"/api/v1/namespaces/{installed.namespace}/serviceaccounts/{installed.service_account}")
    # The RBAC: two ClusterRoles (namespaced permissions, cluster-scoped discovery) that together are RBAC_RULES.
    role = api.get(f"{RBAC}/clusterroles/{installed.role}")
    cluster_role = api.get(f"{RBAC}/clusterroles/{installed.role}-cluster")
    assert role is not None and cluster_role is not None
    assert flatten(role["rules"]) | flatten(cluster_role["rules"]) == granted(RBAC_RULES)
    cluster_binding = api.get(f"{RBAC}/clusterrolebindings/{installed.role}")
    assert api.get(f"{RBAC}/clusterrolebindings/{installed.role}-cluster") is not None
    if installed.watched:
        assert cluster_binding is None  # namespaced permissions only where the operator watches
        for ns in installed.watched:
            assert api.get(f"{RBAC}/namespaces/{ns}/rolebindings/{installed.role}") is not None
    else:
        assert cluster_binding is not None
    # ...as the real authorizer reads them.
    inside = installed.watched[0] if installed.watched else "default"
    assert can_i(kubectl, installed, "create", "deployments.apps", "-n", inside)
    assert can_i(kubectl, installed, "patch", "inferenceservices.kubeinfer.io", "--subresource=status", "-n", inside)
    assert can_i(kubectl, installed, "delete", "deployments.apps", "-n", inside)  # a rollout's revision goes
    assert not can_i(kubectl, installed, "delete", "pods", "-n", inside)
    assert not can_i(kubectl, installed, "update", "deployments.apps", "-n", inside)  # it only ever patches
    assert not can_i(kubectl, installed, "get", "secrets", "-n", inside)
    assert can_i(kubectl, installed, "create", "deployments.apps", "-n", "kube-system") is not bool(installed.watched)
    # The operator Deployment rolled out: its pods were scheduled onto the (fake) CPU nodes and run.
    deployment = api.get(deployment_path(installed.namespace, installed.role))
    assert deployment is not None
    assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"] == 1
    pods = api.get(f"/api/v1/namespaces/{installed.namespace}/pods?labelSelector=app.kubernetes.io/instance%3D"
                   f"{installed.release}")
    assert pods is not None and len(pods["items"]) == 1
    (pod,) = pods["items"]
    assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] in ("cpu-0", "cpu-1"), pod["spec"]
    assert pod["spec"]["serviceAccountName"] == installed.service_account
    args = pod["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [f"--namespace={ns}" for ns in installed.watched]
    # Monitors off: no Prometheus Operator objects were asked for (the cluster has no such CRDs either).
    manifest = helm_cluster(kube_cluster, "get", "manifest", installed.release, "--namespace",
                            installed.namespace).stdout
    assert "kind: PodMonitor" not in manifest and "kind: ServiceMonitor" not in manifest


# -- the operator, as the chart's ServiceAccount ---------------------------------------------------------------
def test_every_reconcile_succeeds_with_the_charts_rbac(installed: Installed, kube_cluster: LocalCluster, api: Api,
                                                       kubectl: Kubectl) -> None:
    audit_start = len(kube_cluster.audit())
    ns = workspace(installed, api, kube_cluster)
    # A life cycle touching every verb the operator has: create the children (HPA and PDB too), repair hand
    # edits (patch), drop the HPA and PDB (delete), watch pods, write status.
    apply_example(kubectl, ns, "brand-recognition.yaml")
    apply_example(kubectl, ns, "video-processing.yaml")
    for name in ("brand-recognition", "video-processing"):
        ready = wait(installed.operator, lambda n=name: (s := status(api, ns, n)).get("phase") == "Ready" and s,
                     f"{name} Ready")
        assert ready["endpoint"] == f"{name}.{ns}.svc:8001"
    hpa = f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/brand-recognition"
    pdb = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/brand-recognition"
    assert api.get(hpa) and api.get(pdb)
    api.patch(service_path(ns, "video-processing"), {"spec": {"selector": {"edited": "by-hand"}}})
    wait(installed.operator, lambda: "edited" not in api.get(service_path(ns, "video-processing"))["spec"]["selector"],
         "the hand edit repaired")
    kubectl("patch", "-n", ns, "kisvc", "brand-recognition", "--type=merge",
            "-p", json.dumps({"spec": {"autoscaling": None, "replicas": 1}}))
    wait(installed.operator, lambda: api.get(hpa) is None and api.get(pdb) is None, "the HPA and PDB deleted")
    wait(installed.operator, lambda: status(api, ns, "brand-recognition").get("observedGeneration") == 2
         and status(api, ns, "brand-recognition").get("phase") == "Ready", "Ready with one replica")

    events = requests_by(kube_cluster, installed.user, audit_start)
    assert events, f"no request by {installed.user} in the audit log"
    assert refused(events, [ns]) == []
    used = permissions(requests_by(kube_cluster, installed.user, installed.audit_start))  # with its start-up
    assert used <= granted(RBAC_RULES), f"requests without a rule: {sorted(used - granted(RBAC_RULES))}"
    assert {("apps", "deployments", "create"), ("", "services", "patch"), ("", "pods", "watch"),
            ("autoscaling", "horizontalpodautoscalers", "delete"), ("policy", "poddisruptionbudgets", "delete"),
            ("kubeinfer.io", "inferenceservices/status", "patch"), ("", "events", "create")} <= used
    # Every handler run succeeded (kopf logs "Handler 'NAME' failed ..." otherwise).
    failures = [line for line in installed.operator.logs(10**7).splitlines() if "Handler '" in line
                and " failed" in line]
    assert failures == [], failures


REMOVALS = {
    # (resource in the ClusterRole, verb removed): what the operator is then refused, and how it says so.
    "services create": ("services", "create", "the API server refused Service video-processing: HTTP 403"),
    "deployments patch": ("deployments", "patch", "the API server refused Deployment video-processing: HTTP 403"),
}


@pytest.mark.parametrize("removal", sorted(REMOVALS))
def test_a_rule_removed_from_the_cluster_role_is_refused_and_reported(
        installed: Installed, kube_cluster: LocalCluster, api: Api, kubectl: Kubectl, removal: str) -> None:
    resource, verb, message = REMOVALS[removal]
    ns = workspace(installed, api, kube_cluster, 1 if removal == "services create" else 0)
    if removal == "deployments patch":  # an existing Deployment that a spec change must patch
        apply_example(kubectl, ns, "video-processing.yaml")
        wait(installed.operator, lambda: status(api, ns, "video-processing").get("phase") == "Ready", "Ready")
    role_path = f"{RBAC}/clusterroles/{installed.role}"
    original = api.get(role_path)
    assert original is not None
    reduced = json.loads(json.dumps(original))
    (rule,) = [r for r in reduced["rules"] if r["resources"] == [resource]]
    rule["verbs"].remove(verb)
    audit_start = len(kube_cluster.audit())
    api.call("PUT", role_path, reduced)
    try:
        assert not can_i(kubectl, installed, verb, resource, "-n", ns)
        if removal == "deployments patch":
            kubectl("patch", "-n", ns, "kisvc", "video-processing", "--type=merge",
                    "-p", json.dumps({"spec": {"thresholds": {"iou": 0.6}}}))
        else:
            apply_example(kubectl, ns, "video-processing.yaml")
        reported = wait(installed.operator, lambda: (s := status(api, ns, "video-processing")).get("conditions")
                        and s["conditions"][0]["reason"] == "ChildRejected" and s, "ChildRejected")
        text = reported["conditions"][0]["message"]
        assert message in text and f'cannot {verb} resource "{resource}"' in text, text
        assert installed.user in text
        assert reported["phase"] in ("Degraded", "Failed")
        if removal == "deployments patch":
            assert reported["observedGeneration"] == 1  # the new generation was not applied
        events = requests_by(kube_cluster, installed.user, audit_start)
        assert set(forbidden_by_rbac(events)) == {(verb, resource, ns, 403)}
        assert {(v, ref["resource"], ref["namespace"], code) for v, ref, code in refused(events, [ns])} == {
            (verb, resource, ns, 403)}
        # kopf logs the handler's error once the handler returns, just after the status write.
        wait(installed.operator, lambda: f'cannot {verb} resource \\"{resource}\\"' in installed.operator.logs(200_000)
             or f'cannot {verb} resource "{resource}"' in installed.operator.logs(200_000), "the 403 in the log",
             timeout=20)
    finally:
        restored = json.loads(json.dumps(original))
        restored["metadata"].pop("resourceVersion", None)
        code, body = api.call("PUT", role_path, restored)
        assert code == 200, body


@pytest.mark.parametrize("installed", ["cluster-wide"], indirect=True)  # one mode is enough
def test_no_endpoint_is_advertised_for_a_service_that_was_refused(installed: Installed, kube_cluster: LocalCluster,
                                                                   api: Api, kubectl: Kubectl) -> None:
    ns = workspace(installed, api, kube_cluster)
    # Admission refuses every Service in the namespace (403 exceeded quota); the Deployment is allowed.
    create_quota(api, ns, "no-services", {"services": "0"})
    apply_example(kubectl, ns, "video-processing.yaml")
    wait(installed.operator, lambda: (api.get(deployment_path(ns, "video-processing")) or {}).get("status", {})
         .get("readyReplicas") == 1, "the pod ready")
    reported = wait(installed.operator, lambda: (s := status(api, ns, "video-processing")).get("readyReplicas") == 1
                    and s, "status with the ready pod")
    assert api.get(service_path(ns, "video-processing")) is None
    assert reported["conditions"][0]["reason"] == "ChildRejected"
    assert "endpoint" not in reported, reported  # no Service: nothing answers at that name
    assert reported["phase"] == "Failed"
