"""One reconciliation's rollout: the cached children and pods read, the state moved on (operator/rollout.py), the
children rendered for it (operator/render_rollout.py). reconcile.py applies what comes out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubeinfer.operator import metrics
from kubeinfer.operator.analysis import NoPrometheus, PrometheusMeasure
from kubeinfer.operator.cache import Cache
from kubeinfer.operator.render import REVISION_LABEL, ChildRef, Children, Owner, RuntimeDefaults, render_children
from kubeinfer.operator.render_rollout import (
    DEFAULT_CLUSTER_DOMAIN,
    render_rollout_children,
    revision_of,
    traffic_name,
)
from kubeinfer.operator.render_routes import route_refs
from kubeinfer.operator.rollout import Event, Measure, RolloutState, advance
from kubeinfer.operator.spec import ServiceSpec
from kubeinfer.operator.status import deployment_problems, pod_problems


@dataclass(frozen=True)
class RolloutSettings:
    """The operator's rollout flags: the Prometheus a spec without ``rollout.prometheus`` is analysed from, and
    the cluster's DNS domain (the traffic table names each revision's headless Service by its full name)."""

    prometheus_url: str | None = None
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN

    def measure(self, spec: ServiceSpec, namespace: str, name: str) -> Measure:
        address = (spec.rollout.prometheus if spec.rollout else None) or self.prometheus_url
        return PrometheusMeasure(address, namespace, name) if address else NoPrometheus()


@dataclass(frozen=True)
class RolloutPlan:
    children: Children
    status: dict[str, Any] | None  # status.rollout (None: removed)
    events: tuple[Event, ...] = ()


def revision_of_pod(pod: Mapping[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL)


def _ready(deployment: Mapping[str, Any] | None) -> bool:
    """Every desired replica of the Deployment's current template is ready."""
    if deployment is None:
        return False
    desired = int((deployment.get("spec") or {}).get("replicas", 1))
    state = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation")
    current = generation is None or int(state.get("observedGeneration") or 0) >= int(generation)
    return current and int(state.get("updatedReplicas") or 0) >= desired and int(state.get("readyReplicas") or 0) \
        >= desired


def _ready_replicas(deployment: Mapping[str, Any] | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def plan_rollout(owner: Owner, spec: ServiceSpec, body: Mapping[str, Any], status: Mapping[str, Any] | None,
                 defaults: RuntimeDefaults, cache: Cache, settings: RolloutSettings,
                 now: float | None = None) -> RolloutPlan:
    """The children and ``status.rollout`` of an InferenceService that has, or had, ``spec.rollout``."""
    namespace, name = owner.namespace, owner.name
    previous = RolloutState.from_status(status)
    if spec.rollout is None:  # the rollout was removed: back to one Deployment NAME, the current one kept till then
        plain = render_children(owner, spec, defaults)
        children = replace(plain, absent=[*plain.absent, ChildRef("v1", "ConfigMap", traffic_name(name)),
                                          *route_refs(name)])
        if previous is None or previous.stable_deployment == name or _ready(cache.child("Deployment", namespace,
                                                                                          name, name)):
            return RolloutPlan(children, None)
        return RolloutPlan(replace(children, kept=frozenset({("Deployment", previous.stable_deployment)})),
                           dict(status or {}))
    revision = revision_of(owner, spec, defaults)
    stable = cache.child("Deployment", namespace, name, previous.stable_deployment) if previous else None
    candidate = (cache.child("Deployment", namespace, name, previous.candidate_deployment)
                 if previous and previous.candidate_deployment else None)
    problem = None
    if previous is not None and previous.candidate_revision is not None:
        pods = [pod for pod in cache.pods(namespace, name) if revision_of_pod(pod) == previous.candidate_revision]
        problems = pod_problems(pods) + (deployment_problems(candidate) if candidate else [])
        problem = f"{problems[0].reason}: {problems[0].message}" if problems else None
    moved = advance(previous, name=name, revision=revision, spec=dict(body.get("spec") or {}), rollout=spec.rollout,
                    now=time.time() if now is None else now, candidate_ready=_ready(candidate),
                    candidate_problem=problem, replicas=_ready_replicas(stable) + _ready_replicas(candidate),
                    measure=settings.measure(spec, namespace, name))
    for event in moved.events:
        if event.reason in metrics.ROLLOUT_RESULTS:
            metrics.rollouts.labels(result=metrics.ROLLOUT_RESULTS[event.reason]).inc()
    if moved.state.analyses != (previous.analyses if previous else ()) and moved.state.analyses:
        metrics.rollout_analyses.labels(verdict=moved.state.analyses[-1]["result"]).inc()
    stable_replicas = int(((stable or {}).get("spec") or {}).get("replicas") or 0) or None
    children = render_rollout_children(owner, spec, defaults, moved.state, revision, settings.cluster_domain,
                                       stable_replicas)
    return RolloutPlan(children, moved.state.to_status(spec.rollout), moved.events)


def stable_view(cache: Cache, namespace: str, name: str, rollout: Mapping[str, Any] | None,
                fresh: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
                listed: Sequence[Mapping[str, Any]] | None = None) -> tuple[Mapping[str, Any] | None,
                                                                             list[Mapping[str, Any]]]:
    """The Deployment and pods the phase is computed from: the stable revision's (all of them without a rollout).
    ``fresh``: children as just applied (newer than the cache); ``listed``: pods as just listed."""
    deployment_name = str((rollout or {}).get("stableDeployment") or name)
    deployment = (fresh or {}).get(("Deployment", deployment_name)) or cache.child("Deployment", namespace, name,
                                                                                   deployment_name)
    pods = list(listed) if listed is not None else list(cache.pods(namespace, name))
    stable_revision = (rollout or {}).get("stableRevision")
    if stable_revision:
        pods = [pod for pod in pods if revision_of_pod(pod) in (None, stable_revision)]
    return deployment, pods
