"""Autoscaling renders purely: cpu -> today's HPA; queue, inflight, latency -> an HPA on a Pods metric the chart's
Prometheus Adapter rules serve, or (engine keda) a KEDA ScaledObject and no HPA of ours.

HPAs are checked against the Kubernetes OpenAPI schema (kubernetes-validate, strict); the ScaledObject against
the API server with KEDA's CRD in tests/test_autoscaling_cluster.py.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from kubeinfer.operator.render import Owner, RuntimeDefaults, quantity, render_children
from kubeinfer.operator.scaling import SCALING_METRICS, adapter_rules
from kubeinfer.operator.spec import SpecError, parse_spec
from kubeinfer.runtime import metrics as rm

OWNER = Owner(name="svc", namespace="team-a", uid="6f1c3f5e-0000-4000-8000-000000000009")
DEFAULTS = RuntimeDefaults(image="registry.example.com/kubeinfer:1.2.3")
PROMETHEUS = "http://prometheus.monitoring:9090"


def rendered(autoscaling: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(present children by kind, kinds listed for removal)."""
    children = render_children(OWNER, parse_spec({"task": "detect", "model": {"uri": "/m.pt"},
                                                  "autoscaling": autoscaling}), DEFAULTS)
    return {obj["kind"]: obj for obj in children.present}, sorted(ref.kind for ref in children.absent)


def test_cpu_is_todays_hpa() -> None:
    objs, absent = rendered({"maxReplicas": 4, "targetCPUUtilization": 70})
    hpa = objs["HorizontalPodAutoscaler"]
    kubernetes_validate.validate(hpa, kubernetes_validate.latest_version(), strict=True)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": 70}}}]
    assert absent == ["ScaledObject"]


@pytest.mark.parametrize(("metric", "target", "name", "value"), [
    ("queue", 4, "kubeinfer_queue_depth", "4"),
    ("inflight", 2.5, "kubeinfer_requests_in_flight", "2500m"),
    ("latency", 0.25, "kubeinfer_queue_wait_seconds_p90", "250m"),
])
def test_runtime_metrics_become_a_pods_metric_of_the_custom_metrics_api(metric: str, target: float, name: str,
                                                                        value: str) -> None:
    objs, absent = rendered({"minReplicas": 1, "maxReplicas": 3, "metric": metric, "target": target})
    hpa = objs["HorizontalPodAutoscaler"]
    for version in ("1.28", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(hpa, version, strict=True)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "svc"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": name}, "target": {"type": "AverageValue", "averageValue": value}}}]
    # The name is one the chart's adapter rules serve.
    assert name in {rule["name"]["as"] for rule in adapter_rules()["rules"]}
    assert "replicas" not in objs["Deployment"]["spec"]
    assert absent == ["ScaledObject"]


@pytest.mark.parametrize(("metric", "metric_type", "query"), [
    ("queue", "AverageValue", 'sum(kubeinfer_queue_depth{namespace="team-a",model="svc"}) or vector(0)'),
    ("inflight", "AverageValue", 'sum(kubeinfer_requests_in_flight{namespace="team-a",model="svc"}) or vector(0)'),
    ("latency", "Value", '(histogram_quantile(0.9, sum(rate(kubeinfer_queue_wait_seconds_bucket'
                         '{namespace="team-a",model="svc"}[2m])) by (le)) >= 0) or vector(0)'),
])
def test_keda_gets_a_scaled_object_with_a_prometheus_trigger_and_no_hpa_of_ours(metric: str, metric_type: str,
                                                                                query: str) -> None:
    objs, absent = rendered({"minReplicas": 2, "maxReplicas": 6, "metric": metric, "target": 1.5,
                             "engine": "keda", "prometheus": {"address": PROMETHEUS}})
    assert "HorizontalPodAutoscaler" not in objs and "HorizontalPodAutoscaler" in absent
    scaled = objs["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert scaled["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "svc"},
        "minReplicaCount": 2, "maxReplicaCount": 6,
        "triggers": [{"type": "prometheus", "metricType": metric_type, "metadata": {
            "serverAddress": PROMETHEUS, "query": query, "threshold": "1.5"}}]}
    assert "replicas" not in objs["Deployment"]["spec"]


def test_adapter_rules_discover_the_runtime_series_per_pod() -> None:
    rules = {rule["name"]["as"]: rule for rule in adapter_rules()["rules"]}
    assert set(rules) == {m.name for m in SCALING_METRICS.values()}
    assert rules[rm.QUEUE_DEPTH]["seriesQuery"] == 'kubeinfer_queue_depth{namespace!="",pod!=""}'
    assert rules[f"{rm.QUEUE_WAIT}_p90"]["name"]["matches"] == f"^{rm.QUEUE_WAIT}_bucket$"
    for rule in rules.values():
        assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"},
                                                   "pod": {"resource": "pod"}}}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    filled = SCALING_METRICS["queue"].adapter_query('namespace="a",pod=~"p1|p2"', "pod")
    assert filled == 'sum(kubeinfer_queue_depth{namespace="a",pod=~"p1|p2"}) by (pod)'


@pytest.mark.parametrize(("value", "text"), [(4, "4"), (0.25, "250m"), (1.5, "1500m"), (4000, "4k"),
                                             (0.0001, "100u"), (1e6, "1M"), (1234.5, "1234500m"), (3e-9, "3n")])
def test_quantities_are_written_in_the_api_servers_canonical_form(value: float, text: str) -> None:
    assert quantity(value) == text


@pytest.mark.parametrize(("autoscaling", "message"), [
    ({"maxReplicas": 2, "metric": "gpu", "target": 1}, "spec.autoscaling.metric: 'gpu' is not one of"),
    ({"maxReplicas": 2, "metric": "queue"}, "spec.autoscaling.target is required for metric 'queue'"),
    ({"maxReplicas": 2, "metric": "queue", "target": 0}, "spec.autoscaling.target must be greater than 0"),
    ({"maxReplicas": 2, "metric": "latency", "target": -1}, "spec.autoscaling.target must be greater than 0"),
    ({"maxReplicas": 2, "metric": "queue", "target": "4"}, "spec.autoscaling.target must be a number"),
    ({"maxReplicas": 2, "target": 3}, "spec.autoscaling.target is for metrics queue, inflight and latency"),
    ({"maxReplicas": 2, "metric": "queue", "target": 4, "engine": "keda"},
     "spec.autoscaling.prometheus.address is required when autoscaling.engine is keda"),
    ({"maxReplicas": 2, "engine": "keda", "prometheus": {"address": PROMETHEUS}},
     "spec.autoscaling.engine keda scales on a Prometheus metric"),
    ({"maxReplicas": 2, "metric": "queue", "target": 4, "engine": "knative"}, "spec.autoscaling.engine: 'knative'"),
    ({"maxReplicas": 2, "metric": "queue", "target": 4, "engine": "keda", "prometheus": {"address": "prom:9090"}},
     "spec.autoscaling.prometheus.address: 'prom:9090' is not an http(s):// URL"),
])
def test_bad_autoscaling_is_refused_naming_the_field(autoscaling: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec({"task": "detect", "model": {"uri": "/m.pt"}, "autoscaling": autoscaling})


def test_the_scaled_object_comes_last_so_a_cluster_without_keda_still_gets_the_rest() -> None:
    children = render_children(OWNER, parse_spec({"task": "detect", "model": {"uri": "/m.pt"}, "autoscaling": {
        "maxReplicas": 3, "metric": "queue", "target": 2, "engine": "keda", "prometheus": {"address": PROMETHEUS}}}),
        DEFAULTS)
    assert [obj["kind"] for obj in children.present] == ["Deployment", "Service", "Service", "PodDisruptionBudget",
                                                         "ScaledObject"]
