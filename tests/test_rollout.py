"""The rollout's state machine (operator/rollout.py) and what it renders (operator/render_rollout.py), without a
cluster: each step's move for given figures, and the children and traffic table each state asks for.

The figures come from ``Recorded``, a ``rollout.Measure`` that answers what a test sets (Prometheus's side is
tests/test_rollout_analysis.py, against a real Prometheus)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from kubeinfer.operator.render import REVISION_LABEL, Owner, RuntimeDefaults
from kubeinfer.operator.render_rollout import render_rollout_children, revision_of, traffic_table
from kubeinfer.operator.rollout import (
    HOLDING,
    PROGRESSING,
    PROMOTED,
    ROLLED_BACK,
    STABLE,
    Figures,
    RolloutState,
    Traffic,
    Unmeasurable,
    advance,
    candidate_share,
)
from kubeinfer.operator.spec import parse_spec

OWNER = Owner("cls", "ns", "uid-1")
DEFAULTS = RuntimeDefaults(image="gpu:1", cpu_image="cpu:1")
INTERVAL = 30


def raw_spec(model: str = "/models/a.onnx", replicas: int = 3, **rollout: Any) -> dict[str, Any]:
    return {"task": "classify", "model": {"uri": model}, "labels": {"uri": "/models/labels.txt"},
            "replicas": replicas, "rollout": {"interval": INTERVAL, **rollout}}


GOOD = Figures(candidate_requests=200, stable_requests=800, error_rate=0.0, errors_by_code={}, candidate_p99=0.02,
               stable_p99=0.02, compared=150, agreement=0.99)


@dataclass
class Recorded:
    """A Measure answering what the test sets; it records what it was asked."""

    loaded: bool = True
    figured: Figures = GOOD
    down: bool = False
    asked: list[tuple[str, str, int]] = field(default_factory=list)

    def effective(self, generation: int, replicas: int) -> bool:
        if self.down:
            raise Unmeasurable("Prometheus at http://p:9090 did not answer")
        return self.loaded

    def figures(self, stable: str, candidate: str, seconds: int) -> Figures:
        if self.down:
            raise Unmeasurable("Prometheus at http://p:9090 did not answer")
        self.asked.append((stable, candidate, seconds))
        return self.figured


def move(state: RolloutState | None, raw: dict[str, Any], now: float, measure: Recorded, ready: bool = True,
         problem: str | None = None) -> Any:
    spec = parse_spec(raw)
    assert spec.rollout is not None
    return advance(state, name="cls", revision=revision_of(OWNER, spec, DEFAULTS), spec=raw, rollout=spec.rollout,
                   now=now, candidate_ready=ready, candidate_problem=problem, replicas=4, measure=measure)


def started(measure: Recorded) -> tuple[RolloutState, dict[str, Any]]:
    """A stable revision from spec a.onnx, then spec b.onnx: the rollout's first step, in force at t=10."""
    first = move(None, raw_spec(), 0, measure).state
    new = raw_spec("/models/b.onnx")
    begun = move(first, new, 1, measure).state
    in_force = move(begun, new, 10, measure).state
    assert in_force.effective_at == 10
    return in_force, new


def test_the_first_revision_is_stable_and_a_new_one_starts_at_the_first_step() -> None:
    measure = Recorded()
    first = move(None, raw_spec(), 0, measure)
    assert first.state.phase == STABLE and first.state.stable_deployment == "cls"
    assert move(first.state, raw_spec(), 5, measure).state.candidate_revision is None  # same spec: nothing moves
    new = raw_spec("/models/b.onnx")
    begun = move(first.state, new, 6, measure)
    assert begun.state.phase == PROGRESSING and begun.state.candidate_revision != first.state.stable_revision
    assert begun.state.candidate_deployment == f"cls-{begun.state.candidate_revision}"
    assert begun.state.generation == first.state.generation + 1
    assert [e.reason for e in begun.events] == ["RolloutStarted"]
    assert begun.state.step_text(parse_spec(new).rollout) == "shadow 20%"  # the default steps start with a shadow


def test_the_step_clock_starts_only_once_the_candidate_is_ready_and_every_replica_has_the_table() -> None:
    measure = Recorded(loaded=False)
    first = move(None, raw_spec(), 0, measure).state
    new = raw_spec("/models/b.onnx")
    begun = move(first, new, 1, measure).state
    assert move(begun, new, 2, measure, ready=False).state.effective_at is None
    waiting = move(begun, new, 3, measure).state
    assert waiting.effective_at is None and "traffic table" in waiting.message
    measure.loaded = True
    assert move(waiting, new, 4, measure).state.effective_at == 4


def test_a_passing_analysis_moves_through_every_step_then_promotes() -> None:
    measure = Recorded()
    state, new = started(measure)
    rollout = parse_spec(new).rollout
    assert move(state, new, 10 + INTERVAL - 1, measure).state == state  # not due yet: nothing asked
    assert measure.asked == []
    seen = []
    now = 10.0
    while state.candidate_revision is not None:
        now += INTERVAL
        state = move(state, new, now, measure).state  # analysis passes: next step
        if state.candidate_revision is not None:
            seen.append(state.step_text(rollout))
            now += 1
            state = move(state, new, now, measure).state  # the table reached every replica
    assert seen == ["weight 10%", "weight 50%", "weight 100%"]
    assert state.phase == PROMOTED and state.stable_deployment.startswith("cls-") and state.retiring == "cls"
    assert state.stable_spec == new and len(state.analyses) == 4
    assert all(record["result"] == "pass" for record in state.analyses)
    assert measure.asked[0][2] == INTERVAL
    # once the promotion's table is everywhere, the old Deployment is forgotten (and so deleted)
    assert move(state, new, now + 5, measure).state.retiring is None


@pytest.mark.parametrize(("figures", "why"), [
    (replace(GOOD, error_rate=0.2, errors_by_code={"INTERNAL": 40}),
     "error rate 0.200 > maxErrorRate 0.01 (INTERNAL 40)"),
    (replace(GOOD, candidate_p99=0.06), "p99 latency 60.0 ms is 3.00x the stable revision's 20.0 ms"),
    (replace(GOOD, agreement=0.1), "shadow agreement 0.100 < minAgreement 0.9"),
])
def test_a_broken_threshold_rolls_back_and_the_spec_is_not_retried(figures: Figures, why: str) -> None:
    measure = Recorded(figured=figures)
    state, new = started(measure)
    rolled = move(state, new, 10 + INTERVAL, measure)
    assert rolled.state.phase == ROLLED_BACK and rolled.state.candidate_revision is None
    assert rolled.state.failed_revision == state.candidate_revision
    assert why in rolled.state.message and rolled.events[0].warning and rolled.events[0].reason == "RolledBack"
    assert rolled.state.analyses[-1]["result"] == "fail" and why in rolled.state.analyses[-1]["reasons"][0]
    assert rolled.state.generation == state.generation + 1
    again = move(rolled.state, new, 10 + 2 * INTERVAL, Recorded())
    assert again.state.candidate_revision is None and again.state.phase == ROLLED_BACK  # not retried
    changed = move(rolled.state, raw_spec("/models/c.onnx"), 100, Recorded())
    assert changed.state.phase == PROGRESSING and changed.state.failed_revision is None


def test_missing_figures_hold_the_step_and_never_pass() -> None:
    measure = Recorded(figured=replace(GOOD, candidate_requests=3, compared=2))
    state, new = started(measure)
    held = move(state, new, 10 + INTERVAL, measure).state
    assert held.phase == HOLDING and held.step_index == 0 and "fewer than minRequests 20" in held.message
    assert held.analyze_at == 10 + 2 * INTERVAL and held.analyses[-1]["result"] == "hold"
    assert move(held, new, 10 + 2 * INTERVAL - 1, measure).state == held  # judged again an interval later
    measure.figured = GOOD
    assert move(held, new, 10 + 2 * INTERVAL, measure).state.step_index == 1


def test_an_unreachable_prometheus_holds() -> None:
    measure = Recorded()
    state, new = started(measure)
    measure.down = True
    held = move(state, new, 10 + INTERVAL, measure).state
    assert held.phase == HOLDING and "did not answer" in held.message and held.step_index == 0


def test_a_candidate_that_cannot_serve_is_rolled_back_at_once() -> None:
    measure = Recorded()
    first = move(None, raw_spec(), 0, measure).state
    new = raw_spec("/models/b.onnx")
    begun = move(first, new, 1, measure).state
    rolled = move(begun, new, 2, measure, ready=False, problem="CrashLoopBackOff: pod x: exit 1").state
    assert rolled.phase == ROLLED_BACK and "CrashLoopBackOff" in rolled.message


def test_the_spec_going_back_to_the_stable_revision_drops_the_candidate() -> None:
    measure = Recorded()
    state, _ = started(measure)
    back = move(state, raw_spec(), 50, measure)
    assert back.state.candidate_revision is None and back.state.phase == STABLE
    assert [e.reason for e in back.events] == ["RolloutAborted"]


def test_status_round_trip_resumes_where_it_was() -> None:
    state, new = started(Recorded())
    rollout = parse_spec(new).rollout
    stored = json.loads(json.dumps(state.to_status(rollout)))
    stored = {key: value for key, value in stored.items() if value is not None}  # as the API server keeps it
    assert RolloutState.from_status(stored) == state
    assert stored["step"] == "shadow 20%"


def test_candidate_share_never_exceeds_the_step_share_by_more_than_one_replica() -> None:
    assert [candidate_share(3, p) for p in (10, 50, 100)] == [1, 2, 3]
    assert [candidate_share(10, p) for p in (10, 50, 100)] == [1, 5, 10]


def by_name(children: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children.present}


def test_rendered_children_follow_the_step() -> None:
    measure = Recorded()
    state, new = started(measure)
    spec = parse_spec(new)
    stable, candidate = state.stable_revision, str(state.candidate_revision)
    children = by_name(render_rollout_children(OWNER, spec, DEFAULTS, state, candidate))
    old_model = children[("Deployment", "cls")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "/models/a.onnx" in old_model and "--traffic-file" in old_model  # the stable keeps its own spec
    new_deployment = children[("Deployment", f"cls-{candidate}")]
    assert "/models/b.onnx" in new_deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert new_deployment["spec"]["selector"]["matchLabels"][REVISION_LABEL] == candidate
    assert new_deployment["spec"]["replicas"] == 1  # shadow 20% of 3
    assert children[("Deployment", "cls")]["spec"]["replicas"] == 3
    # shadow: the shared Services select the stable revision only; each revision has its own headless Service
    assert children[("Service", "cls")]["spec"]["selector"][REVISION_LABEL] == stable
    assert children[("Service", "cls-pods")]["spec"]["selector"][REVISION_LABEL] == stable
    assert children[("Service", f"cls-{candidate}")]["spec"]["clusterIP"] == "None"
    table = json.loads(children[("ConfigMap", "cls-traffic")]["data"]["traffic.json"])
    assert table == traffic_table(OWNER, state, Traffic(0, 20), "cluster.local")
    assert table["shadowPercent"] == 20 and table["candidateWeight"] == 0
    assert table["candidate"]["target"] == f"cls-{candidate}.ns.svc.cluster.local:8001"
    # a weight step: the shared Services select both revisions, the candidate gets its share of replicas
    weighted = by_name(render_rollout_children(OWNER, spec, DEFAULTS, replace(state, step_index=2), candidate))
    assert REVISION_LABEL not in weighted[("Service", "cls")]["spec"]["selector"]
    assert weighted[("Deployment", f"cls-{candidate}")]["spec"]["replicas"] == 2  # 50% of 3
    assert json.loads(weighted[("ConfigMap", "cls-traffic")]["data"]["traffic.json"])["candidateWeight"] == 50


def test_a_retiring_deployment_is_kept_and_nothing_else_is() -> None:
    measure = Recorded()
    state, new = started(measure)
    promoted = replace(state, stable_revision=str(state.candidate_revision),
                       stable_deployment=str(state.candidate_deployment), candidate_revision=None,
                       candidate_deployment=None, retiring="cls", phase=PROMOTED, stable_spec=new)
    children = render_rollout_children(OWNER, parse_spec(new), DEFAULTS, promoted, promoted.stable_revision)
    assert ("Deployment", "cls") in children.kept
    assert ("Deployment", "cls") not in by_name(children)
    assert not any(ref.kind == "Deployment" for ref in children.absent)


def test_the_revision_is_the_pod_template_and_nothing_else() -> None:
    base = parse_spec(raw_spec())
    assert revision_of(OWNER, base, DEFAULTS) == revision_of(OWNER, parse_spec(raw_spec(replicas=7)), DEFAULTS)
    assert revision_of(OWNER, base, DEFAULTS) != revision_of(OWNER, parse_spec(raw_spec("/models/b.onnx")), DEFAULTS)
    assert revision_of(OWNER, base, DEFAULTS) != revision_of(OWNER, base, RuntimeDefaults(image="gpu:2",
                                                                                          cpu_image="cpu:2"))


def test_the_analysis_counts_as_server_errors_what_the_runtime_does() -> None:
    from kubeinfer.operator.analysis import SERVER_ERROR_CODES as counted
    from kubeinfer.runtime.metrics import SERVER_ERROR_CODES as started_at_zero

    assert counted == started_at_zero
