"""How the operator's rendered children meet the live ones: the JSON merge patch that brings a live child in line,
the ownership rules (never take over what belongs to something else; adopt our own), and create-or-patch through
the API client.

``apply`` is idempotent: it sends nothing when the live object already holds every desired field, and tolerates
404/409 races (created or deleted by someone else meanwhile). JSON merge patches replace lists whole, so a child
edited by hand gets exactly the rendered containers back; the fields a merge patch would keep but the rendered
object never holds are render.py's PRUNABLE_PATHS and EXACT_MAPS.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from kubeinfer.operator.kube import ApiError, Kube
from kubeinfer.operator.render import EXACT_MAPS, MANAGED_BY_LABEL, MANAGER, OWNER_LABEL, PRUNABLE_PATHS, ChildRef

UNKNOWN = object()  # "not looked up": apply() reads the object itself


class ChildConflict(Exception):
    """A child's name is taken by an object this InferenceService does not manage."""


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: 'created', 'patched' or 'unchanged', and the live object afterwards."""

    action: str
    object: dict[str, Any]


def apply(kube: Kube, desired: Mapping[str, Any], cached: Mapping[str, Any] | object | None = UNKNOWN) -> Applied:
    """Create the object, or patch it until it holds every desired field; no request when it already does.

    ``cached`` is the object as a watch last saw it (None: not seen, so it is created without a read first);
    the default reads it. A stale cache costs at most one idempotent write or a 409 answered by a fresh read.
    """
    api_version, kind = desired["apiVersion"], desired["kind"]
    namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    for attempt in range(3):
        if attempt == 0 and cached is not UNKNOWN:
            live = None if cached is None else dict(cast(Mapping[str, Any], cached))
        else:
            live = kube.get(api_version, kind, namespace, name)
        if live is None:
            try:
                return Applied("created", kube.create(desired))
            except ApiError as exc:
                if exc.status != 409:
                    raise
                continue  # created by someone else meanwhile (e.g. a restarted operator): patch it
        check_ownership(desired, live)
        if (live.get("metadata") or {}).get("deletionTimestamp"):
            raise ApiError(409, "Terminating", f"{kind} {namespace}/{name} is being deleted; retrying later")
        patch = merge_patch_for(desired, live)
        if patch is None:
            return Applied("unchanged", live)
        try:
            return Applied("patched", kube.patch(api_version, kind, namespace, name, patch))
        except ApiError as exc:
            if exc.status != 404:
                raise
            continue  # deleted meanwhile: create it again
    raise ApiError(409, "Conflict", f"{kind} {namespace}/{name} kept changing while being applied")


def remove(kube: Kube, ref: ChildRef, namespace: str, owner_uid: str) -> bool:
    """Delete an unwanted child (an HPA or PDB the spec dropped), only if this owner controls it."""
    live = kube.get(ref.api_version, ref.kind, namespace, ref.name)
    if live is None or not controlled_by(live, owner_uid):
        return False
    return kube.delete(ref.api_version, ref.kind, namespace, ref.name)


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def check_ownership(desired: Mapping[str, Any], live: Mapping[str, Any]) -> None:
    """Never take over an object that belongs to something else; adopt only our own (owner refs lost by hand)."""
    owner = desired["metadata"]["ownerReferences"][0]
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    controllers = [ref for ref in refs if ref.get("controller")]
    if any(ref.get("uid") == owner["uid"] for ref in controllers):
        return
    labels = (live.get("metadata") or {}).get("labels") or {}
    ours = labels.get(MANAGED_BY_LABEL) == MANAGER and labels.get(OWNER_LABEL) == owner["name"]
    if controllers:
        other = controllers[0]
        if ours and other.get("kind") == owner["kind"] and other.get("name") == owner["name"]:
            # A previous InferenceService of the same name: the garbage collector is about to remove it.
            raise ApiError(409, "OwnerReplaced", f"{desired['kind']} {desired['metadata']['name']} still belongs "
                                                 "to a deleted InferenceService of the same name; retrying later")
        raise ChildConflict(f"{desired['kind']} {desired['metadata']['name']} exists and is controlled by "
                            f"{other.get('kind')} {other.get('name')}")
    if not ours:
        raise ChildConflict(f"{desired['kind']} {desired['metadata']['name']} exists and is not managed by "
                            f"InferenceService {owner['name']}; rename one of them")


def is_subset(desired: Any, live: Any) -> bool:
    """True when ``live`` holds every field of ``desired`` (extra live fields are server defaults)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(is_subset(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(live, list) and len(live) == len(desired)
                and all(is_subset(d, lv) for d, lv in zip(desired, live, strict=True)))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    if isinstance(desired, int | float) and isinstance(live, str):
        return str(desired) == live  # quantities come back as strings: 1 -> "1"
    return bool(desired == live)


def _dig(obj: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = obj
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def merge_patch_for(desired: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON merge patch that makes ``live`` match ``desired``, or None when it already does."""
    kind = desired["kind"]
    stale = [path for path in PRUNABLE_PATHS.get(kind, ())
             if _dig(desired, path) is None and _dig(live, path) is not None]
    for path in EXACT_MAPS.get(kind, ()):
        wanted, found = _dig(desired, path), _dig(live, path)
        if isinstance(wanted, Mapping) and isinstance(found, Mapping):
            stale += [(*path, key) for key in found if key not in wanted]
    if not stale and is_subset(desired, live):
        return None
    patch: dict[str, Any] = json.loads(json.dumps(desired))
    for path in stale:
        node = patch
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = None
    return patch
