"""The operator's cache: what its watches last saw (kopf indices), less what the API server has since said is gone.

kopf drops an index entry only on the object's DELETED event. An object deleted while no watch ran sends none: the
operator was paused by peering (its watches stop and list everything again on resume), or a watch had to list again
(a 410 Gone). Its entry would stay forever, and a reconciliation trusting it would neither re-create the child nor
stop reporting it. So a re-listing is noticed (``Listings``: an object listed again that this process saw before),
every InferenceService is then checked against the API server, and whatever that check finds gone is recorded here
by uid (``Cache.forget``): the cache no longer shows it. Uids are never reused, so a forgotten entry can only be one
the API server no longer has.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from kubeinfer.operator.render import MANAGED_BY_LABEL, MANAGER, OWNER_LABEL, REVISION_LABEL
from kubeinfer.operator.spec import API_VERSION, KIND

CACHED_CHILDREN = {"Deployment": "deployments", "Service": "services", "ConfigMap": "configmaps",
                   "HorizontalPodAutoscaler": "horizontalpodautoscalers",
                   "PodDisruptionBudget": "poddisruptionbudgets", "ScaledObject": "scaledobjects",
                   "GRPCRoute": "grpcroutes", "HTTPRoute": "httproutes"}
INFERENCE_SERVICES = "cached_inferenceservices"
PODS = "runtime_pods"

_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "deletionTimestamp", "labels",
                  "annotations", "ownerReferences")
_KEPT_POD_STATUS = ("phase", "reason", "message", "conditions", "containerStatuses", "initContainerStatuses")


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy of a watched object: what reconciliation compares and status reads (no managedFields)."""
    meta = body.get("metadata") or {}
    return copy.deepcopy({"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                          "metadata": {key: meta[key] for key in _KEPT_METADATA if key in meta},
                          "spec": body.get("spec") or {}, "status": body.get("status") or {}})


def pod_snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A pod trimmed to what status needs, its uid, and its rollout revision (if any)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    revision = (meta.get("labels") or {}).get(REVISION_LABEL)
    return copy.deepcopy({
        "metadata": {key: meta.get(key) for key in ("name", "uid", "deletionTimestamp")}
        | ({"labels": {REVISION_LABEL: revision}} if revision else {}),
        "status": {key: status[key] for key in _KEPT_POD_STATUS if key in status},
    })


def owner_of(body: Mapping[str, Any]) -> str | None:
    """The InferenceService this object belongs to: its controller owner reference names it; without any
    controller reference (removed by hand), the operator's labels do, so the child is still seen and adopted again.

    Owner references come first because labels can be edited; an object controlled by anything else is never ours.
    """
    meta = body.get("metadata") or {}
    controllers = [ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")]
    for ref in controllers:
        if ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION:
            return str(ref.get("name"))
    labels = meta.get("labels") or {}
    if not controllers and labels.get(MANAGED_BY_LABEL) == MANAGER and labels.get(OWNER_LABEL):
        return str(labels[OWNER_LABEL])
    return None


def _uid(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid") or "")


class Cache:
    """What the watches last saw of an InferenceService, its children and its pods, less what is known gone.

    ``indices`` are kopf's (by (namespace, InferenceService)); ``gone`` is the set of uids the API server no longer
    has, shared by every Cache of the process (the operator's memo holds it).
    """

    def __init__(self, indices: Mapping[str, Any], gone: set[str]) -> None:
        self._indices = indices
        self._gone = gone

    def _all(self, index: str, namespace: str, owner: str, name: str | None = None) -> list[dict[str, Any]]:
        return [body for body in self._indices[index].get((namespace, owner), [])
                if _uid(body) not in self._gone and (name is None or body["metadata"]["name"] == name)]

    def _one(self, index: str, namespace: str, owner: str, name: str | None = None) -> dict[str, Any] | None:
        found = self._all(index, namespace, owner, name)
        return found[0] if found else None

    def child(self, kind: str, namespace: str, owner: str, name: str) -> dict[str, Any] | None:
        return self._one(f"cached_{CACHED_CHILDREN[kind]}", namespace, owner, name)

    def children(self, kind: str, namespace: str, owner: str) -> list[dict[str, Any]]:
        """Every cached child of one kind of this InferenceService (a rollout's Deployments have several names)."""
        return self._all(f"cached_{CACHED_CHILDREN[kind]}", namespace, owner)

    def child_uids(self, kind: str, namespace: str, owner: str, name: str) -> set[str]:
        """Every object cached under this child's name (more than one only when deletions were missed)."""
        return {_uid(body) for body in self._all(f"cached_{CACHED_CHILDREN[kind]}", namespace, owner, name)}

    def deployment(self, namespace: str, owner: str) -> dict[str, Any] | None:
        return self.child("Deployment", namespace, owner, owner)

    def inference_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._one(INFERENCE_SERVICES, namespace, name)

    def inference_service_uids(self, namespace: str, name: str) -> set[str]:
        return {_uid(body) for body in self._all(INFERENCE_SERVICES, namespace, name)}

    def inference_services(self) -> list[tuple[str, str]]:
        """(namespace, name) of every InferenceService cached and not known gone."""
        return sorted(key for key in self._indices[INFERENCE_SERVICES] if self._all(INFERENCE_SERVICES, *key))

    def pods(self, namespace: str, owner: str) -> list[Mapping[str, Any]]:
        return self._all(PODS, namespace, owner)

    def pod_uids(self, namespace: str, owner: str) -> set[str]:
        return {_uid(body) for body in self.pods(namespace, owner)}

    def forget(self, uids: Iterable[str]) -> None:
        """The API server says these objects are gone: never show their entries again."""
        self._gone.update(uid for uid in uids if uid)


class Listings:
    """The uids this process has seen, by kind, to tell a watch's re-listing from its first listing.

    kopf sends every object of a listing as an event of type None. One whose uid was seen before means the watch
    listed again: events may have been missed meanwhile (deletions among them).
    """

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = defaultdict(set)

    def relisted(self, kind: str, event: Mapping[str, Any]) -> bool:
        uid = _uid(event.get("object") or {})
        seen = self._seen[kind]
        if event.get("type") == "DELETED":
            seen.discard(uid)
            return False
        if event.get("type") is None and uid in seen:
            return True
        seen.add(uid)
        return False
