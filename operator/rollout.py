"""A progressive rollout (``spec.rollout``) as a pure state machine: where a rollout stands is ``status.rollout``
(so a restarted operator resumes where it was), and each reconciliation moves it on. No I/O: the figures come
from a ``Measure`` (operator/analysis.py asks Prometheus), the clock from the caller.

A new revision (a changed pod template: model, thresholds, image...) is not rolled into the stable Deployment: it
gets a Deployment of its own, ``NAME-REVISION``, and goes through the spec's steps. A step is in force once the
traffic table carrying it (ConfigMap ``NAME-traffic``) has reached every replica; its analysis comes ``interval``
seconds later and passes (next step, or promotion after the last), fails (rollback) or finds too few calls to judge
(the step holds, and is judged again an interval later: missing figures never pass).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kubeinfer.operator.spec import Rollout, Step

STABLE, PROGRESSING, HOLDING, ROLLED_BACK, PROMOTED = "Stable", "Progressing", "Holding", "RolledBack", "Promoted"
PHASES = (STABLE, PROGRESSING, HOLDING, ROLLED_BACK, PROMOTED)
KEPT_ANALYSES = 10  # the last analyses shown in status (kubectl describe)


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def format_time(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Figures:
    """One analysis window's per-revision figures; None where Prometheus had nothing to say."""

    candidate_requests: float
    stable_requests: float
    error_rate: float | None  # server errors / calls of the candidate
    errors_by_code: Mapping[str, float]  # the candidate's server errors by gRPC code
    candidate_p99: float | None
    stable_p99: float | None
    compared: float  # calls the shadow compared
    agreement: float | None  # their mean agreement

    @property
    def latency_ratio(self) -> float | None:
        if self.candidate_p99 is None or self.stable_p99 is None or self.stable_p99 <= 0:
            return None
        return self.candidate_p99 / self.stable_p99


class Measure(Protocol):
    """What the rollout asks of the metrics (operator/analysis.py answers from Prometheus)."""

    def effective(self, generation: int, replicas: int) -> bool:
        """Whether at least ``replicas`` replicas, and no replica at all with an older one, have loaded the traffic
        table ``generation``."""

    def figures(self, stable: str, candidate: str, seconds: int) -> Figures:
        """The figures of the last ``seconds``."""


class Unmeasurable(Exception):
    """The metrics cannot be read (no Prometheus address, or it did not answer): the rollout holds."""


@dataclass(frozen=True)
class Verdict:
    result: str  # "pass", "fail" or "hold"
    reasons: tuple[str, ...]


def judge(figures: Figures, rollout: Rollout, step: Step) -> Verdict:
    """The step's analysis: a broken threshold fails it; too few calls to tell hold it; otherwise it passes."""
    limits = rollout.analysis
    failed: list[str] = []
    missing: list[str] = []
    if figures.candidate_requests < limits.min_requests:
        missing.append(f"the new revision served {figures.candidate_requests:.0f} calls, fewer than "
                       f"minRequests {limits.min_requests}")
    elif figures.error_rate is not None and figures.error_rate > limits.max_error_rate:
        codes = ", ".join(f"{code} {count:.0f}" for code, count in sorted(figures.errors_by_code.items()))
        failed.append(f"error rate {figures.error_rate:.3f} > maxErrorRate {limits.max_error_rate:g}"
                      + (f" ({codes})" if codes else ""))
    if figures.stable_requests < limits.min_requests:
        missing.append(f"the stable revision served {figures.stable_requests:.0f} calls, fewer than minRequests "
                       f"{limits.min_requests}")
    ratio = figures.latency_ratio
    if not missing:
        if ratio is None:
            missing.append("no p99 latency for both revisions")
        elif ratio > limits.max_latency_ratio:
            failed.append(f"p99 latency {figures.candidate_p99 * 1000:.1f} ms is {ratio:.2f}x the stable "
                          f"revision's {figures.stable_p99 * 1000:.1f} ms > maxLatencyRatio "
                          f"{limits.max_latency_ratio:g}")
    if step.kind == "shadow":
        if figures.compared < limits.min_requests or figures.agreement is None:
            missing.append(f"the shadow compared {figures.compared:.0f} answers, fewer than minRequests "
                           f"{limits.min_requests}")
        elif figures.agreement < limits.min_agreement:
            failed.append(f"shadow agreement {figures.agreement:.3f} < minAgreement {limits.min_agreement:g}")
    if failed:
        return Verdict("fail", tuple(failed))
    if missing:
        return Verdict("hold", tuple(missing))
    return Verdict("pass", ())


@dataclass(frozen=True)
class RolloutState:
    """``status.rollout``: the stable revision (and the spec it was made from, so its Deployment is rendered from
    that spec while a new one is tried), the candidate and its step, and the traffic table's generation."""

    stable_revision: str
    stable_deployment: str
    stable_spec: Mapping[str, Any]
    generation: int = 1
    phase: str = STABLE
    candidate_revision: str | None = None
    candidate_deployment: str | None = None
    step_index: int = 0
    step_started_at: float | None = None  # when the step's traffic table was written
    effective_at: float | None = None  # when every replica had it
    analyze_at: float | None = None  # when the step is judged next
    failed_revision: str | None = None  # rolled back: not tried again until the spec changes
    retiring: str | None = None  # the previous stable Deployment, removed once the new table reached the replicas
    message: str = ""
    analyses: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> RolloutState | None:
        if not status or not status.get("stableRevision"):
            return None
        return cls(
            stable_revision=str(status["stableRevision"]), stable_deployment=str(status["stableDeployment"]),
            stable_spec=dict(status.get("stableSpec") or {}), generation=int(status.get("generation") or 1),
            phase=str(status.get("phase") or STABLE), candidate_revision=status.get("candidateRevision"),
            candidate_deployment=status.get("candidateDeployment"), step_index=int(status.get("stepIndex") or 0),
            step_started_at=parse_time(status.get("stepStartedAt")),
            effective_at=parse_time(status.get("effectiveAt")), analyze_at=parse_time(status.get("analyzeAt")),
            failed_revision=status.get("failedRevision"), retiring=status.get("retiring"),
            message=str(status.get("message") or ""), analyses=tuple(status.get("analyses") or ()))

    def to_status(self, rollout: Rollout | None) -> dict[str, Any]:
        """The status object (None values are dropped by the merge patch's caller)."""
        return {
            "step": self.step_text(rollout),
            "phase": self.phase,
            "stableRevision": self.stable_revision,
            "stableDeployment": self.stable_deployment,
            "stableSpec": dict(self.stable_spec),
            "generation": self.generation,
            "candidateRevision": self.candidate_revision,
            "candidateDeployment": self.candidate_deployment,
            "stepIndex": self.step_index if self.candidate_revision else None,
            "stepStartedAt": format_time(self.step_started_at) if self.step_started_at else None,
            "effectiveAt": format_time(self.effective_at) if self.effective_at else None,
            "analyzeAt": format_time(self.analyze_at) if self.analyze_at else None,
            "failedRevision": self.failed_revision,
            "retiring": self.retiring,
            "message": self.message,
            "analyses": [dict(a) for a in self.analyses],
        }

    def step(self, rollout: Rollout | None) -> Step | None:
        if self.candidate_revision is None or rollout is None or self.step_index >= len(rollout.steps):
            return None
        return rollout.steps[self.step_index]

    def step_text(self, rollout: Rollout | None) -> str:
        """What ``kubectl get kisvc`` shows: the step in force, or the phase when none is."""
        step = self.step(rollout)
        if step is None:
            return self.phase
        held = " (holding)" if self.phase == HOLDING else ""
        return f"{step.kind} {step.percent}%{held}"


@dataclass(frozen=True)
class Event:
    warning: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Advance:
    """A reconciliation's move: the new state and the Events to post."""

    state: RolloutState
    events: tuple[Event, ...] = ()


def candidate_share(replicas: int, percent: int) -> int:
    """The candidate's replicas for a step: its share of the stable's, at least one (capacity never exceeds the
    stable's plus that share)."""
    return max(1, math.ceil(replicas * percent / 100))


def advance(previous: RolloutState | None, *, name: str, revision: str, spec: Mapping[str, Any], rollout: Rollout,
            now: float, candidate_ready: bool, candidate_problem: str | None, replicas: int,
            measure: Measure) -> Advance:
    """Where the rollout stands after this reconciliation.

    ``revision`` is the current spec's; ``replicas`` how many ready replicas the traffic table must reach (both
    revisions'); ``candidate_ready``: every replica of the candidate's Deployment is ready; ``candidate_problem``:
    why its pods cannot serve (a crash loop, a failed fetch), which rolls it back at once.
    """
    if previous is None:  # the first revision seen with spec.rollout is the stable one
        return Advance(RolloutState(revision, name, dict(spec), message=f"revision {revision} is stable"))
    state = _retire(previous, measure, replicas)
    if revision == state.stable_revision:
        if state.candidate_revision is not None:  # the spec went back to the stable revision: drop the candidate
            state = replace(_without_candidate(state), phase=STABLE,
                            message=f"the spec returned to the stable revision {revision}; revision "
                                    f"{state.candidate_revision} removed")
            return Advance(state, (Event(False, "RolloutAborted", state.message),))
        return Advance(replace(state, stable_spec=dict(spec)))  # same pod template; other fields may differ
    if revision == state.failed_revision:
        return Advance(state)  # stays RolledBack until the spec changes
    if revision != state.candidate_revision:
        first = rollout.steps[0]
        replaced = f" (replacing revision {state.candidate_revision})" if state.candidate_revision else ""
        state = replace(state, phase=PROGRESSING, candidate_revision=revision,
                        candidate_deployment=f"{name}-{revision}", step_index=0, step_started_at=now,
                        effective_at=None, analyze_at=None, failed_revision=None, generation=state.generation + 1,
                        message=f"rolling out revision {revision}{replaced}: {first.kind} {first.percent}%",
                        analyses=())
        return Advance(state, (Event(False, "RolloutStarted", state.message),))
    # the candidate is the current spec: move it on
    if candidate_problem is not None:
        return _roll_back(state, f"the new revision cannot serve: {candidate_problem}", None, now)
    if not candidate_ready:
        return Advance(replace(state, message=f"waiting for revision {revision}'s replicas to be ready"))
    if state.effective_at is None:
        try:
            effective = measure.effective(state.generation, replicas)
        except Unmeasurable as exc:
            return Advance(replace(state, phase=HOLDING, message=f"holding: {exc}"))
        if not effective:
            return Advance(replace(state, message=f"waiting for every replica to load traffic table "
                                                  f"{state.generation}"))
        return Advance(replace(state, phase=PROGRESSING, effective_at=now, analyze_at=now + rollout.interval,
                               message=f"{state.step_text(rollout)} in force; analysis at "
                                       f"{format_time(now + rollout.interval)}"))
    if state.analyze_at is not None and now < state.analyze_at:
        return Advance(state)
    step = state.step(rollout)
    assert step is not None
    try:
        figures = measure.figures(state.stable_revision, revision, rollout.interval)
    except Unmeasurable as exc:
        return Advance(replace(state, phase=HOLDING, analyze_at=now + rollout.interval, message=f"holding: {exc}"))
    verdict = judge(figures, rollout, step)
    record = _record(state, rollout, figures, verdict, now)
    if verdict.result == "fail":
        return _roll_back(state, "; ".join(verdict.reasons), record, now)
    if verdict.result == "hold":
        held = replace(state, phase=HOLDING, analyze_at=now + rollout.interval,
                       analyses=_kept(state.analyses, record),
                       message=f"holding {step.kind} {step.percent}%: {'; '.join(verdict.reasons)}")
        return Advance(held, () if state.phase == HOLDING else (Event(False, "RolloutHolding", held.message),))
    if state.step_index + 1 < len(rollout.steps):
        following = rollout.steps[state.step_index + 1]
        moved = replace(state, phase=PROGRESSING, step_index=state.step_index + 1, step_started_at=now,
                        effective_at=None, analyze_at=None, generation=state.generation + 1,
                        analyses=_kept(state.analyses, record),
                        message=f"{step.kind} {step.percent}% passed ({_summary(figures)}); now "
                                f"{following.kind} {following.percent}%")
        return Advance(moved, (Event(False, "RolloutStep", moved.message),))
    promoted = RolloutState(
        stable_revision=revision, stable_deployment=str(state.candidate_deployment), stable_spec=dict(spec),
        generation=state.generation + 1, phase=PROMOTED, retiring=state.stable_deployment,
        analyses=_kept(state.analyses, record),
        message=f"revision {revision} promoted after {len(rollout.steps)} steps ({_summary(figures)}); revision "
                f"{state.stable_revision} is scaled away")
    return Advance(promoted, (Event(False, "RolloutPromoted", promoted.message),))


def _retire(state: RolloutState, measure: Measure, replicas: int) -> RolloutState:
    """Forget the previous stable Deployment (so it is deleted) once the promotion's table reached the replicas."""
    if state.retiring is None:
        return state
    try:
        if not measure.effective(state.generation, replicas):
            return state
    except Unmeasurable:
        return state
    return replace(state, retiring=None, phase=STABLE if state.phase == PROMOTED else state.phase)


def _without_candidate(state: RolloutState) -> RolloutState:
    return replace(state, candidate_revision=None, candidate_deployment=None, step_index=0, step_started_at=None,
                   effective_at=None, analyze_at=None, generation=state.generation + 1)


def _roll_back(state: RolloutState, why: str, record: Mapping[str, Any] | None, now: float) -> Advance:
    revision = state.candidate_revision
    analyses = _kept(state.analyses, record) if record is not None else state.analyses
    rolled = replace(_without_candidate(state), phase=ROLLED_BACK, failed_revision=revision, analyses=analyses,
                     message=f"revision {revision} rolled back: {why}; every call goes to revision "
                             f"{state.stable_revision} again, and the spec is not tried again until it changes")
    return Advance(rolled, (Event(True, "RolledBack", rolled.message),))


def _kept(analyses: tuple[Mapping[str, Any], ...], record: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    return (*analyses, record)[-KEPT_ANALYSES:]


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _record(state: RolloutState, rollout: Rollout, figures: Figures, verdict: Verdict, now: float) -> dict[str, Any]:
    """One analysis as status shows it (kubectl describe)."""
    step = state.step(rollout)
    assert step is not None
    return {"at": format_time(now), "step": f"{step.kind} {step.percent}%", "result": verdict.result,
            "requests": int(figures.candidate_requests), "stableRequests": int(figures.stable_requests),
            "errorRate": _rounded(figures.error_rate), "latencyRatio": _rounded(figures.latency_ratio, 3),
            "p99Seconds": _rounded(figures.candidate_p99), "stableP99Seconds": _rounded(figures.stable_p99),
            "compared": int(figures.compared), "agreement": _rounded(figures.agreement),
            "reasons": list(verdict.reasons)}


def _summary(figures: Figures) -> str:
    parts = [f"{figures.candidate_requests:.0f} calls"]
    if figures.error_rate is not None:
        parts.append(f"error rate {figures.error_rate:.3f}")
    if figures.latency_ratio is not None:
        parts.append(f"p99 {figures.latency_ratio:.2f}x stable")
    if figures.agreement is not None and figures.compared:
        parts.append(f"agreement {figures.agreement:.3f} over {figures.compared:.0f}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Traffic:
    """How calls are split now, from the state and the spec's steps: what the Services select, what the traffic
    table says, how many replicas the candidate gets."""

    weight: int  # percent of live calls for the candidate
    shadow: int  # percent of the stable's calls mirrored to it

    @classmethod
    def of(cls, state: RolloutState, rollout: Rollout | None) -> Traffic:
        step = state.step(rollout)
        if step is None:
            return cls(0, 0)
        return cls(step.percent, 0) if step.kind == "weight" else cls(0, step.percent)

    @property
    def live_candidate(self) -> bool:
        """The candidate takes live calls: the shared Services select both revisions."""
        return self.weight > 0
