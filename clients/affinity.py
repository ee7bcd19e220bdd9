"""Stream affinity: each stream id goes to one replica, chosen by rendezvous (highest-random-weight) hashing.

Every replica gets a pseudo-random weight per stream id, hash(endpoint, id); the id's owner is the replica of
highest weight. Every client that sees the same endpoints picks the same owner without talking to the others,
and a change of the replica set moves only the ids whose owner came or went: adding a replica to N moves about
1/(N+1) of the ids (all to the new one), removing one moves only the ids it owned.

``StreamRouter`` resolves a service's name itself (its headless Service: one address per ready pod), keeps one
channel per replica and sends each stream to its owner with ``resume`` set, so the window survives reconnects.
When the owner changes (a replica added or gone), the stream's next call goes to the new owner, whose first
prediction says ``window_restarted``. A stream call that fails with UNAVAILABLE (its replica died or is
draining) sets that replica aside for ``down_seconds`` and resolves again, so the caller's reconnect goes to the
id's next-highest-weight replica: the one that owns the id anyway once the name stops listing the lost replica.

With ``rollout=True`` (what ``for_service`` sets) a progressive rollout's traffic table picks the revision first:
an id goes to the candidate revision when ``crc32(id) % 100`` is under its weight (so it stays there while the
weight grows), then to its owner among that revision's replicas (its headless Service ``NAME-REV``, resolved by a
router of its own). A revision whose name resolves to no address sends the id to its owner over every pod.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc

from kubeinfer.clients import balancing, revisions
from kubeinfer.clients.client import Client
from kubeinfer.clients.images import ImageLike
from kubeinfer.clients.resolve import resolve
from kubeinfer.clients.types import ModelInfo, StreamFrame, StreamPrediction


def weight(endpoint: str, key: str) -> int:
    """The endpoint's pseudo-random weight for ``key`` (64 bits of BLAKE2b: stable across processes)."""
    digest = hashlib.blake2b(f"{endpoint}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, endpoints: Sequence[str]) -> str:
    """The endpoint of highest weight for ``key``; ValueError when there is none."""
    if not endpoints:
        raise ValueError("no endpoint to choose from")
    return max(endpoints, key=lambda e: (weight(e, key), e))


class NoEndpoints(ConnectionError):
    """The service's name resolved to no address: no replica is ready."""


class StreamRouter:
    """Routes each stream id to its replica (rendezvous hashing over the resolved endpoints). Thread-safe.

    ``target`` is resolved as gRPC would (``dns:///name:port``, ``dns://SERVER/name:port``, ``ipv4:...``); it
    is resolved again when ``refresh`` is called, before a stream when the last resolution is older than
    ``refresh_seconds``, and after a stream call failed with UNAVAILABLE (``resolve_now=False``: not before the
    first stream). ``rollout=True`` follows a rollout's traffic table (fetched through ``target`` every
    ``table_refresh_seconds``). ``client_options`` are ``Client`` keyword arguments for the per-replica channels.
    """

    def __init__(self, target: str, *, refresh_seconds: float = 30.0, down_seconds: float = 10.0,
                 rollout: bool = False, table_refresh_seconds: float = revisions.REFRESH_SECONDS,
                 resolve_now: bool = True, **client_options: Any) -> None:
        self.target = target
        self.refresh_seconds = refresh_seconds
        self.down_seconds = down_seconds
        self._client_options = client_options
        self._clients: dict[str, Client] = {}
        self._down: dict[str, float] = {}  # endpoint -> until when it is set aside
        self._resolved_at = -float("inf")
        self._lock = threading.Lock()
        self._service: Client | None = None
        self.revisions: revisions.RevisionTable[StreamRouter] | None = None
        if rollout:
            self._service = Client(target, **client_options)
            self.revisions = revisions.RevisionTable(
                self._service.traffic_table,
                lambda to: StreamRouter(to, refresh_seconds=refresh_seconds, down_seconds=down_seconds,
                                        resolve_now=False, **client_options),
                lambda router: router.close(), authority=revisions.authority_of(target),
                refresh_seconds=table_refresh_seconds)
        if resolve_now:
            self.refresh()

    @classmethod
    def for_service(cls, name: str, namespace: str = "default", *, port: int = 8001,
                    cluster_domain: str = "cluster.local", dns_server: str = "", **kwargs: Any) -> StreamRouter:
        """A router over an InferenceService's ready pods (its headless ``NAME-pods`` Service), following a
        rollout's traffic split (``rollout=True``); ``dns_server`` as for ``Client.for_service``."""
        kwargs.setdefault("rollout", True)
        return cls(balancing.service_target(name, namespace, port, cluster_domain, dns_server), **kwargs)

    @property
    def endpoints(self) -> list[str]:
        with self._lock:
            return sorted(self._clients)

    def refresh(self) -> list[str]:
        """Resolve the target again: channels to new replicas are opened, those to vanished ones closed."""
        found = resolve(self.target)
        if not found:
            raise NoEndpoints(f"{self.target} resolves to no address: no replica is ready")
        with self._lock:
            gone = [self._clients.pop(e) for e in set(self._clients) - set(found)]
            for fresh in set(found) - set(self._clients):
                self._clients[fresh] = Client(fresh, **self._client_options)
            self._down = {e: until for e, until in self._down.items() if e in self._clients}
            self._resolved_at = time.monotonic()
        for client in gone:
            client.close()
        return sorted(found)

    def _candidates_locked(self) -> list[str]:
        """The endpoints not set aside (all of them when every one is)."""
        now = time.monotonic()
        up = [e for e in self._clients if self._down.get(e, 0.0) <= now]
        return sorted(up or self._clients)

    def owner(self, stream_id: str) -> str:
        """The endpoint that serves ``stream_id`` now (in its revision while a rollout splits traffic)."""
        _, endpoint, _, lease = self._route_leased(stream_id)
        if lease is not None:
            lease.release()
        return endpoint

    def set_aside(self, endpoint: str) -> None:
        """Route no stream to ``endpoint`` for ``down_seconds`` (its ids go to their next-highest-weight replica)."""
        with self._lock:
            self._down[endpoint] = time.monotonic() + self.down_seconds

    def _route(self, stream_id: str) -> tuple[str, Client]:
        if time.monotonic() - self._resolved_at > self.refresh_seconds:
            self.refresh()
        with self._lock:
            endpoint = owner(stream_id, self._candidates_locked())
            return endpoint, self._clients[endpoint]

    def _route_leased(self, stream_id: str) -> tuple[StreamRouter, str, Client,
                                                      revisions.Lease[StreamRouter] | None]:
        """The router, endpoint and channel of ``stream_id``: in its revision while a split is on, and the lease
        that keeps that revision's router open."""
        lease = self.revisions.for_stream(stream_id) if self.revisions is not None else None
        if lease is not None:
            try:
                endpoint, client = lease.value._route(stream_id)
                return lease.value, endpoint, client, lease
            except (NoEndpoints, OSError):  # the revision scaled away before the table said so
                lease.release()
        endpoint, client = self._route(stream_id)
        return self, endpoint, client, None

    def client(self, stream_id: str) -> Client:
        """The channel of ``stream_id``'s replica (resolving again first when the last time is too old)."""
        _, _, client, lease = self._route_leased(stream_id)
        if lease is not None:
            lease.release()
        return client

    def stream_classify(self, frames: Iterable[ImageLike | StreamFrame], *, stream_id: str, mode: str = "",
                        top_k: int | None = None, resume: bool = True,
                        timeout: float | None = None) -> Iterator[StreamPrediction]:
        """``Client.stream_classify`` of one stream on its replica, resumable by default.

        When the call fails with UNAVAILABLE the error is raised as usual, and the replica is set aside first:
        calling again with the same id (and the frames still to send) continues on the id's next owner.
        """
        router, endpoint, client, lease = self._route_leased(stream_id)
        predictions = client.stream_classify(frames, stream_id=stream_id, mode=mode, top_k=top_k, resume=resume,
                                             timeout=timeout)
        return router._watched(endpoint, predictions, lease)

    def _watched(self, endpoint: str, predictions: Iterator[StreamPrediction],
                 lease: revisions.Lease[StreamRouter] | None = None) -> Iterator[StreamPrediction]:
        try:
            yield from predictions
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                self.set_aside(endpoint)
                with contextlib.suppress(NoEndpoints, OSError):
                    self.refresh()
            raise
        finally:
            close = getattr(predictions, "close", None)
            if close is not None:
                close()  # closing early cancels the call
            if lease is not None:
                lease.release()

    def model_infos(self, timeout: float | None = None) -> dict[str, ModelInfo]:
        """Each replica's GetModelInfo, by endpoint (``active_streams``: the windows it holds), with those of the
        revisions' routers while a rollout splits traffic."""
        with self._lock:
            clients = dict(self._clients)
        for router in self.revisions.values() if self.revisions is not None else ():
            with router._lock:
                clients.update(router._clients)
        return {e: c.model_info(timeout=timeout) for e, c in sorted(clients.items())}

    def close(self) -> None:
        if self.revisions is not None:
            self.revisions.close()
        if self._service is not None:
            self._service.close()
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> StreamRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
