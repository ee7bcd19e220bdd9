"""Thin kopf handlers: they parse, render, apply and report; the work is done by spec, render, kube and status.

Level-triggered: every trigger (an InferenceService created, changed or found at start-up; one of its children
changed or deleted; one of its pods changed) runs the same idempotent reconciliation, under a per-resource lock.
No finalizer is added: children carry owner references, so the cluster's garbage collector deletes them with
their InferenceService, even while the operator is down.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf

from kubeinfer.operator import metrics
from kubeinfer.operator.kube import ApiError, ChildConflict, Kube
from kubeinfer.operator.render import MANAGED_BY_LABEL, MANAGER, OWNER_LABEL, Owner, RuntimeDefaults, render_children
from kubeinfer.operator.spec import (
    DEFAULT_RUNTIME_IMAGE,
    GROUP,
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
SLOW_RETRY_DELAY = 60.0  # after a failure that needs a person (name conflict, forbidden)

log = logging.getLogger(__name__)


def defaults_from_environment() -> RuntimeDefaults:
    """Under a bare `kopf run` (no memo from `kubeinfer operator`): the KUBEINFER_OPERATOR_* variables."""
    resources = os.environ.get("KUBEINFER_OPERATOR_DEFAULT_RESOURCES")
    return RuntimeDefaults(image=os.environ.get("KUBEINFER_OPERATOR_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE,
                           **({"resources": parse_resources(resources)} if resources else {}))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's bookkeeping in kubeinfer.io annotations (the status schema is strict), name the reporter."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubeinfer.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubeinfer.io", key="last-handled-configuration")
    settings.posting.reporting_component = MANAGER
    settings.posting.level = logging.INFO
    if not isinstance(memo.get("defaults"), RuntimeDefaults):
        memo["defaults"] = defaults_from_environment()
    if memo.get("kube") is None:
        memo["kube"] = Kube.from_environment()
    memo["locks"] = defaultdict(threading.Lock)


@kopf.index("v1", "pods", labels=CHILDREN)
def runtime_pods(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    """Pods by (namespace, InferenceService), trimmed to what status needs."""
    owner = labels.get(OWNER_LABEL)
    if not owner:
        return None
    status = body.get("status") or {}
    keep = ("phase", "reason", "message", "conditions", "containerStatuses", "initContainerStatuses")
    meta = body.get("metadata") or {}
    return {(namespace, owner): {
        "metadata": {"name": meta.get("name"), "deletionTimestamp": meta.get("deletionTimestamp")},
        "status": {key: status[key] for key in keep if key in status},
    }}


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def inference_service(namespace: str, name: str, memo: kopf.Memo, runtime_pods: kopf.Index, **_: Any) -> None:
    """The resource appeared, changed or was found at start-up: bring its children in line with its spec."""
    reconcile(namespace, name, memo, runtime_pods)


@kopf.on.event(GROUP, VERSION, PLURAL)
def inference_service_event(event: Mapping[str, Any], namespace: str, name: str, **_: Any) -> None:
    if event.get("type") == "DELETED":
        metrics.phase_book.forget(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels=CHILDREN)
@kopf.on.event("v1", "services", labels=CHILDREN)
@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILDREN)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILDREN)
def child_event(event: Mapping[str, Any], namespace: str, labels: Mapping[str, str], memo: kopf.Memo,
                runtime_pods: kopf.Index, **_: Any) -> None:
    """A child changed (a rollout progressed, or someone edited or deleted it): reconcile its owner."""
    owner = labels.get(OWNER_LABEL)
    if owner and event.get("type") is not None:  # None: the initial listing; resume handlers cover it
        reconcile(namespace, owner, memo, runtime_pods)


@kopf.on.event("v1", "pods", labels=CHILDREN)
def pod_event(event: Mapping[str, Any], namespace: str, labels: Mapping[str, str], memo: kopf.Memo,
              runtime_pods: kopf.Index, **_: Any) -> None:
    """A runtime pod changed (started, got ready, crashed, was evicted): refresh the owner's status."""
    owner = labels.get(OWNER_LABEL)
    if not owner or event.get("type") is None:
        return
    kube: Kube = memo["kube"]
    with memo["locks"][(namespace, owner)]:
        try:
            body = _current(kube, namespace, owner)
            if body is None:
                return
            deployment = kube.get("apps/v1", "Deployment", namespace, owner)
            previous = body.get("status") or {}
            _write_status(kube, body, Observation(
                owner, namespace, previous.get("observedGeneration"), deployment,
                _pods(runtime_pods, namespace, owner), previous=previous, now=_now()))
        except ApiError as exc:
            if exc.status == 404:
                return  # the resource went away meanwhile
            raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


def _current(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """The InferenceService as it is now, or None when it is gone or going (then nothing is re-created)."""
    body = kube.get_inference_service(namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    return body


def _pods(index: kopf.Index, namespace: str, name: str) -> list[Mapping[str, Any]]:
    return list(index.get((namespace, name), []))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(namespace: str, name: str, memo: kopf.Memo, pods: kopf.Index) -> None:
    """Read the resource, render, apply, report, one at a time per resource. kopf retries TemporaryError."""
    kube: Kube = memo["kube"]
    defaults: RuntimeDefaults = memo["defaults"]
    started = time.monotonic()
    with memo["locks"][(namespace, name)]:
        body: dict[str, Any] | None = None
        try:
            body = _current(kube, namespace, name)  # fresh: the event that got us here may be stale
            if body is None:
                return
            _reconcile(body, kube, defaults, _pods(pods, namespace, name))
        except SpecError as exc:
            assert body is not None
            metrics.reconciliations.labels(result="error").inc()
            kopf.warn(body, reason="InvalidSpec", message=str(exc))
            _write_status(kube, body, Observation(name, namespace, body["metadata"].get("generation"), None,
                                                  error=Problem("InvalidSpec", str(exc)),
                                                  previous=body.get("status"), now=_now()))
        except ChildConflict as exc:
            assert body is not None
            metrics.reconciliations.labels(result="error").inc()
            kopf.warn(body, reason="ChildConflict", message=str(exc))
            _write_status(kube, body, Observation(name, namespace, body["metadata"].get("generation"), None,
                                                  error=Problem("ChildConflict", str(exc)),
                                                  previous=body.get("status"), now=_now()))
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
            metrics.reconciliations.labels(result="success").inc()
        finally:
            metrics.reconcile_duration.observe(time.monotonic() - started)


def _reconcile(body: dict[str, Any], kube: Kube, defaults: RuntimeDefaults, pods: list[Mapping[str, Any]]) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    validate_name(name)
    spec = parse_spec(body.get("spec") or {})
    owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
    children = render_children(owner, spec, defaults)
    deployment: dict[str, Any] | None = None
    for desired in children.present:
        applied = kube.apply(desired)
        if applied.action != "unchanged":
            kopf.info(body, reason=applied.action.capitalize(),
                      message=f"{applied.action} {desired['kind']} {desired['metadata']['name']}")
        if desired["kind"] == "Deployment":
            deployment = applied.object
    for ref in children.absent:
        if kube.remove(ref, namespace, owner.uid):
            kopf.info(body, reason="Deleted", message=f"deleted {ref.kind} {ref.name}: no longer wanted by the spec")
    _write_status(kube, body, Observation(name, namespace, meta.get("generation"), deployment, pods,
                                          previous=body.get("status"), now=_now()))


def _write_status(kube: Kube, body: Mapping[str, Any], observation: Observation) -> None:
    """Patch the status when it differs from what the resource shows; post an Event when the phase moves."""
    previous = body.get("status") or {}
    status = compute_status(observation)
    metrics.phase_book.set(observation.namespace, observation.name, status["phase"])
    if not status_changed(previous, status):
        return
    kube.patch_status(observation.namespace, observation.name, status)
    if previous.get("phase") != status["phase"]:
        condition = status["conditions"][0]
        message = f"{status['phase']}: {condition['message']}"
        if status["phase"] in ("Degraded", "Failed"):
            kopf.warn(dict(body), reason=condition["reason"], message=message)
        else:
            kopf.info(dict(body), reason=status["phase"], message=message)
