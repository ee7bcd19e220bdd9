"""What the operator keeps in memory between events, typed, in one place: one ``OperatorState`` per process (kopf's
memo holds it) and one ``ResourceState`` per InferenceService, forgotten in one place when the resource goes.

Nothing here is the truth about the cluster (that is the API server's, and the watches' cache in cache.py): it is the
operator's own bookkeeping of what it did and what it has scheduled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kubeinfer.operator import bookkeeping
from kubeinfer.operator.cache import Listings
from kubeinfer.operator.kube import Kube
from kubeinfer.operator.render import RuntimeDefaults
from kubeinfer.operator.rollout_plan import RolloutSettings
from kubeinfer.operator.spec import KIND
from kubeinfer.operator.status import Problem

Key = tuple[str, str]  # (namespace, name) of an InferenceService
ChildKey = tuple[str, str]  # (kind, name) of one of its children


@dataclass
class ResourceState:
    """One InferenceService: its lock (one reconciliation at a time), what was last applied and written, and what
    is scheduled for it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    applied: dict[ChildKey, dict[str, Any]] = field(default_factory=dict)  # each child as last applied
    # each child this process created, with when, until its watch event reaches the cache
    created: dict[ChildKey, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    problem: Problem | None = None  # what stopped the last reconciliation
    status: dict[str, Any] | None = None  # the status last written (newer than any watched copy)
    refreshing: bool = False  # a status refresh is scheduled
    verifying: bool = False  # a check against the API server is scheduled


@dataclass
class OperatorState:
    """The whole process's state: its settings, its API client, kopf's bookkeeping, and the per-resource states."""

    defaults: RuntimeDefaults
    kube: Kube
    peering_lifetime: float | None = None
    rollout_settings: RolloutSettings = field(default_factory=RolloutSettings)  # --prometheus-url, --cluster-domain
    tie_break: Any = None  # peering.TieBreak with --peering: watched while running
    stop: Callable[[], None] | None = None  # stops kopf (the tie rule hands over this way)
    bookkeeping: tuple[bookkeeping.MemoryProgressStorage, bookkeeping.MemoryDiffBaseStorage] = field(
        default_factory=lambda: (bookkeeping.MemoryProgressStorage(), bookkeeping.MemoryDiffBaseStorage({KIND})))
    executor: Executor | None = None  # kopf's handler threads
    listings: Listings = field(default_factory=Listings)  # tells a watch's re-listing from its first listing
    gone: set[str] = field(default_factory=set)  # uids of cached objects the API server no longer has (cache.py)
    resync_due: bool = False  # a check of every InferenceService against the API server is scheduled
    tie_break_task: Any = None
    _resources: dict[Key, ResourceState] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def __len__(self) -> int:
        """How many InferenceServices have state here (bounded by those that exist, and those being handled)."""
        return len(self._resources)

    def peek(self, namespace: str, name: str) -> ResourceState | None:
        """The resource's state, if it has any; never creates one."""
        return self._resources.get((namespace, name))

    def resource(self, namespace: str, name: str) -> ResourceState:
        """The resource's state, made on first use (a resource that then turns out gone is ``forget``-ed)."""
        with self._guard:
            return self._resources.setdefault((namespace, name), ResourceState())

    @contextmanager
    def locked(self, namespace: str, name: str) -> Iterator[ResourceState]:
        """The resource's state, under its lock for the block."""
        state = self.resource(namespace, name)
        with state.lock:
            yield state

    def forget(self, namespace: str, name: str, uid: str = "") -> None:
        """The resource is gone: drop everything kept for it (kopf's bookkeeping of ``uid`` too), so deleting
        resources leaves nothing behind. A holder of the entry finishes with its own reference; a later event for
        the gone resource makes a fresh entry, which its handler forgets again on finding the resource gone."""
        for storage in self.bookkeeping:
            if uid:
                storage.forget(uid)
        with self._guard:
            self._resources.pop((namespace, name), None)

    def applied_child(self, namespace: str, owner: str, kind: str, name: str) -> dict[str, Any] | None:
        state = self.peek(namespace, owner)
        return None if state is None else state.applied.get((kind, name))

    def forget_created(self, namespace: str, owner: str, kind: str, name: str) -> None:
        state = self.peek(namespace, owner)
        if state is not None:
            state.created.pop((kind, name), None)

