"""The runtime metrics an InferenceService can scale on, and the PromQL that turns them into a value per replica.

One place for both readers of the same numbers: the chart's Prometheus Adapter rules (``adapter_rules``: the
custom metrics API that an ``engine: hpa`` HorizontalPodAutoscaler reads, per pod) and the KEDA prometheus
trigger (``keda_query``: one value for the whole InferenceService, which KEDA's HPA divides by the replica count
for an AverageValue target). The series names come from ``kubeinfer.runtime.metrics``; the ``namespace`` and
``pod`` labels come from the chart's PodMonitor relabelings, ``model`` is the InferenceService name every runtime
metric carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubeinfer.runtime import metrics as rm

RATE_WINDOW = "2m"  # at least 4 scrapes at the chart's 15 s PodMonitor interval
QUANTILE = 0.9


@dataclass(frozen=True)
class ScalingMetric:
    """A spec ``autoscaling.metric`` other than cpu: its custom-metrics-API name and how to compute it."""

    metric: str  # the spec's value: queue, inflight, latency
    name: str  # the name the custom metrics API serves (the adapter rule's ``as``)
    series: str  # the Prometheus series the adapter discovers
    per_pod: str  # PromQL per pod, with the adapter's <<.Series>>, <<.LabelMatchers>> and <<.GroupBy>>
    keda_metric_type: str  # AverageValue: the query is a total, divided by replicas; Value: already per replica

    def keda_query(self, namespace: str, model: str) -> str:
        """The PromQL KEDA runs for one InferenceService: one sample, never empty, never NaN."""
        selector = f'namespace="{namespace}",model="{model}"'
        if self.metric == "latency":
            # The p90 over every replica's waits; NaN without traffic (no buckets moved) is dropped and reads 0.
            inner = (f"histogram_quantile({QUANTILE}, sum(rate({self.series}{{{selector}}}[{RATE_WINDOW}])) by (le))")
            return f"({inner} >= 0) or vector(0)"
        return f"sum({self.series}{{{selector}}}) or vector(0)"

    def adapter_query(self, label_matchers: str, group_by: str) -> str:
        """``per_pod`` with the adapter's template filled in, as the adapter sends it to Prometheus."""
        return (self.per_pod.replace("<<.Series>>", self.series).replace("<<.LabelMatchers>>", label_matchers)
                .replace("<<.GroupBy>>", group_by))


SCALING_METRICS: dict[str, ScalingMetric] = {
    "queue": ScalingMetric(
        "queue", rm.QUEUE_DEPTH, rm.QUEUE_DEPTH,
        "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)", "AverageValue"),
    "inflight": ScalingMetric(
        "inflight", rm.IN_FLIGHT, rm.IN_FLIGHT,  # summed over protocols (grpc, http)
        "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)", "AverageValue"),
    "latency": ScalingMetric(
        "latency", f"{rm.QUEUE_WAIT}_p90", f"{rm.QUEUE_WAIT}_bucket",
        # A pod without traffic has NaN (no bucket moved) and is dropped: the HPA then assumes it is at target
        # when scaling down and idle when scaling up, the conservative choice both ways.
        f"histogram_quantile({QUANTILE}, sum(rate(<<.Series>>{{<<.LabelMatchers>>}}[{RATE_WINDOW}])) "
        "by (le, <<.GroupBy>>)) >= 0", "Value"),
}


def adapter_rules() -> dict[str, Any]:
    """Prometheus Adapter's config (its ``rules:``) serving every scaling metric per pod; the chart ships it."""
    rules = []
    for metric in SCALING_METRICS.values():
        rules.append({
            "seriesQuery": f'{metric.series}{{namespace!="",pod!=""}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": f"^{metric.series}$", "as": metric.name},
            "metricsQuery": metric.per_pod,
        })
    return {"rules": rules}
