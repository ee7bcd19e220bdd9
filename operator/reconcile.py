"""One InferenceService brought in line with its spec: render, apply, report. No kopf decorators here: the handlers
(handlers.py) decide when, this module what.

Level-triggered and idempotent, one at a time per resource (its lock in state.py). A reconciliation compares the
rendered children with the cached ones (cache.py) and writes only what differs; with ``verify`` (after a watch
listed again) nothing is taken from the cache: children and pods are read from the API server, and cache entries
of objects it no longer has are forgotten.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf

from kubeinfer.operator import metrics
from kubeinfer.operator.cache import Cache, pod_snapshot, snapshot
from kubeinfer.operator.children import UNKNOWN, ChildConflict, apply, remove
from kubeinfer.operator.kube import ApiError, Kube
from kubeinfer.operator.render import (
    MANAGED_BY_LABEL,
    MANAGER,
    OWNER_LABEL,
    ChildRef,
    Children,
    Owner,
    render_children,
)
from kubeinfer.operator.rollout_plan import plan_rollout, stable_view
from kubeinfer.operator.spec import SpecError, parse_spec, validate_name
from kubeinfer.operator.state import OperatorState, ResourceState
from kubeinfer.operator.status import Observation, Problem, compute_status, present, status_changed

CHILDREN = {MANAGED_BY_LABEL: MANAGER}
RETRY_DELAY = 5.0  # seconds before kopf retries after a transient API failure
SLOW_RETRY_DELAY = 60.0  # after a failure that needs a person (a name conflict)
REFUSED_RETRY_DELAY = 15.0  # after a 403: permissions or quota are often granted within seconds
REJECTED_STATUSES = frozenset({400, 403, 422})  # the API server refused a child: retrying the same object won't help
CREATED_TRUST = 30.0  # seconds a child created by this process counts as existing while its watch event is due

log = logging.getLogger(__name__)


class ChildRejected(Exception):
    """The API server refused a rendered child (validation, admission, quota, RBAC, or a kind it does not serve)."""

    def __init__(self, kind: str, name: str, error: ApiError) -> None:
        if error.kind_not_served:
            super().__init__(f"the API server does not serve {kind} (is its CRD installed?); {name} not created: "
                             f"{error}")
        else:
            super().__init__(f"the API server refused {kind} {name}: {error}")
        self.kind, self.name, self.error = kind, name, error


def reconcile(namespace: str, name: str, state: OperatorState, cache: Cache, body: dict[str, Any] | None = None,
              verify: bool = False) -> None:
    """Render, apply, report, one at a time per resource. kopf retries TemporaryError.

    ``body`` is the resource as kopf just handed it over; a child's event passes none, and the resource is read.
    A trigger for a resource that no longer exists leaves nothing behind in ``state``.
    """
    started = time.monotonic()
    try:
        with state.locked(namespace, name) as resource:
            gone = _reconcile_locked(namespace, name, state, resource, cache, body, verify)
    finally:
        metrics.reconcile_duration.observe(time.monotonic() - started)
    if gone:
        state.forget(namespace, name)


def _reconcile_locked(namespace: str, name: str, state: OperatorState, resource: ResourceState, cache: Cache,
                      body: dict[str, Any] | None, verify: bool) -> bool:
    """``reconcile`` under the resource's lock; True when the resource is gone or going."""
    kube = state.kube
    try:
        if body is None:
            body = kube.get_inference_service(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return True  # nothing is re-created
        if verify:  # another replica may have written status since this one did: the body's status counts
            resource.status = None
        _reconcile(body, state, resource, cache, verify)
    except SpecError as exc:
        assert body is not None
        _report_problem(kube, resource, body, cache, Problem("InvalidSpec", str(exc)))
    except ChildConflict as exc:
        assert body is not None
        _report_problem(kube, resource, body, cache, Problem("ChildConflict", str(exc)))
        raise kopf.TemporaryError(str(exc), delay=SLOW_RETRY_DELAY) from exc
    except ChildRejected as exc:
        assert body is not None
        if exc.error.namespace_terminating:
            log.info("%s/%s: its namespace is being deleted, and it with it", namespace, name)
            return True
        _report_problem(kube, resource, body, cache, Problem("ChildRejected", str(exc)))
        if exc.error.status == 403:  # permissions or quota may be granted later; a 422 needs a new spec
            raise kopf.TemporaryError(str(exc), delay=REFUSED_RETRY_DELAY) from exc
        if exc.error.kind_not_served:  # its CRD may be installed later
            raise kopf.TemporaryError(str(exc), delay=SLOW_RETRY_DELAY) from exc
    except ApiError as exc:
        if exc.status == 404 and kube.get_inference_service(namespace, name) is None:
            return True  # deleted while being reconciled: nothing left to do
        metrics.reconciliations.labels(result="retry").inc()
        if body is not None:
            kopf.warn(body, reason="ApiError", message=str(exc))
        delay = RETRY_DELAY if exc.transient or exc.status == 409 else SLOW_RETRY_DELAY
        raise kopf.TemporaryError(str(exc), delay=delay) from exc
    else:
        resource.problem = None
        metrics.reconciliations.labels(result="success").inc()
    return False


def refresh_status(namespace: str, name: str, state: OperatorState, cache: Cache) -> None:
    """Recompute status from the cached Deployment and pods, keeping the last applied generation. No reads."""
    body = cache.inference_service(namespace, name)
    if body is None:
        state.forget(namespace, name)  # gone: a refresh asked for by its pods' last events leaves nothing behind
        return
    if body["metadata"].get("deletionTimestamp"):
        return
    with state.locked(namespace, name) as resource:
        try:
            write_status(state.kube, resource, body, cached_observation(resource, cache, body, resource.problem))
        except ApiError as exc:
            if exc.status == 404:
                return  # the resource went away meanwhile
            raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


def verify_against_server(namespace: str, name: str, state: OperatorState, cache: Cache) -> None:
    """Read the resource from the API server (forgetting it when gone) and reconcile it with ``verify``: every child
    and pod read from the API server too, never taken from the cache."""
    cached = cache.inference_service_uids(namespace, name)
    try:
        body = state.kube.get_inference_service(namespace, name)
    except ApiError as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    live = {str(body["metadata"].get("uid"))} if body is not None else set()
    cache.forget(cached - live)
    if body is not None:
        reconcile(namespace, name, state, cache, snapshot(body), verify=True)
    else:
        state.forget(namespace, name)


def service_exists(resource: ResourceState, cache: Cache, namespace: str, name: str) -> bool:
    """The ClusterIP Service the endpoint names exists: watched, or applied by this process."""
    return cache.child("Service", namespace, name, name) is not None or ("Service", name) in resource.applied


def cached_observation(resource: ResourceState, cache: Cache, body: Mapping[str, Any],
                       error: Problem | None) -> Observation:
    """What the cache shows of the resource's children, with the last applied generation kept: for status
    written without applying anything (a child changed, or the spec could not be applied)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous = last_status(resource, body)
    deployment, pods = stable_view(cache, namespace, name, previous.get("rollout"))
    return Observation(name, namespace, previous.get("observedGeneration"), deployment, pods, error=error,
                       previous=previous, now=now(), service_exists=service_exists(resource, cache, namespace, name),
                       rollout=previous.get("rollout"))


def last_status(resource: ResourceState, body: Mapping[str, Any]) -> dict[str, Any]:
    """The status the resource shows: the one this process last wrote, else the one read with the body."""
    return dict(resource.status or body.get("status") or {})


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _report_problem(kube: Kube, resource: ResourceState, body: dict[str, Any], cache: Cache, problem: Problem) -> None:
    """The spec could not be applied: say why in status and an Event; keep the last applied generation."""
    resource.problem = problem
    metrics.reconciliations.labels(result="error").inc()
    kopf.warn(body, reason=problem.reason, message=problem.message)
    write_status(kube, resource, body, cached_observation(resource, cache, body, problem))


def _reconcile(body: dict[str, Any], state: OperatorState, resource: ResourceState, cache: Cache,
               verify: bool = False) -> None:
    kube, defaults = state.kube, state.defaults
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    validate_name(name)
    spec = parse_spec(body.get("spec") or {})
    owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
    previous = last_status(resource, body)
    if spec.rollout is not None or previous.get("rollout"):
        plan = plan_rollout(owner, spec, body, previous.get("rollout"), defaults, cache, state.rollout_settings)
        children, rollout_status = plan.children, plan.status
        for event in plan.events:
            (kopf.warn if event.warning else kopf.info)(body, reason=event.reason, message=event.message)
    else:
        children, rollout_status = render_children(owner, spec, defaults), None
    fresh: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, name) -> the child as the API server returned it
    done: dict[str, list[str]] = defaultdict(list)  # action -> "Kind name"
    for desired in children.present:
        kind, child = desired["kind"], desired["metadata"]["name"]
        earlier = cache.child_uids(kind, namespace, name, child)  # read first: each existed before the read below
        if verify:
            resource.created.pop((kind, child), None)
        try:
            applied = apply(kube, desired, cached=UNKNOWN if verify else
                            _cached_child(resource, cache, kind, namespace, name, child))
        except ApiError as exc:
            if exc.status in REJECTED_STATUSES or exc.kind_not_served:
                raise ChildRejected(kind, child, exc) from exc
            raise
        if verify:
            cache.forget(earlier - {_uid(applied.object)})
        resource.applied[(kind, child)] = desired
        fresh[(kind, child)] = applied.object
        if applied.action == "created":
            resource.created[(kind, child)] = (time.monotonic(), applied.object)
        if applied.action != "unchanged":
            done[applied.action].append(f"{kind} {child}")
    for ref in [*children.absent, *_unwanted(children, cache, namespace, name)]:
        resource.applied.pop((ref.kind, ref.name), None)
        earlier = cache.child_uids(ref.kind, namespace, name, ref.name)
        if verify and earlier:  # the cache says it exists: does it?
            cache.forget(earlier - {_uid(kube.get(ref.api_version, ref.kind, namespace, ref.name) or {})})
        if cache.child(ref.kind, namespace, name, ref.name) is not None and remove(kube, ref, namespace, owner.uid):
            done["deleted"].append(f"{ref.kind} {ref.name}")
    for action, objects in done.items():  # one Event per kind of action, not one per child
        why = ": no longer wanted by the spec" if action == "deleted" else ""
        kopf.info(body, reason=action.capitalize(), message=f"{action} {', '.join(objects)}{why}")
    listed = _live_pods(kube, cache, namespace, name) if verify else None
    deployment, pods = stable_view(cache, namespace, name, rollout_status, fresh, listed)
    write_status(kube, resource, body, Observation(name, namespace, meta.get("generation"), deployment, pods,
                                                   previous=previous, now=now(),
                                                   runtime=defaults.runtime(spec).status(), rollout=rollout_status))


def _unwanted(children: Children, cache: Cache, namespace: str, owner: str) -> list[ChildRef]:
    """The Deployments and Services this InferenceService owns that nothing renders any more: a rolled-back or
    superseded revision's, a retired stable one's, or a rollout's Services once it is over."""
    wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in children.present} | set(children.kept)
    wanted |= {(ref.kind, ref.name) for ref in children.absent}
    found = []
    for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service")):
        for child in cache.children(kind, namespace, owner):
            child_name = child["metadata"]["name"]
            if (kind, child_name) not in wanted:
                found.append(ChildRef(api_version, kind, child_name))
    return found


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _live_pods(kube: Kube, cache: Cache, namespace: str, name: str) -> list[dict[str, Any]]:
    """The runtime pods of an InferenceService as the API server lists them; cached pods it no longer has are
    forgotten (those cached before the list started: a list without resourceVersion shows every one still there)."""
    earlier = cache.pod_uids(namespace, name)
    listed = kube.list("v1", "Pod", namespace, {**CHILDREN, OWNER_LABEL: name})
    cache.forget(earlier - {_uid(pod) for pod in listed})
    return [pod_snapshot(pod) for pod in listed]


def _cached_child(resource: ResourceState, cache: Cache, kind: str, namespace: str, owner: str,
                  name: str) -> dict[str, Any] | None:
    """The child as last watched; or as this process just created it, when its watch event is not cached yet.

    Without the second, a reconciliation triggered by the echo of one child's creation would create its siblings,
    created a moment ago, a second time (a 409 and a read each).
    """
    cached = cache.child(kind, namespace, owner, name)
    if cached is not None:
        resource.created.pop((kind, name), None)
        return cached
    created = resource.created.get((kind, name))
    if created is not None and time.monotonic() - created[0] < CREATED_TRUST:
        return dict(created[1])
    return None


def write_status(kube: Kube, resource: ResourceState, body: Mapping[str, Any], observation: Observation) -> None:
    """Patch the status when it differs from what the resource shows; post an Event when the phase moves."""
    previous = last_status(resource, body)
    status = compute_status(observation)
    metrics.phase_book.set(observation.namespace, observation.name, status["phase"])
    if not status_changed(previous, status):
        return
    kube.patch_status(observation.namespace, observation.name, status)
    resource.status = present(status)
    if previous.get("phase") != status["phase"] and status["phase"] != "Pending":  # Pending: the Created event
        condition = status["conditions"][0]
        message = f"{status['phase']}: {condition['message']}"
        if status["phase"] in ("Degraded", "Failed"):
            kopf.warn(dict(body), reason=condition["reason"], message=message)
        else:
            kopf.info(dict(body), reason=status["phase"], message=message)
