"""Thin kopf handlers: they parse, render, apply and report; the work is done by spec, render, kube and status.

Level-triggered: every trigger (an InferenceService created, changed or found at start-up; one of its children
changed or deleted; one of its pods changed) runs the same idempotent reconciliation, under a per-resource lock.
No finalizer is added: children carry owner references, so the cluster's garbage collector deletes them with
their InferenceService, even while the operator is down.

Children are watched by owner reference, and by label where owner references are gone: a child whose labels were
edited by hand is still seen (and its labels put back), and so is one whose owner references were removed (and they
are put back, so the garbage collector still deletes it with its InferenceService). What the watches saw is kept in
kopf indices (the operator's cache, as controller-runtime keeps one): a reconciliation compares the rendered
children with the cached ones and sends only the writes that change something, and an event whose object still holds
everything last applied (most often the echo of the operator's own write, or a rollout's status update) costs no
reconciliation, only a status refresh from the cache, and the refreshes a burst of pod and Deployment events asks
for are done once, STATUS_DELAY after its first event. A cache entry that is merely old is harmless: a write based
on one is idempotent, and the next watch event corrects it. One whose object was deleted while no watch ran (the
operator paused by peering, or a watch listing again after a 410) gets no such event: when a watch lists again,
every InferenceService is reconciled against the API server instead of the cache (its children and pods read, the
missing ones re-created, the status recomputed from them), and what it no longer has is dropped from the cache
(operator/cache.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from kubeinfer.operator import bookkeeping, metrics, peering
from kubeinfer.operator.cache import Cache, Listings, owner_of, pod_snapshot, snapshot
from kubeinfer.operator.kube import UNKNOWN, ApiError, ChildConflict, Kube, merge_patch_for
from kubeinfer.operator.render import MANAGED_BY_LABEL, MANAGER, OWNER_LABEL, Owner, RuntimeDefaults, render_children
from kubeinfer.operator.spec import (
    DEFAULT_RUNTIME_CPU_IMAGE,
    DEFAULT_RUNTIME_IMAGE,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    SpecError,
    parse_resources,
    parse_spec,
    validate_name,
)
from kubeinfer.operator.status import Observation, Problem, compute_status, status_changed

CHILDREN = {MANAGED_BY_LABEL: MANAGER}
RETRY_DELAY = 5.0  # seconds before kopf retries after a transient API failure
SLOW_RETRY_DELAY = 60.0  # after a failure that needs a person (a name conflict)
REFUSED_RETRY_DELAY = 15.0  # after a 403: permissions or quota are often granted within seconds
REJECTED_STATUSES = frozenset({400, 403, 422})  # the API server refused a child: retrying the same object won't help
# A rollout sends a burst of Deployment and pod events per resource; status is recomputed once per burst, this long
# after its first event (fewer status writes and Events while 100 resources roll out at once).
STATUS_DELAY = 0.5
# A watch that lists again (after a peering pause, or a 410) lists every object within about this long: the check of
# every InferenceService against the API server starts this long after the first object listed again.
RESYNC_DELAY = 1.0

log = logging.getLogger(__name__)


def defaults_from_environment() -> RuntimeDefaults:
    """Under a bare `kopf run` (no memo from `kubeinfer operator`): the KUBEINFER_OPERATOR_* variables."""
    resources = os.environ.get("KUBEINFER_OPERATOR_DEFAULT_RESOURCES")
    environ = os.environ.get
    gpu_image = (environ("KUBEINFER_OPERATOR_RUNTIME_GPU_IMAGE") or environ("KUBEINFER_OPERATOR_RUNTIME_IMAGE")
                 or DEFAULT_RUNTIME_IMAGE)
    cpu_image = environ("KUBEINFER_OPERATOR_RUNTIME_CPU_IMAGE") or DEFAULT_RUNTIME_CPU_IMAGE
    return RuntimeDefaults(image=gpu_image, cpu_image=cpu_image,
                           **({"resources": parse_resources(resources)} if resources else {}))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's bookkeeping in memory (no annotation writes), post only the operator's own Events."""
    memo["bookkeeping"] = (bookkeeping.MemoryProgressStorage(), bookkeeping.MemoryDiffBaseStorage({KIND}))
    settings.persistence.progress_storage, settings.persistence.diffbase_storage = memo["bookkeeping"]
    settings.posting.reporting_component = MANAGER
    settings.posting.level = logging.INFO
    # kopf's own log lines ("Handler ... succeeded", "Creation is processed") are not worth an Event each.
    settings.posting.loggers = False
    # How long a killed peer counts as alive: how long a standby waits before it takes over (kopf's default 60 s).
    settings.peering.lifetime = int(memo.get("peering_lifetime") or peering.lifetime_from_environment())
    if not isinstance(memo.get("defaults"), RuntimeDefaults):
        memo["defaults"] = defaults_from_environment()
    if memo.get("kube") is None:
        memo["kube"] = Kube.from_environment()
    memo["locks"] = defaultdict(threading.Lock)
    memo["applied"] = {}  # (kind, namespace, name) -> the child as last applied
    memo["created"] = {}  # (kind, namespace, name) -> (when, the child as created) until its watch event is cached
    memo["problems"] = {}  # (namespace, name) -> the Problem that stopped the last reconciliation
    memo["statuses"] = {}  # (namespace, name) -> the status last written (newer than any watched copy)
    # Sync handlers run in kopf's thread pool: enough threads that a burst of new resources is applied in parallel
    # (each reconciliation mostly waits on the API server).
    settings.execution.max_workers = 16
    memo["executor"] = settings.execution.executor
    memo["refreshing"] = set()  # (namespace, name) whose status refresh is scheduled
    memo["gone"] = set()  # uids of cached objects the API server no longer has (operator/cache.py)
    memo["listings"] = Listings()  # tells a watch's re-listing from its first listing
    memo["resync_due"] = False  # a check of every InferenceService against the API server is scheduled
    memo["verifying"] = set()  # (namespace, name) whose check against the API server is scheduled


@kopf.on.startup()
async def break_priority_ties(memo: kopf.Memo, **_: Any) -> None:
    """With peering: watch for a live replica of this one's priority while running (operator/peering.py)."""
    tie = memo.get("tie_break")
    if tie is not None:
        memo["tie_break_task"] = asyncio.create_task(tie.watch(memo["stop"]), name="peering tie break")


@kopf.on.cleanup()
async def stop_breaking_ties(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("tie_break_task")
    if task is not None:
        task.cancel()


def _owned(body: kopf.Body, **_: Any) -> bool:
    return owner_of(body) is not None


# -- the cache: kopf indices fed by the watches (operator/cache.py reads them) ------------------------------------
@kopf.index("v1", "pods", labels=CHILDREN)
def runtime_pods(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    """Pods by (namespace, InferenceService), trimmed to what status needs."""
    owner = labels.get(OWNER_LABEL)
    return {(namespace, owner): pod_snapshot(body)} if owner else None


def _children_index(group: str, version: str, plural: str) -> None:
    """Register an index of one kind of child by (namespace, InferenceService)."""

    def index(namespace: str, body: kopf.Body, **_: Any) -> Any:
        owner = owner_of(body)
        return None if owner is None else {(namespace, owner): snapshot(body)}

    resource = (group, version, plural) if group else (version, plural)
    kopf.index(*resource, when=_owned, id=f"cached_{plural}")(index)


# KEDA's ScaledObject (autoscaling.engine keda) is optional: without its CRD kopf watches nothing for it.
for _group, _version, _plural in (("apps", "v1", "deployments"), ("", "v1", "services"),
                                  ("autoscaling", "v2", "horizontalpodautoscalers"),
                                  ("policy", "v1", "poddisruptionbudgets"), ("keda.sh", "v1alpha1", "scaledobjects")):
    _children_index(_group, _version, _plural)


@kopf.index(GROUP, VERSION, PLURAL)
def cached_inferenceservices(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): snapshot(body)}


def _service_exists(memo: kopf.Memo, cache: Cache, namespace: str, name: str) -> bool:
    """The ClusterIP Service the endpoint names exists: watched, or applied by this process."""
    return (cache.child("Service", namespace, name, name) is not None
            or ("Service", namespace, name) in memo["applied"])


def _cache(memo: kopf.Memo, kwargs: Mapping[str, Any]) -> Cache:
    return Cache({key: value for key, value in kwargs.items() if key.startswith(("cached_", "runtime_pods"))},
                 memo["gone"])


# -- triggers -----------------------------------------------------------------------------------------------------
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def inference_service(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """The resource appeared, changed or was found at start-up: bring its children in line with its spec."""
    reconcile(body["metadata"]["namespace"], body["metadata"]["name"], memo, _cache(memo, kwargs), snapshot(body))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def inference_service_event(event: Mapping[str, Any], namespace: str, name: str, memo: kopf.Memo,
                                  **kwargs: Any) -> None:
    """Forget a deleted resource; notice a re-listing (async: every event of the resource passes here, most of them
    status echoes)."""
    if memo["listings"].relisted(KIND, event):
        _resync_soon(memo, _cache(memo, kwargs))
    if event.get("type") == "DELETED":
        uid = str(((event.get("object") or {}).get("metadata") or {}).get("uid", ""))
        for storage in memo["bookkeeping"]:
            storage.forget(uid)
        metrics.phase_book.forget(namespace, name)
        memo["problems"].pop((namespace, name), None)
        memo["statuses"].pop((namespace, name), None)
        for child in [key for key in memo["applied"] if key[1] == namespace and key[2] in (name, f"{name}-pods")]:
            memo["applied"].pop(child, None)
            memo["created"].pop(child, None)


@kopf.on.event("apps", "v1", "deployments", when=_owned)
@kopf.on.event("v1", "services", when=_owned)
@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", when=_owned)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", when=_owned)
@kopf.on.event("keda.sh", "v1alpha1", "scaledobjects", when=_owned)
async def child_event(event: Mapping[str, Any], body: kopf.Body, namespace: str, memo: kopf.Memo,
                      **kwargs: Any) -> None:
    """A child changed (a rollout progressed, or someone edited or deleted it): repair it, or refresh status.

    Async: the echo check runs on the event loop; only a repair goes to a handler thread.
    """
    owner = owner_of(body)
    kind, name = body.get("kind"), (body.get("metadata") or {}).get("name")
    if memo["listings"].relisted(str(kind), event):
        _resync_soon(memo, _cache(memo, kwargs))
    if owner is None or event.get("type") is None:  # None: a listing; resume handlers cover the first, a resync others
        return
    if event.get("type") == "DELETED":
        memo["created"].pop((kind, namespace, name), None)
    applied = memo["applied"].get((kind, namespace, name))
    if event.get("type") != "DELETED" and applied is not None and merge_patch_for(applied, body) is None:
        # Still what was applied: the echo of the operator's own write, or a status update.
        if kind == "Deployment":
            _refresh_soon(namespace, owner, memo, _cache(memo, kwargs))
        return
    await _in_thread(memo, reconcile, namespace, owner, memo, _cache(memo, kwargs))


@kopf.on.event("v1", "pods", labels=CHILDREN)
async def pod_event(event: Mapping[str, Any], namespace: str, labels: Mapping[str, str], memo: kopf.Memo,
                    **kwargs: Any) -> None:
    """A runtime pod changed (started, got ready, crashed, was evicted): refresh the owner's status soon."""
    owner = labels.get(OWNER_LABEL)
    if memo["listings"].relisted("Pod", event):
        _resync_soon(memo, _cache(memo, kwargs))
    if owner and event.get("type") is not None:
        _refresh_soon(namespace, owner, memo, _cache(memo, kwargs))


def _in_thread(memo: kopf.Memo, fn: Callable[..., None], *args: Any) -> asyncio.Future[None]:
    """Run ``fn`` in kopf's handler threads, with kopf's context (kopf.info and kopf.warn need it)."""
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(memo["executor"], context.run, fn, *args)


def _refresh_soon(namespace: str, name: str, memo: kopf.Memo, cache: Cache, delay: float = STATUS_DELAY) -> None:
    """Refresh the status ``delay`` seconds from now, once for every event until then (on the event loop)."""
    key = (namespace, name)
    if key in memo["refreshing"]:
        return
    memo["refreshing"].add(key)
    loop = asyncio.get_running_loop()

    def refresh() -> None:
        memo["refreshing"].discard(key)  # an event from now on schedules another refresh
        try:
            refresh_status(namespace, name, memo, cache)
        except kopf.TemporaryError as exc:
            log.warning("%s/%s: status not written (%s); retrying in %.0fs", namespace, name, exc, RETRY_DELAY)
            loop.call_soon_threadsafe(_refresh_soon, namespace, name, memo, cache, RETRY_DELAY)
        except Exception:  # nobody awaits this refresh: say what went wrong here
            log.exception("%s/%s: status refresh failed", namespace, name)

    loop.call_later(delay, _in_thread, memo, refresh)


def refresh_status(namespace: str, name: str, memo: kopf.Memo, cache: Cache) -> None:
    """Recompute status from the cached Deployment and pods, keeping the last applied generation. No reads."""
    kube: Kube = memo["kube"]
    with memo["locks"][(namespace, name)]:
        body = cache.inference_service(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        problem = memo["problems"].get((namespace, name))
        try:
            _write_status(kube, memo, body, _cached_observation(memo, cache, body, problem))
        except ApiError as exc:
            if exc.status == 404:
                return  # the resource went away meanwhile
            raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


def _resync_soon(memo: kopf.Memo, cache: Cache, delay: float = RESYNC_DELAY) -> None:
    """A watch listed again, so events (deletions among them) may have been missed: check every InferenceService
    against the API server ``delay`` seconds from now, once for every re-listed object until then (event loop)."""
    if memo["resync_due"]:
        return
    memo["resync_due"] = True

    def resync() -> None:
        memo["resync_due"] = False  # a re-listing from now on schedules another check
        for namespace, name in cache.inference_services():
            _verify_soon(namespace, name, memo, cache, 0.0)

    asyncio.get_running_loop().call_later(delay, resync)


def _verify_soon(namespace: str, name: str, memo: kopf.Memo, cache: Cache, delay: float) -> None:
    """Reconcile one InferenceService against the API server ``delay`` seconds from now; again while it fails."""
    key = (namespace, name)
    if key in memo["verifying"]:
        return
    memo["verifying"].add(key)
    loop = asyncio.get_running_loop()

    def verify() -> None:
        memo["verifying"].discard(key)
        try:
            verify_against_server(namespace, name, memo, cache)
        except kopf.TemporaryError as exc:
            retry = float(exc.delay or RETRY_DELAY)
            log.warning("%s/%s: not checked against the API server (%s); retrying in %.0fs", namespace, name, exc,
                        retry)
            loop.call_soon_threadsafe(_verify_soon, namespace, name, memo, cache, retry)
        except Exception:  # nobody awaits this check: say what went wrong here
            log.exception("%s/%s: check against the API server failed", namespace, name)

    loop.call_later(delay, _in_thread, memo, verify)


def verify_against_server(namespace: str, name: str, memo: kopf.Memo, cache: Cache) -> None:
    """Read the resource from the API server (forgetting it when gone) and reconcile it with ``verify``: every child
    and pod read from the API server too, never taken from the cache."""
    kube: Kube = memo["kube"]
    cached = cache.inference_service_uids(namespace, name)
    try:
        body = kube.get_inference_service(namespace, name)
    except ApiError as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    live = {str(body["metadata"].get("uid"))} if body is not None else set()
    cache.forget(cached - live)
    if body is not None:
        reconcile(namespace, name, memo, cache, snapshot(body), verify=True)


def _cached_observation(memo: kopf.Memo, cache: Cache, body: Mapping[str, Any],
                        error: Problem | None) -> Observation:
    """What the cache shows of the resource's children, with the last applied generation kept: for status
    written without applying anything (a child changed, or the spec could not be applied)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous = _last_status(memo, body)
    return Observation(name, namespace, previous.get("observedGeneration"), cache.deployment(namespace, name),
                       cache.pods(namespace, name), error=error, previous=previous, now=_now(),
                       service_exists=_service_exists(memo, cache, namespace, name))


def _last_status(memo: kopf.Memo, body: Mapping[str, Any]) -> dict[str, Any]:
    """The status the resource shows: the one this process last wrote, else the one read with the body."""
    meta = body["metadata"]
    return dict(memo["statuses"].get((meta["namespace"], meta["name"])) or body.get("status") or {})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- reconciliation -----------------------------------------------------------------------------------------------
class ChildRejected(Exception):
    """The API server refused a rendered child (validation, admission, quota, RBAC, or a kind it does not serve)."""

    def __init__(self, kind: str, name: str, error: ApiError) -> None:
        if error.kind_not_served:
            super().__init__(f"the API server does not serve {kind} (is its CRD installed?); {name} not created: "
                             f"{error}")
        else:
            super().__init__(f"the API server refused {kind} {name}: {error}")
        self.kind, self.name, self.error = kind, name, error


def reconcile(namespace: str, name: str, memo: kopf.Memo, cache: Cache, body: dict[str, Any] | None = None,
              verify: bool = False) -> None:
    """Render, apply, report, one at a time per resource. kopf retries TemporaryError.

    ``body`` is the resource as kopf just handed it over; a child's event passes none, and the resource is read.
    With ``verify`` (after a re-listing) nothing is taken from the cache: children and pods are read from the API
    server, and cache entries of objects it no longer has are forgotten.
    """
    kube: Kube = memo["kube"]
    defaults: RuntimeDefaults = memo["defaults"]
    started = time.monotonic()
    key = (namespace, name)
    with memo["locks"][key]:
        try:
            if body is None:
                body = kube.get_inference_service(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return  # gone or going: nothing is re-created
            if verify:  # another replica may have written status since this one did: the body's status counts
                memo["statuses"].pop(key, None)
            _reconcile(body, kube, memo, defaults, cache, verify)
        except SpecError as exc:
            assert body is not None
            _report_problem(kube, memo, body, cache, Problem("InvalidSpec", str(exc)))
        except ChildConflict as exc:
            assert body is not None
            _report_problem(kube, memo, body, cache, Problem("ChildConflict", str(exc)))
            raise kopf.TemporaryError(str(exc), delay=SLOW_RETRY_DELAY) from exc
        except ChildRejected as exc:
            assert body is not None
            if exc.error.namespace_terminating:
                log.info("%s/%s: its namespace is being deleted, and it with it", namespace, name)
                return
            _report_problem(kube, memo, body, cache, Problem("ChildRejected", str(exc)))
            if exc.error.status == 403:  # permissions or quota may be granted later; a 422 needs a new spec
                raise kopf.TemporaryError(str(exc), delay=REFUSED_RETRY_DELAY) from exc
            if exc.error.kind_not_served:  # its CRD may be installed later
                raise kopf.TemporaryError(str(exc), delay=SLOW_RETRY_DELAY) from exc
        except ApiError as exc:
            if exc.status == 404 and kube.get_inference_service(namespace, name) is None:
                return  # deleted while being reconciled: nothing left to do
            metrics.reconciliations.labels(result="retry").inc()
            if body is not None:
                kopf.warn(body, reason="ApiError", message=str(exc))
            delay = RETRY_DELAY if exc.transient or exc.status == 409 else SLOW_RETRY_DELAY
            raise kopf.TemporaryError(str(exc), delay=delay) from exc
        else:
            memo["problems"].pop(key, None)
            metrics.reconciliations.labels(result="success").inc()
        finally:
            metrics.reconcile_duration.observe(time.monotonic() - started)


def _report_problem(kube: Kube, memo: kopf.Memo, body: dict[str, Any], cache: Cache, problem: Problem) -> None:
    """The spec could not be applied: say why in status and an Event; keep the last applied generation."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    memo["problems"][(namespace, name)] = problem
    metrics.reconciliations.labels(result="error").inc()
    kopf.warn(body, reason=problem.reason, message=problem.message)
    _write_status(kube, memo, body, _cached_observation(memo, cache, body, problem))


def _reconcile(body: dict[str, Any], kube: Kube, memo: kopf.Memo, defaults: RuntimeDefaults, cache: Cache,
               verify: bool = False) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    validate_name(name)
    spec = parse_spec(body.get("spec") or {})
    owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
    children = render_children(owner, spec, defaults)
    applied_children: dict[tuple[str, str, str], dict[str, Any]] = memo["applied"]
    deployment: dict[str, Any] | None = None
    done: dict[str, list[str]] = defaultdict(list)  # action -> "Kind name"
    for desired in children.present:
        kind, child = desired["kind"], desired["metadata"]["name"]
        earlier = cache.child_uids(kind, namespace, name, child)  # read first: each existed before the read below
        if verify:
            memo["created"].pop((kind, namespace, child), None)
        try:
            applied = kube.apply(desired, cached=UNKNOWN if verify else
                                 _cached_child(memo, cache, kind, namespace, name, child))
        except ApiError as exc:
            if exc.status in REJECTED_STATUSES or exc.kind_not_served:
                raise ChildRejected(kind, child, exc) from exc
            raise
        if verify:
            cache.forget(earlier - {_uid(applied.object)})
        applied_children[(kind, namespace, child)] = desired
        if applied.action == "created":
            memo["created"][(kind, namespace, child)] = (time.monotonic(), applied.object)
        if applied.action != "unchanged":
            done[applied.action].append(f"{kind} {child}")
        if kind == "Deployment":
            deployment = applied.object
    for ref in children.absent:
        applied_children.pop((ref.kind, namespace, ref.name), None)
        earlier = cache.child_uids(ref.kind, namespace, name, ref.name)
        if verify and earlier:  # the cache says it exists: does it?
            cache.forget(earlier - {_uid(kube.get(ref.api_version, ref.kind, namespace, ref.name) or {})})
        if cache.child(ref.kind, namespace, name, ref.name) is not None and kube.remove(ref, namespace, owner.uid):
            done["deleted"].append(f"{ref.kind} {ref.name}")
    for action, objects in done.items():  # one Event per kind of action, not one per child
        why = ": no longer wanted by the spec" if action == "deleted" else ""
        kopf.info(body, reason=action.capitalize(), message=f"{action} {', '.join(objects)}{why}")
    pods = _live_pods(kube, cache, namespace, name) if verify else cache.pods(namespace, name)
    _write_status(kube, memo, body, Observation(name, namespace, meta.get("generation"), deployment, pods,
                                                previous=_last_status(memo, body), now=_now(),
                                                runtime=defaults.runtime(spec).status()))


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _live_pods(kube: Kube, cache: Cache, namespace: str, name: str) -> list[dict[str, Any]]:
    """The runtime pods of an InferenceService as the API server lists them; cached pods it no longer has are
    forgotten (those cached before the list started: a list without resourceVersion shows every one still there)."""
    earlier = cache.pod_uids(namespace, name)
    listed = kube.list("v1", "Pod", namespace, {**CHILDREN, OWNER_LABEL: name})
    cache.forget(earlier - {_uid(pod) for pod in listed})
    return [pod_snapshot(pod) for pod in listed]


CREATED_TRUST = 30.0  # seconds a child created by this process counts as existing while its watch event is due


def _cached_child(memo: kopf.Memo, cache: Cache, kind: str, namespace: str, owner: str,
                  name: str) -> dict[str, Any] | None:
    """The child as last watched; or as this process just created it, when its watch event is not cached yet.

    Without the second, a reconciliation triggered by the echo of one child's creation would create its siblings,
    created a moment ago, a second time (a 409 and a read each).
    """
    key = (kind, namespace, name)
    cached = cache.child(kind, namespace, owner, name)
    if cached is not None:
        memo["created"].pop(key, None)
        return cached
    created = memo["created"].get(key)
    if created is not None and time.monotonic() - created[0] < CREATED_TRUST:
        return dict(created[1])
    return None


def _write_status(kube: Kube, memo: kopf.Memo, body: Mapping[str, Any], observation: Observation) -> None:
    """Patch the status when it differs from what the resource shows; post an Event when the phase moves."""
    previous = _last_status(memo, body)
    status = compute_status(observation)
    metrics.phase_book.set(observation.namespace, observation.name, status["phase"])
    if not status_changed(previous, status):
        return
    kube.patch_status(observation.namespace, observation.name, status)
    memo["statuses"][(observation.namespace, observation.name)] = {k: v for k, v in status.items() if v is not None}
    if previous.get("phase") != status["phase"] and status["phase"] != "Pending":  # Pending: the Created event
        condition = status["conditions"][0]
        message = f"{status['phase']}: {condition['message']}"
        if status["phase"] in ("Degraded", "Failed"):
            kopf.warn(dict(body), reason=condition["reason"], message=message)
        else:
            kopf.info(dict(body), reason=status["phase"], message=message)
