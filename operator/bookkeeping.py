"""kopf's bookkeeping (handler progress, last-handled spec) kept in the operator's memory, not on the resource.

kopf's default storages write annotations to every InferenceService it handles: the handler's progress, then the
last-handled configuration, each a PATCH of the resource that also comes back as a watch event. The reconciliation
is idempotent and level-triggered, so nothing needs to survive a restart: a restarted operator sees every resource
as new, reconciles it once against the cache, and writes nothing when nothing differs.

The one write left is kopf's "touch" after a retry delay (a TemporaryError), which is what wakes the resource's
handlers up again: it sets one annotation, RETRY_ANNOTATION, and happens only on retries.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable
from typing import Any

import kopf

PREFIX = "kubeinfer.io"
RETRY_ANNOTATION = f"{PREFIX}/retry"


def _uid(body: kopf.Body) -> str:
    return str(body.get("metadata", {}).get("uid", ""))


def _drop_own_annotations(essence: kopf.BodyEssence) -> kopf.BodyEssence:
    """Without kubeinfer.io/ annotations: the retry touch and older versions' kopf bookkeeping are no changes."""
    annotations = essence.get("metadata", {}).get("annotations", {})
    kopf.DiffBaseStorage.remove_annotations(essence, {key for key in annotations if key.startswith(f"{PREFIX}/")})
    kopf.DiffBaseStorage.remove_empty_stanzas(essence)
    return essence


class MemoryDiffBaseStorage(kopf.DiffBaseStorage):
    """The last handled essence per object uid, in memory; essences only of the kinds with change handlers.

    kopf builds an essence (a deep copy) of every watched object on every event; for pods and children, which have
    no change handlers, that copy is never used, so an empty one is built instead.
    """

    def __init__(self, kinds: Collection[str]) -> None:
        super().__init__()
        self._kinds = frozenset(kinds)
        self._essences: dict[str, kopf.BodyEssence] = {}

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
              ) -> kopf.BodyEssence:
        if body.get("kind") not in self._kinds:
            return kopf.BodyEssence()
        return _drop_own_annotations(super().build(body=body, extra_fields=extra_fields))

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        essence = self._essences.get(_uid(body))
        return copy.deepcopy(essence) if essence is not None else None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self._essences[_uid(body)] = copy.deepcopy(essence)

    def forget(self, uid: str) -> None:
        self._essences.pop(uid, None)


class MemoryProgressStorage(kopf.ProgressStorage):
    """Handler progress (retries, delays) per object uid and handler, in memory; touches as one annotation."""

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[tuple[str, str], kopf.ProgressRecord] = {}

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        record = self._records.get((_uid(body), key))
        return kopf.ProgressRecord(**record) if record is not None else None

    def store(self, *, key: kopf.HandlerId, record: kopf.ProgressRecord, body: kopf.Body,
              patch: kopf.Patch) -> None:
        self._records[(_uid(body), key)] = kopf.ProgressRecord(**record)

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        self._records.pop((_uid(body), key), None)

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        if value is not None:  # None would only remove an earlier touch: left in place, it changes nothing
            patch.setdefault("metadata", {}).setdefault("annotations", {})[RETRY_ANNOTATION] = value

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return _drop_own_annotations(copy.deepcopy(essence))

    def forget(self, uid: str) -> None:
        for key in [key for key in self._records if key[0] == uid]:
            del self._records[key]

