"""Every Prometheus metric of the operator, in one place: dashboards and alerts import the names from here.

They live in prometheus_client's default registry, next to its process_* and python_* metrics.
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from kubeinfer.operator.status import PHASES

RECONCILIATIONS_TOTAL = "kubeinfer_operator_reconciliations_total"
RECONCILE_DURATION_SECONDS = "kubeinfer_operator_reconcile_duration_seconds"
INFERENCESERVICES = "kubeinfer_operator_inferenceservices"
TRACKED = "kubeinfer_operator_tracked_inferenceservices"
ROLLOUTS_TOTAL = "kubeinfer_operator_rollouts_total"
ROLLOUT_ANALYSES_TOTAL = "kubeinfer_operator_rollout_analyses_total"

RESULTS = ("success", "error", "retry")

reconciliations = Counter(
    RECONCILIATIONS_TOTAL.removesuffix("_total"),
    "Reconciliations of InferenceServices by result: success, error (the spec cannot be served), "
    "retry (a transient failure; kopf tries again)",
    ["result"], registry=REGISTRY)
reconcile_duration = Histogram(
    RECONCILE_DURATION_SECONDS, "Time to render and apply an InferenceService's children and write its status",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=REGISTRY)
inferenceservices = Gauge(
    INFERENCESERVICES, "InferenceServices this operator manages, by status phase", ["phase"], registry=REGISTRY)
tracked = Gauge(
    TRACKED, "InferenceServices the operator keeps state for in memory (operator/state.py): those that exist and "
    "those being handled; one that stays above the first after deletions is a leak", registry=REGISTRY)

rollouts = Counter(
    ROLLOUTS_TOTAL.removesuffix("_total"),
    "Progressive rollouts (spec.rollout) by how they moved: started, step (a step passed), promoted, rolled_back, "
    "aborted (the spec went back to the stable revision)", ["result"], registry=REGISTRY)
rollout_analyses = Counter(
    ROLLOUT_ANALYSES_TOTAL.removesuffix("_total"),
    "Rollout step analyses by verdict: pass, fail (a threshold broken), hold (too few calls to judge)",
    ["verdict"], registry=REGISTRY)
ROLLOUT_RESULTS = {"RolloutStarted": "started", "RolloutStep": "step", "RolloutPromoted": "promoted",
                   "RolledBack": "rolled_back", "RolloutAborted": "aborted"}

for _result in RESULTS:
    reconciliations.labels(result=_result)
for _phase in PHASES:
    inferenceservices.labels(phase=_phase).set(0)
for _rollout_result in ROLLOUT_RESULTS.values():
    rollouts.labels(result=_rollout_result)
for _verdict in ("pass", "fail", "hold"):
    rollout_analyses.labels(verdict=_verdict)


class PhaseBook:
    """The last phase seen per InferenceService; keeps the by-phase gauge equal to the real counts."""

    def __init__(self, gauge: Gauge = inferenceservices) -> None:
        self._gauge = gauge
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, phase: str) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase
            self._publish()

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            self._gauge.labels(phase=phase).set(count)


phase_book = PhaseBook()
