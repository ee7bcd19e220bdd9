"""Autoscaling children against the real API server: the HPAs the operator renders for every metric are accepted
and read back unchanged; with KEDA's own ScaledObject CRD (from its Go module, scripts/keda-crds.sh) installed, the
rendered ScaledObjects are too, and the operator, run as a process with exactly ``RBAC_RULES``, makes one for an
``engine: keda`` InferenceService and swaps it for an HPA when the spec goes back to ``engine: hpa``, which the
real HPA controller then takes up (and reports that no custom metrics API serves its metric: there is no adapter).

KEDA's CRD is removed again at the end, so the rest of the session runs without KEDA, as most clusters do.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_operator_support import Operator, bind_cluster_role, wait
from cluster_support import Api, Kubectl, LocalCluster, install_crd, new_namespace, service_account_kubeconfig
from cluster_support import wait_established as wait_crds
from operator_support import is_path

from kubeinfer.operator.children import merge_patch_for
from kubeinfer.operator.kube import RBAC_RULES, resource_path
from kubeinfer.operator.render import Owner, render_hpa, render_scaled_object
from kubeinfer.operator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
KEDA_CRD_NAME = "scaledobjects.keda.sh"
PROMETHEUS = "http://prometheus.monitoring.svc:9090"
DETECT = {"task": "detect", "model": {"uri": "/m.pt"}}
AUTOSCALINGS = {
    "cpu": {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 75},
    "queue": {"minReplicas": 1, "maxReplicas": 3, "metric": "queue", "target": 4},
    "inflight": {"minReplicas": 2, "maxReplicas": 5, "metric": "inflight", "target": 1.5},
    "latency": {"minReplicas": 1, "maxReplicas": 4, "metric": "latency", "target": 0.25},
}
KEDA = {"engine": "keda", "prometheus": {"address": PROMETHEUS}}


@pytest.fixture(scope="module", autouse=True)
def crds(kubectl: Kubectl) -> None:
    """The InferenceService CRD, before any fixture of this module uses the API."""
    install_crd(kubectl)


@pytest.fixture(scope="module")
def ns(api: Api, kubectl: Kubectl) -> Iterator[str]:
    name = new_namespace(api, "scale")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def keda(kubectl: Kubectl) -> Iterator[Path]:
    """KEDA's ScaledObject CRD, installed for this module only."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "keda-crds.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            raise AssertionError(f"scripts/keda-crds.sh failed: {done.stderr}")
        pytest.skip(f"KEDA's CRD could not be fetched: {done.stderr.strip()}")
    crd = Path(done.stdout.strip().splitlines()[-1])
    kubectl("apply", "--server-side", "-f", str(crd))
    wait_crds(kubectl, KEDA_CRD_NAME)
    yield crd
    kubectl("delete", "crd", KEDA_CRD_NAME, "--wait=true", "--timeout=60s", check=False)


def owner_of(api: Api, ns: str, name: str, autoscaling: dict[str, Any]) -> tuple[Owner, dict[str, Any]]:
    """A real InferenceService to own the children (owner references must name an existing uid)."""
    spec = {**DETECT, "autoscaling": autoscaling}
    created = api.create(is_path(ns), {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                                       "metadata": {"name": name}, "spec": spec})
    return Owner(name, ns, created["metadata"]["uid"]), spec


def scaling_active(api: Api, path: str) -> dict[str, Any] | None:
    """The HPA's ScalingActive condition, once the HPA controller has written one."""
    conditions = ((api.get(path) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "ScalingActive"), None)


def ready_condition(api: Api, ns: str, name: str, reason: str) -> dict[str, Any] | None:
    """The InferenceService's Ready condition once its reason is ``reason``."""
    conditions = ((api.get(is_path(ns, name)) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready" and c["reason"] == reason), None)


def create_and_read_back(api: Api, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    api.create(resource_path(obj["apiVersion"], obj["kind"], meta["namespace"]), obj)
    live = api.get(resource_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]))
    assert live is not None
    return live


def test_without_keda_the_operator_serves_hpas_and_applies_the_rest_of_a_keda_resource(
        api: Api, kubectl: Kubectl, kube_cluster: LocalCluster, ns: str, tmp_path: Path) -> None:
    """Most clusters have no KEDA: the operator still works, and a resource asking for keda gets everything but
    its ScaledObject, and a status saying why (retried until KEDA's CRD appears)."""
    kubectl("delete", "crd", KEDA_CRD_NAME, "--ignore-not-found", "--wait=true", "--timeout=60s")
    operator = operator_for(api, kube_cluster, ns, tmp_path)
    try:
        for name, autoscaling in (("plain-queue", AUTOSCALINGS["queue"]),
                                  ("wants-keda", {**AUTOSCALINGS["inflight"], **KEDA})):
            kubectl.apply({"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                           "metadata": {"name": name}, "spec": {**DETECT, "autoscaling": autoscaling}}, "-n", ns)
        hpa = wait(operator, lambda: api.get(resource_path("autoscaling/v2", "HorizontalPodAutoscaler", ns,
                                                           "plain-queue")), "the HPA")
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "kubeinfer_queue_depth"
        wait(operator, lambda: api.get(resource_path("policy/v1", "PodDisruptionBudget", ns, "wants-keda")),
             "the keda resource's Deployment, Services and PDB")
        assert api.get(resource_path("autoscaling/v2", "HorizontalPodAutoscaler", ns, "wants-keda")) is None
        condition = wait(operator, lambda: ready_condition(api, ns, "wants-keda", "ChildRejected"), "ChildRejected")
        assert "does not serve ScaledObject (is its CRD installed?)" in condition["message"], condition
        assert operator.process.alive(), operator.logs()
    finally:
        operator.stop()


def operator_for(api: Api, kube_cluster: LocalCluster, ns: str, tmp_path: Path) -> Operator:
    """`kubeinfer operator` for namespace ``ns``, as a ServiceAccount holding exactly RBAC_RULES."""
    bind_cluster_role(api, f"{ns}-operator", RBAC_RULES, ns, "operator")
    kubeconfig = service_account_kubeconfig(kube_cluster, ns, "operator", tmp_path / "operator.kubeconfig")
    return Operator(kubeconfig, tmp_path / "operator.log", "--namespace", ns)


@pytest.mark.parametrize("metric", sorted(AUTOSCALINGS))
def test_the_rendered_hpa_is_accepted_and_reads_back_unchanged(api: Api, ns: str, metric: str) -> None:
    owner, spec = owner_of(api, ns, f"hpa-{metric}", AUTOSCALINGS[metric])
    hpa = render_hpa(owner, parse_spec(spec))
    live = create_and_read_back(api, hpa)
    # Unchanged: the operator's next reconciliation sends no patch (quantities are in canonical form).
    assert merge_patch_for(hpa, live) is None, (hpa["spec"], live["spec"])
    assert live["spec"]["metrics"] == hpa["spec"]["metrics"]


@pytest.mark.parametrize("metric", ["queue", "inflight", "latency"])
def test_the_rendered_scaled_object_is_accepted_by_kedas_crd(api: Api, ns: str, keda: Path, metric: str) -> None:
    owner, spec = owner_of(api, ns, f"keda-{metric}", {**AUTOSCALINGS[metric], **KEDA})
    scaled = render_scaled_object(owner, parse_spec(spec))
    live = create_and_read_back(api, scaled)
    assert merge_patch_for(scaled, live) is None, (scaled["spec"], live["spec"])


def test_kedas_schema_is_enforced_so_acceptance_means_something(api: Api, ns: str, keda: Path) -> None:
    owner, spec = owner_of(api, ns, "keda-broken", {**AUTOSCALINGS["queue"], **KEDA})
    scaled = render_scaled_object(owner, parse_spec(spec))
    del scaled["spec"]["triggers"][0]["type"]
    code, body = api.call("POST", resource_path(scaled["apiVersion"], "ScaledObject", ns), scaled)
    assert code == 422 and "spec.triggers[0].type" in body["message"], (code, body)


def test_the_operator_makes_a_scaled_object_for_keda_and_an_hpa_for_hpa(
        api: Api, kubectl: Kubectl, kube_cluster: LocalCluster, ns: str, keda: Path, tmp_path: Path) -> None:
    operator = operator_for(api, kube_cluster, ns, tmp_path)
    try:
        name = "scaled"
        kubectl.apply({"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
                       "spec": {**DETECT, "autoscaling": {**AUTOSCALINGS["queue"], **KEDA}}}, "-n", ns)
        scaled_path = resource_path("keda.sh/v1alpha1", "ScaledObject", ns, name)
        hpa_path = resource_path("autoscaling/v2", "HorizontalPodAutoscaler", ns, name)
        scaled = wait(operator, lambda: api.get(scaled_path), "the ScaledObject")
        trigger = scaled["spec"]["triggers"][0]
        assert (trigger["type"], trigger["metadata"]["serverAddress"], trigger["metadata"]["threshold"]) == (
            "prometheus", PROMETHEUS, "4")
        assert f'namespace="{ns}",model="{name}"' in trigger["metadata"]["query"]
        assert scaled["metadata"]["ownerReferences"][0]["name"] == name
        assert api.get(hpa_path) is None

        # Back to engine hpa: the ScaledObject goes, our HPA on the same metric comes.
        kubectl("patch", "inferenceservice", name, "-n", ns, "--type=json", "-p",
                '[{"op": "replace", "path": "/spec/autoscaling/engine", "value": "hpa"},'
                ' {"op": "remove", "path": "/spec/autoscaling/prometheus"}]')
        hpa = wait(operator, lambda: api.get(hpa_path), "the HPA")
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "kubeinfer_queue_depth"
        wait(operator, lambda: api.get(scaled_path) is None or None, "the ScaledObject's removal")
        # The real HPA controller takes it up and asks the custom metrics API for the metric, which only a
        # metrics adapter (the chart's Prometheus Adapter rules) can answer; this cluster runs none.
        condition = wait(operator, lambda: scaling_active(api, hpa_path), "the HPA controller's verdict", 60)
        assert (condition["status"], condition["reason"]) == ("False", "FailedGetPodsMetric"), condition
        assert "kubeinfer_queue_depth" in condition["message"], condition
        assert "Traceback" not in operator.logs(), operator.logs()
    finally:
        operator.stop()
