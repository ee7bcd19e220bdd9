"""Thin kopf handlers: when to reconcile; what a reconciliation does is reconcile.py's (spec, render, children,
kube and status below it), and what the process remembers is state.py's (one object in kopf's memo).

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
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from kubeinfer.operator import metrics, peering
from kubeinfer.operator.cache import Cache, owner_of, pod_snapshot, snapshot
from kubeinfer.operator.children import merge_patch_for
from kubeinfer.operator.kube import Kube
from kubeinfer.operator.reconcile import (
    CHILDREN,
    RETRY_DELAY,
    reconcile,
    refresh_status,
    verify_against_server,
)
from kubeinfer.operator.render import MANAGER, OWNER_LABEL, RuntimeDefaults
from kubeinfer.operator.spec import (
    DEFAULT_RUNTIME_CPU_IMAGE,
    DEFAULT_RUNTIME_IMAGE,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    parse_resources,
)
from kubeinfer.operator.state import OperatorState

# A rollout sends a burst of Deployment and pod events per resource; status is recomputed once per burst, this long
# after its first event (fewer status writes and Events while 100 resources roll out at once).
STATUS_DELAY = 0.5
# A watch that lists again (after a peering pause, or a 410) lists every object within about this long: the check of
# every InferenceService against the API server starts this long after the first object listed again.
RESYNC_DELAY = 1.0
ROLLOUT_TICK = 5.0  # seconds between reconciliations of an InferenceService while a rollout moves on

log = logging.getLogger(__name__)


def defaults_from_environment() -> RuntimeDefaults:
    """Under a bare `kopf run` (no state from `kubeinfer operator`): the KUBEINFER_OPERATOR_* variables."""
    resources = os.environ.get("KUBEINFER_OPERATOR_DEFAULT_RESOURCES")
    environ = os.environ.get
    gpu_image = (environ("KUBEINFER_OPERATOR_RUNTIME_GPU_IMAGE") or environ("KUBEINFER_OPERATOR_RUNTIME_IMAGE")
                 or DEFAULT_RUNTIME_IMAGE)
    cpu_image = environ("KUBEINFER_OPERATOR_RUNTIME_CPU_IMAGE") or DEFAULT_RUNTIME_CPU_IMAGE
    return RuntimeDefaults(image=gpu_image, cpu_image=cpu_image,
                           **({"resources": parse_resources(resources)} if resources else {}))


def operator_state(memo: kopf.Memo) -> OperatorState:
    """The process's state, which `kubeinfer operator` puts in kopf's memo (``configure`` makes one otherwise)."""
    state: OperatorState = memo["state"]
    return state


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's bookkeeping in memory (no annotation writes), post only the operator's own Events."""
    if not isinstance(memo.get("state"), OperatorState):  # a bare `kopf run`: configured by the environment
        memo["state"] = OperatorState(defaults_from_environment(), Kube.from_environment())
    state = operator_state(memo)
    settings.persistence.progress_storage, settings.persistence.diffbase_storage = state.bookkeeping
    settings.posting.reporting_component = MANAGER
    settings.posting.level = logging.INFO
    # kopf's own log lines ("Handler ... succeeded", "Creation is processed") are not worth an Event each.
    settings.posting.loggers = False
    # How long a killed peer counts as alive: how long a standby waits before it takes over (kopf's default 60 s).
    settings.peering.lifetime = int(state.peering_lifetime or peering.lifetime_from_environment())
    # Sync handlers run in kopf's thread pool: enough threads that a burst of new resources is applied in parallel
    # (each reconciliation mostly waits on the API server).
    settings.execution.max_workers = 16
    state.executor = settings.execution.executor
    metrics.tracked.set_function(lambda: len(state))


@kopf.on.startup()
async def break_priority_ties(memo: kopf.Memo, **_: Any) -> None:
    """With peering: watch for a live replica of this one's priority while running (operator/peering.py)."""
    state = operator_state(memo)
    if state.tie_break is not None and state.stop is not None:
        state.tie_break_task = asyncio.create_task(state.tie_break.watch(state.stop), name="peering tie break")


@kopf.on.cleanup()
async def stop_breaking_ties(memo: kopf.Memo, **_: Any) -> None:
    task = operator_state(memo).tie_break_task
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


# KEDA's ScaledObject (autoscaling.engine keda) and the Gateway API routes (spec.rollout.gateway) are optional:
# without their CRDs kopf watches nothing for them. ConfigMaps (a rollout's traffic table) are watched by the
# operator's label only, not every ConfigMap of the cluster.
for _group, _version, _plural in (("apps", "v1", "deployments"), ("", "v1", "services"),
                                  ("autoscaling", "v2", "horizontalpodautoscalers"),
                                  ("policy", "v1", "poddisruptionbudgets"), ("keda.sh", "v1alpha1", "scaledobjects"),
                                  ("gateway.networking.k8s.io", "v1", "grpcroutes"),
                                  ("gateway.networking.k8s.io", "v1", "httproutes")):
    _children_index(_group, _version, _plural)


@kopf.index("v1", "configmaps", labels=CHILDREN, when=_owned)
def cached_configmaps(namespace: str, body: kopf.Body, **_: Any) -> Any:
    owner = owner_of(body)
    return None if owner is None else {(namespace, owner): snapshot(body) | {"data": dict(body.get("data") or {})}}


@kopf.index(GROUP, VERSION, PLURAL)
def cached_inferenceservices(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): snapshot(body)}


def _cache(state: OperatorState, kwargs: Mapping[str, Any]) -> Cache:
    return Cache({key: value for key, value in kwargs.items() if key.startswith(("cached_", "runtime_pods"))},
                 state.gone)


# -- triggers -----------------------------------------------------------------------------------------------------
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def inference_service(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """The resource appeared, changed or was found at start-up: bring its children in line with its spec."""
    state = operator_state(memo)
    reconcile(body["metadata"]["namespace"], body["metadata"]["name"], state, _cache(state, kwargs), snapshot(body))


def _rolling_out(status: Mapping[str, Any], **_: Any) -> bool:
    rollout = status.get("rollout") or {}
    return bool(rollout.get("candidateRevision") or rollout.get("retiring"))


@kopf.timer(GROUP, VERSION, PLURAL, interval=ROLLOUT_TICK, when=_rolling_out)
def rollout_tick(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A rollout in progress moves on with time (its step's analysis is due, or its table reached the replicas),
    not only with events: reconcile it every ROLLOUT_TICK seconds until it is over."""
    state = operator_state(memo)
    reconcile(body["metadata"]["namespace"], body["metadata"]["name"], state, _cache(state, kwargs), snapshot(body))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def inference_service_event(event: Mapping[str, Any], namespace: str, name: str, memo: kopf.Memo,
                                  **kwargs: Any) -> None:
    """Forget a deleted resource; notice a re-listing (async: every event of the resource passes here, most of them
    status echoes)."""
    state = operator_state(memo)
    if state.listings.relisted(KIND, event):
        _resync_soon(state, _cache(state, kwargs))
    if event.get("type") == "DELETED":
        uid = str(((event.get("object") or {}).get("metadata") or {}).get("uid", ""))
        state.forget(namespace, name, uid)
        metrics.phase_book.forget(namespace, name)


@kopf.on.event("apps", "v1", "deployments", when=_owned)
@kopf.on.event("v1", "services", when=_owned)
@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", when=_owned)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", when=_owned)
@kopf.on.event("keda.sh", "v1alpha1", "scaledobjects", when=_owned)
@kopf.on.event("gateway.networking.k8s.io", "v1", "grpcroutes", when=_owned)
@kopf.on.event("gateway.networking.k8s.io", "v1", "httproutes", when=_owned)
@kopf.on.event("v1", "configmaps", labels=CHILDREN, when=_owned)
async def child_event(event: Mapping[str, Any], body: kopf.Body, namespace: str, memo: kopf.Memo,
                      **kwargs: Any) -> None:
    """A child changed (a rollout progressed, or someone edited or deleted it): repair it, or refresh status.

    Async: the echo check runs on the event loop; only a repair goes to a handler thread.
    """
    state = operator_state(memo)
    owner = owner_of(body)
    kind, name = str(body.get("kind")), str((body.get("metadata") or {}).get("name"))
    if state.listings.relisted(kind, event):
        _resync_soon(state, _cache(state, kwargs))
    if owner is None or event.get("type") is None:  # None: a listing; resume handlers cover the first, a resync others
        return
    if event.get("type") == "DELETED":
        state.forget_created(namespace, owner, kind, name)
    applied = state.applied_child(namespace, owner, kind, name)
    if event.get("type") != "DELETED" and applied is not None and merge_patch_for(applied, body) is None:
        # Still what was applied: the echo of the operator's own write, or a status update.
        if kind == "Deployment":
            _refresh_soon(namespace, owner, state, _cache(state, kwargs))
        return
    await _in_thread(state, reconcile, namespace, owner, state, _cache(state, kwargs))


@kopf.on.event("v1", "pods", labels=CHILDREN)
async def pod_event(event: Mapping[str, Any], namespace: str, labels: Mapping[str, str], memo: kopf.Memo,
                    **kwargs: Any) -> None:
    """A runtime pod changed (started, got ready, crashed, was evicted): refresh the owner's status soon."""
    state = operator_state(memo)
    owner = labels.get(OWNER_LABEL)
    if state.listings.relisted("Pod", event):
        _resync_soon(state, _cache(state, kwargs))
    if owner and event.get("type") is not None:
        _refresh_soon(namespace, owner, state, _cache(state, kwargs))


def _in_thread(state: OperatorState, fn: Callable[..., None], *args: Any) -> asyncio.Future[None]:
    """Run ``fn`` in kopf's handler threads, with kopf's context (kopf.info and kopf.warn need it)."""
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(state.executor, context.run, fn, *args)


def _refresh_soon(namespace: str, name: str, state: OperatorState, cache: Cache, delay: float = STATUS_DELAY) -> None:
    """Refresh the status ``delay`` seconds from now, once for every event until then (on the event loop)."""
    resource = state.resource(namespace, name)
    if resource.refreshing:
        return
    resource.refreshing = True
    loop = asyncio.get_running_loop()

    def refresh() -> None:
        resource.refreshing = False  # an event from now on schedules another refresh
        try:
            refresh_status(namespace, name, state, cache)
        except kopf.TemporaryError as exc:
            log.warning("%s/%s: status not written (%s); retrying in %.0fs", namespace, name, exc, RETRY_DELAY)
            loop.call_soon_threadsafe(_refresh_soon, namespace, name, state, cache, RETRY_DELAY)
        except Exception:  # nobody awaits this refresh: say what went wrong here
            log.exception("%s/%s: status refresh failed", namespace, name)

    loop.call_later(delay, _in_thread, state, refresh)


def _resync_soon(state: OperatorState, cache: Cache, delay: float = RESYNC_DELAY) -> None:
    """A watch listed again, so events (deletions among them) may have been missed: check every InferenceService
    against the API server ``delay`` seconds from now, once for every re-listed object until then (event loop)."""
    if state.resync_due:
        return
    state.resync_due = True

    def resync() -> None:
        state.resync_due = False  # a re-listing from now on schedules another check
        for namespace, name in cache.inference_services():
            _verify_soon(namespace, name, state, cache, 0.0)

    asyncio.get_running_loop().call_later(delay, resync)


def _verify_soon(namespace: str, name: str, state: OperatorState, cache: Cache, delay: float) -> None:
    """Reconcile one InferenceService against the API server ``delay`` seconds from now; again while it fails."""
    resource = state.resource(namespace, name)
    if resource.verifying:
        return
    resource.verifying = True
    loop = asyncio.get_running_loop()

    def verify() -> None:
        resource.verifying = False
        try:
            verify_against_server(namespace, name, state, cache)
        except kopf.TemporaryError as exc:
            retry = float(exc.delay or RETRY_DELAY)
            log.warning("%s/%s: not checked against the API server (%s); retrying in %.0fs", namespace, name, exc,
                        retry)
            loop.call_soon_threadsafe(_verify_soon, namespace, name, state, cache, retry)
        except Exception:  # nobody awaits this check: say what went wrong here
            log.exception("%s/%s: check against the API server failed", namespace, name)

    loop.call_later(delay, _in_thread, state, verify)
