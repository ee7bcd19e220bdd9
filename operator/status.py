"""Pure status: the live Deployment and its pods become phase, Ready condition and endpoint. No I/O.

Ready is reported only when the Deployment's current generation has rolled out and every desired replica is
ready. A pod that crash-loops, cannot pull its image or cannot be scheduled turns the phase to Failed (nothing
serves) or Degraded (some replicas serve), with the pod's own reason and message, never to Ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeinfer.operator.render import endpoint, selector_string
from kubeinfer.operator.render_fetch import is_fetch_container

PHASES = ("Pending", "Progressing", "Ready", "Idle", "Degraded", "Failed")

# Waiting reasons that do not go away by waiting: the pod needs a fix (image, config, code, data).
BLOCKING_WAIT_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "PreCreateHookError",
    "PostStartHookError",
})


@dataclass(frozen=True)
class Problem:
    """Why replicas do not serve, as Kubernetes said it (the reason is a CamelCase word)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """What the operator knows when it computes status."""

    name: str
    namespace: str
    observed_generation: int | None
    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]] = ()
    # The spec cannot be applied: InvalidSpec, a child name taken (ChildConflict) or a child the API server
    # refused (ChildRejected). The caller then passes the previously observed generation, not the current one.
    error: Problem | None = None
    previous: Mapping[str, Any] | None = None  # the current status, for lastTransitionTime
    service_exists: bool = True  # the ClusterIP Service the endpoint names (it may have been refused)
    now: str = ""  # RFC 3339, given by the caller so this module stays pure
    runtime: Mapping[str, str] | None = None  # the image and engine the spec is served with (RuntimeChoice.status)
    rollout: Mapping[str, Any] | None = None  # status.rollout (operator/rollout.py); None removes it


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """Blocking problems of the pods, most useful first (crashes and pulls before scheduling)."""
    found: list[Problem] = []
    unschedulable: list[Problem] = []
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        pod_name = pod.get("metadata", {}).get("name", "?")
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue  # a terminating pod of an old revision says nothing about the current one
        status = pod.get("status") or {}
        for kind, key in (("init container", "initContainerStatuses"), ("container", "containerStatuses")):
            for container in status.get(key) or []:
                fetch_failure = _fetch_failure(pod_name, container) if kind == "init container" else None
                waiting = (container.get("state") or {}).get("waiting") or {}
                reason = waiting.get("reason", "")
                if fetch_failure is not None:
                    found.append(fetch_failure)
                elif reason in BLOCKING_WAIT_REASONS:
                    found.append(Problem(reason, _container_message(pod_name, kind, container, waiting)))
        if status.get("phase") == "Failed":
            found.append(Problem(status.get("reason") or "PodFailed",
                                 f"pod {pod_name}: {status.get('message') or 'failed'}"))
        for condition in status.get("conditions") or []:
            if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                    and condition.get("reason") == "Unschedulable"):
                unschedulable.append(Problem("Unschedulable", f"pod {pod_name}: {condition.get('message', '')}"))
    return found + unschedulable


def _fetch_failure(pod: str, container: Mapping[str, Any]) -> Problem | None:
    """A fetch init container that exited non-zero (now, or before the back-off it waits in): FetchFailed, with
    its one-line error (the termination message) as the message."""
    if not is_fetch_container(str(container.get("name", ""))):
        return None
    state = container.get("state") or {}
    terminated = state.get("terminated") or {}
    if not terminated and (state.get("waiting") or {}).get("reason") in BLOCKING_WAIT_REASONS:
        terminated = (container.get("lastState") or {}).get("terminated") or {}
    if not terminated or terminated.get("exitCode") in (0, None):
        return None
    lines = str(terminated.get("message") or "").strip().splitlines()
    why = lines[-1] if lines else f"exit code {terminated.get('exitCode')}"
    return Problem("FetchFailed", f"pod {pod} init container {container.get('name')}: {why}")


def _container_message(pod: str, kind: str, container: Mapping[str, Any], waiting: Mapping[str, Any]) -> str:
    text = f"pod {pod} {kind} {container.get('name', '?')}: {waiting.get('reason')}"
    last = (container.get("lastState") or {}).get("terminated") or {}
    if last:
        text += f" (last exit code {last.get('exitCode')}"
        text += f": {last['reason']}" if last.get("reason") else ""
        text += ")"
        if last.get("message"):  # the runtime's own last words (terminationMessagePolicy FallbackToLogsOnError)
            text += f": {str(last['message']).strip().splitlines()[-1]}"
    elif waiting.get("message"):
        text += f": {waiting['message']}"
    return text


def deployment_problems(deployment: Mapping[str, Any]) -> list[Problem]:
    """Failures the Deployment controller reports: a stuck rollout or pods the API refused (e.g. quota)."""
    found: list[Problem] = []
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        kind, state, reason = condition.get("type"), condition.get("status"), condition.get("reason", "")
        if kind == "ReplicaFailure" and state == "True":
            found.append(Problem(reason or "ReplicaFailure", condition.get("message", "")))
        if kind == "Progressing" and state == "False" and reason == "ProgressDeadlineExceeded":
            found.append(Problem(reason, condition.get("message", "")))
    return found


def _phase(obs: Observation) -> tuple[str, str, str]:
    """(phase, reason, message) for the observation."""
    deployment = obs.deployment
    if obs.error is not None:
        ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
        if ready and obs.service_exists:  # the previous revision still serves
            return "Degraded", obs.error.reason, f"{ready} replicas of the last applied spec serve; {obs.error.message}"
        return "Failed", obs.error.reason, obs.error.message
    if deployment is None:
        return "Pending", "Creating", f"waiting for Deployment {obs.name}"
    desired = int((deployment.get("spec") or {}).get("replicas", 1))
    state = deployment.get("status") or {}
    ready = int(state.get("readyReplicas") or 0)
    if desired == 0:
        return "Idle", "ScaledToZero", "0 replicas requested: nothing serves until the service is scaled up"
    problems = pod_problems(obs.pods) + deployment_problems(deployment)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        if ready == 0:
            return "Failed", first.reason, first.message + more
        return "Degraded", first.reason, f"{ready}/{desired} replicas ready; {first.message}{more}"
    observed = state.get("observedGeneration")
    if observed is None:
        return "Pending", "DeploymentPending", f"Deployment {obs.name} not yet picked up by its controller"
    generation = (deployment.get("metadata") or {}).get("generation")
    if generation is not None and int(observed) < int(generation):
        # The counts still describe the previous generation's pods: none of the new template may exist yet.
        return "Progressing", "RollingOut", (f"Deployment {obs.name} generation {generation} not yet picked up by "
                                             f"the Deployment controller; {ready} ready")
    updated = int(state.get("updatedReplicas") or 0)
    available = int(state.get("availableReplicas") or 0)
    total = int(state.get("replicas") or 0)
    if updated >= desired and total <= desired and ready >= desired and available >= desired:
        return "Ready", "AllReplicasReady", f"{ready}/{desired} replicas ready"
    if (deployment.get("spec") or {}).get("paused"):
        return "Progressing", "DeploymentPaused", (f"Deployment {obs.name} is paused: {updated}/{desired} replicas "
                                                   f"updated, {ready} ready")
    if updated < desired or total > desired:
        return "Progressing", "RollingOut", f"{updated}/{desired} replicas updated, {ready} ready"
    return "Progressing", "ReplicasStarting", f"{ready}/{desired} replicas ready"


def compute_status(obs: Observation) -> dict[str, Any]:
    """The whole ``status`` of the InferenceService for this observation."""
    phase, reason, message = _phase(obs)
    ready_state = "True" if phase == "Ready" else "False"
    previous = {c.get("type"): c for c in (obs.previous or {}).get("conditions") or []}.get("Ready") or {}
    since = previous.get("lastTransitionTime") if previous.get("status") == ready_state else None
    condition: dict[str, Any] = {"type": "Ready", "status": ready_state, "reason": reason, "message": message,
                                 "lastTransitionTime": since or obs.now}
    state = (obs.deployment or {}).get("status") or {}
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [condition],
        "replicas": int(state.get("replicas") or 0),
        "readyReplicas": int(state.get("readyReplicas") or 0),
        "selector": selector_string(obs.name),
    }
    if obs.observed_generation is not None:
        condition["observedGeneration"] = obs.observed_generation
        status["observedGeneration"] = obs.observed_generation
    if obs.runtime is not None:
        status["runtime"] = dict(obs.runtime)
    status["rollout"] = dict(obs.rollout) if obs.rollout else None
    # The endpoint is published only while something answers there; None removes it (merge patch).
    serving = status["readyReplicas"] > 0 and obs.service_exists
    status["endpoint"] = endpoint(obs.name, obs.namespace) if serving else None
    return status


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when writing ``new`` would change what the resource shows (so unchanged status is not re-patched)."""
    old = old or {}
    return any(present(old.get(key)) != present(value) for key, value in new.items())


def present(value: Any) -> Any:
    """``value`` as the API server keeps it after a merge patch: None values in maps are removed, not stored."""
    if isinstance(value, Mapping):
        return {key: present(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [present(item) for item in value]
    return value
