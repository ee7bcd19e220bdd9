"""Following a progressive rollout: which revision of an InferenceService serves each call, split exactly.

During a rollout's weight steps the operator's ClusterIP and ``NAME-pods`` Services select every revision, so
per-pod balancing splits calls by pod counts, not by the step's weight. The runtimes serve the operator's traffic
table in GetModelInfo (``ModelInfo.traffic``: the stable and candidate revisions' headless Services and the
candidate's weight); a ``RevisionTable`` holds it for one client, fetched on first use and every
``REFRESH_SECONDS`` after in a daemon thread (never on the call path after the first), and picks a revision:

* unary calls (and streams without an id) by smooth weighted round-robin, which is exact: of every 100 picks,
  ``weight`` go to the candidate, evenly interleaved;
* a stream id by ``crc32(id) % 100 < weight``, so an id on the candidate stays there while the weight grows.

A revision that failed a call with UNAVAILABLE (gone before the table says so) is set aside for ``DOWN_SECONDS``:
its share of the unary calls goes to ``NAME-pods`` meanwhile, so only the calls already on their way pay for the
failure (the channel's own retries, then one more try on ``NAME-pods``), not every call it is picked for.

It opens one resource per revision target (a channel, a stream router) while a split is on and closes those no
longer named once their last call is done. Without a table, or with no candidate or a weight of 0, nothing is
picked and the client uses its ``NAME-pods`` channel as before.

Replicas may serve different generations for a moment (the kubelet updates the mounted ConfigMap pod by pod), and
the client's GetModelInfo goes round-robin over them: an older generation than the one held is ignored, unless no
newer one has been seen for ``RESET_SECONDS`` (the table was recreated and counts from 1 again).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from kubeinfer.v1 import inference_pb2 as pb

T = TypeVar("T")
log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0
DOWN_SECONDS = 5.0
RESET_SECONDS = 60.0


@dataclass(frozen=True)
class Split:
    """A table with a candidate taking a share: the channel targets of both revisions and the candidate's weight."""

    generation: int
    stable_revision: str
    stable: str
    candidate_revision: str
    candidate: str
    weight: int  # percent of calls for the candidate, 1..100


def channel_target(target: str, authority: str = "") -> str:
    """The gRPC target of a revision's headless Service ``host:port``, resolved through the same DNS server as the
    service's own name (``authority``; empty: the system's); a target with a scheme already is kept."""
    if target.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return target
    return f"dns://{authority}/{target}"


def authority_of(target: str) -> str:
    """The DNS server a ``dns://SERVER/name`` target names; empty for ``dns:///name`` and other targets."""
    if not target.startswith("dns://"):
        return ""
    return target[len("dns://"):].partition("/")[0]


def split_of(traffic: pb.Traffic | None, authority: str = "") -> Split | None:
    """The split a table asks for; None when it sends every call to the stable revision (or there is none)."""
    if traffic is None or not traffic.HasField("candidate") or not traffic.candidate.target:
        return None
    weight = min(int(traffic.candidate_weight), 100)
    if weight <= 0 or not traffic.stable.target:
        return None
    return Split(int(traffic.generation), traffic.stable.revision, channel_target(traffic.stable.target, authority),
                 traffic.candidate.revision, channel_target(traffic.candidate.target, authority), weight)


def stream_on_candidate(stream_id: str, weight: int) -> bool:
    """Whether ``stream_id`` belongs to the candidate at ``weight``: true at every larger weight too."""
    return zlib.crc32(stream_id.encode()) % 100 < weight


class Lease(Generic[T]):
    """A revision's resource held by one call; ``release`` (or leaving ``with``) lets a retired one be closed."""

    def __init__(self, table: RevisionTable[T], target: str, value: T) -> None:
        self.table = table
        self.target = target
        self.value = value
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.table._release(self.target)

    def __enter__(self) -> T:
        return self.value

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Entry(Generic[T]):
    def __init__(self, value: T) -> None:
        self.value = value
        self.users = 0
        self.retired = False


class RevisionTable(Generic[T]):
    """One service's traffic table and a resource per revision target. Thread-safe.

    ``fetch`` returns the table (None without one) and may raise; ``open_target`` makes the resource of a channel
    target (``dns://AUTH/host:port``), ``close_target`` closes it; ``authority`` is the DNS server that revision
    names are resolved through (the service target's).
    """

    def __init__(self, fetch: Callable[[], pb.Traffic | None], open_target: Callable[[str], T],
                 close_target: Callable[[T], None], *, authority: str = "",
                 refresh_seconds: float = REFRESH_SECONDS, reset_seconds: float = RESET_SECONDS,
                 down_seconds: float = DOWN_SECONDS) -> None:
        self._fetch = fetch
        self._open_target = open_target
        self._close_target = close_target
        self.authority = authority
        self.refresh_seconds = refresh_seconds
        self.reset_seconds = reset_seconds
        self.down_seconds = down_seconds
        self._down: dict[str, float] = {}  # target -> until when its calls go to NAME-pods
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._started = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = -1  # none held yet
        self._newest_seen_at = 0.0
        self._split: Split | None = None
        self._entries: dict[str, _Entry[T]] = {}
        self._current = [0, 0]  # smooth weighted round-robin: stable, candidate
        self._failed_fetch = ""

    @property
    def split(self) -> Split | None:
        """The split in force (fetching the table first on first use)."""
        self._start()
        return self._split

    def _start(self) -> None:
        """The first fetch, on first use; calls arriving meanwhile wait for it, so none misses the split."""
        if self._started.is_set():
            return
        with self._start_lock:
            if self._started.is_set():
                return
            try:
                self.refresh()
            finally:
                self._thread = threading.Thread(target=self._run, name="kubeinfer-revisions", daemon=True)
                self._thread.start()
                self._started.set()

    def _run(self) -> None:
        while not self._closed.wait(self.refresh_seconds):
            self.refresh()

    def refresh(self) -> Split | None:
        """Fetch the table now and apply it; a failed fetch keeps the table held (logged once per kind of error)."""
        try:
            traffic = self._fetch()
        except Exception as exc:  # the service unreachable or an old runtime: keep what is held
            text = f"{type(exc).__name__}: {exc}"
            if text != self._failed_fetch:
                log.warning("fetching the traffic table failed, keeping generation %s: %s", self._generation, text)
                self._failed_fetch = text
            return self._split
        self._failed_fetch = ""
        self.apply(traffic)
        return self._split

    def apply(self, traffic: pb.Traffic | None) -> None:
        """Take ``traffic`` unless it is older than the table held (see the module's docstring)."""
        generation = int(traffic.generation) if traffic is not None else 0
        now = time.monotonic()
        closing: list[T] = []
        with self._lock:
            if self._closed.is_set():
                return
            if generation >= self._generation:
                self._newest_seen_at = now
            elif now - self._newest_seen_at < self.reset_seconds:
                return  # a replica not yet updated
            self._generation = generation
            split = split_of(traffic, self.authority)
            if split != self._split:
                old = self._split
                self._split = split
                if old is None or split is None or (old.stable, old.candidate) != (split.stable, split.candidate):
                    self._current = [0, 0]
                wanted = set() if split is None else {split.stable, split.candidate}
                for target in wanted - set(self._entries):
                    self._entries[target] = _Entry(self._open_target(target))
                self._down = {t: until for t, until in self._down.items() if t in wanted}
                for target in set(self._entries) - wanted:
                    entry = self._entries[target]
                    entry.retired = True
                    if entry.users == 0:
                        closing.append(self._entries.pop(target).value)
                log.info("traffic table generation %s: %s", generation, split or "no split")
        for value in closing:
            self._close_target(value)

    def _lease_locked(self, target: str) -> Lease[T]:
        entry = self._entries[target]
        entry.users += 1
        return Lease(self, target, entry.value)

    def _release(self, target: str) -> None:
        closing = None
        with self._lock:
            entry = self._entries.get(target)
            if entry is None:
                return
            entry.users -= 1
            if entry.retired and entry.users <= 0:
                closing = self._entries.pop(target).value
        if closing is not None:
            self._close_target(closing)

    def set_aside(self, target: str) -> None:
        """Send ``target``'s share of unary calls to NAME-pods for ``down_seconds`` (it just failed UNAVAILABLE)."""
        with self._lock:
            self._down[target] = time.monotonic() + self.down_seconds

    def pick(self) -> Lease[T] | None:
        """The revision of the next unary call by smooth weighted round-robin; None without a split, or when the
        revision picked is set aside."""
        self._start()
        with self._lock:
            split = self._split
            if split is None:
                return None
            weights = (100 - split.weight, split.weight)
            self._current = [c + w for c, w in zip(self._current, weights, strict=True)]
            chosen = 1 if self._current[1] > self._current[0] else 0
            self._current[chosen] -= 100
            target = split.candidate if chosen else split.stable
            if self._down.get(target, 0.0) > time.monotonic():
                return None
            return self._lease_locked(target)

    def for_stream(self, stream_id: str) -> Lease[T] | None:
        """The revision of ``stream_id`` (crc32 under the weight: the candidate); None without a split."""
        self._start()
        with self._lock:
            split = self._split
            if split is None:
                return None
            return self._lease_locked(split.candidate if stream_on_candidate(stream_id, split.weight)
                                      else split.stable)

    def values(self) -> list[T]:
        """The resources open now (the split's revisions, and retired ones still in use)."""
        with self._lock:
            return [entry.value for entry in self._entries.values()]

    def close(self) -> None:
        """Stop refreshing and close every revision's resource (calls still on them end)."""
        with self._lock:
            self._closed.set()
            values = [entry.value for entry in self._entries.values()]
            self._entries.clear()
            self._split = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        for value in values:
            self._close_target(value)


def traffic_of(info: pb.ModelInfo) -> pb.Traffic | None:
    """A GetModelInfo answer's traffic table; None from a runtime without one (no rollout, or an older runtime)."""
    return info.traffic if info.HasField("traffic") else None
