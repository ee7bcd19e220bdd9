"""The dynamic batcher: one queue per model, shared by every request and client, and ``instances`` inference
threads taking batches from it.

Callers on the event loop ``submit`` preprocessed items and await their outputs.
An inference thread takes the oldest item, waits at most ``max_delay`` from that
item's arrival for more (or until ``max_batch_size``), runs the model once on the
batch and scatters the outputs back to each caller's event loop in one callback.
Under load, items queue while the model runs, so batches fill without waiting.

With several instances (Triton's instance group; the weights are loaded once and shared) one thread forms
a batch while the others run theirs: on a CPU, two batches at one intra-op thread each do more images per
second than one batch at two threads, since a single-threaded forward has no parallel sections to wake
workers for and wait on. Only one thread at a time forms a batch, so batches are not split between them.

Callers may ``reserve`` their items when a request arrives, before decoding them.
The thread only waits for company while reserved items are still on their way:
a lone request is dispatched at once instead of paying the batching delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from kubeinfer.runtime.errors import Code, InferenceError, Overloaded, Unavailable
from kubeinfer.runtime.metrics import RuntimeMetrics

if TYPE_CHECKING:
    from kubeinfer.runtime.config import ServeConfig

In = TypeVar("In")
Out = TypeVar("Out")
log = logging.getLogger(__name__)


class Reservation:
    """Items a request will submit soon; the batcher waits for them (within the delay) instead of dispatching."""

    def __init__(self, batcher: DynamicBatcher, count: int) -> None:
        self._batcher = batcher
        self.remaining = count

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self._batcher._release(self, self.remaining)


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    loop: asyncio.AbstractEventLoop
    enqueued: float


class DynamicBatcher(Generic[In, Out]):
    """Batches items across callers for ``run_batch``, which maps a list of items to a list of outputs."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[Sequence[In]], Sequence[Out]],
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
        metrics: RuntimeMetrics | None = None,
        instances: int = 1,
    ) -> None:
        if instances < 1:
            raise ValueError(f"instances must be at least 1, got {instances}")
        self.name = name
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self._metrics = metrics
        self._queue: deque[_Pending[In, Out]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._expected = 0  # reserved items not submitted yet
        self._reservations_used = False  # set by the first reserve(): from then on, wait only for reserved items
        self._forming = threading.Lock()  # held by the one thread gathering the next batch
        self._threads = [threading.Thread(target=self._serve, name=f"batcher-{name}" + (f"-{i}" if i else ""),
                                          daemon=True) for i in range(instances)]

    @classmethod
    def from_config(cls, name: str, run_batch: Callable[[Sequence[In]], Sequence[Out]], config: ServeConfig,
                    metrics: RuntimeMetrics | None) -> DynamicBatcher[In, Out]:
        """A batcher with the serve flags' settings: batch size, delay, queue bound and model instances."""
        return cls(name, run_batch, max_batch_size=config.max_batch_size,
                   max_delay_s=config.max_batch_delay_ms / 1000.0, max_queue_size=config.max_queue_size,
                   metrics=metrics, instances=config.model_instances)

    @property
    def instances(self) -> int:
        return len(self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new items, let the threads finish what is queued, and wait for them (``timeout`` in all)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def depth(self) -> int:
        return len(self._queue)

    def reserve(self, count: int) -> Reservation:
        """Announce ``count`` items about to be submitted (use as a context manager around decoding).

        The room is taken now: when the queue and the items already reserved leave none, Overloaded is
        raised before the caller decodes anything.
        """
        with self._cond:
            if self._closed:
                raise Unavailable("the runtime is shutting down")
            if len(self._queue) + self._expected + count > self.max_queue_size:
                raise Overloaded(
                    f"inference queue is full ({len(self._queue)} images waiting, {self._expected} on their way, "
                    f"limit {self.max_queue_size}); retry later")
            self._expected += count
            self._reservations_used = True
        return Reservation(self, count)

    def _release(self, reservation: Reservation, count: int) -> None:
        count = min(count, reservation.remaining)
        with self._cond:
            reservation.remaining -= count
            self._expected -= count
            self._cond.notify()

    async def submit(self, item: In) -> Out:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[In], reservation: Reservation | None = None) -> list[Out]:
        """Queue all items at once (all or none) and await their outputs, in order."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending = [_Pending(item, loop.create_future(), loop, now) for item in items]
        with self._cond:
            if self._closed:
                raise Unavailable("the runtime is shutting down")
            if len(self._queue) + len(pending) > self.max_queue_size:
                raise Overloaded(
                    f"inference queue is full ({len(self._queue)} images waiting, limit {self.max_queue_size}); "
                    "retry later")
            self._queue.extend(pending)
            if reservation is not None:
                arrived = min(reservation.remaining, len(pending))
                reservation.remaining -= arrived
                self._expected -= arrived
            self._cond.notify()
        self._set_depth()
        try:
            if len(pending) == 1:  # the usual request, one image: no gathering future to build and resolve
                return [await pending[0].future]
            return list(await asyncio.gather(*(p.future for p in pending)))
        except asyncio.CancelledError:
            for p in pending:
                p.future.cancel()  # the thread skips cancelled items that are still queued
            raise

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [p for p in batch if not p.future.cancelled()]
            if batch:
                self._run(batch)

    def _next_batch(self) -> list[_Pending[In, Out]] | None:
        with self._forming, self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + self.max_delay_s
            while len(self._queue) < self.max_batch_size and not self._closed and self._waits_for_reserved():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            take = min(self.max_batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(take)]
        self._set_depth()
        return batch

    def _run(self, batch: list[_Pending[In, Out]]) -> None:
        started = time.monotonic()
        try:
            outputs = self._run_batch([p.item for p in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"model returned {len(outputs)} outputs for {len(batch)} inputs")
        except Exception as exc:  # one bad batch must not stop the thread
            log.exception("batch of %d failed in %s", len(batch), self.name)
            error = exc if isinstance(exc, InferenceError) else InferenceError(
                Code.INTERNAL, f"internal error: the model failed on a batch of {len(batch)} (see the server log)")
            self._deliver(batch, [error] * len(batch), failed=True)
            return
        elapsed = time.monotonic() - started
        if self._metrics is not None:
            self._metrics.observe_batch(len(batch), elapsed, [started - p.enqueued for p in batch])
        self._deliver(batch, list(outputs), failed=False)

    @staticmethod
    def _deliver(batch: list[_Pending[In, Out]], values: list, failed: bool) -> None:
        """One thread-safe callback per event loop resolves that loop's futures."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
        for p, value in zip(batch, values, strict=True):
            by_loop.setdefault(p.loop, []).append((p.future, value))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that caller's loop is closed; nobody is waiting
                loop.call_soon_threadsafe(_resolve, pairs, failed)

    def _waits_for_reserved(self) -> bool:
        """Without reservations every batch waits out the delay; with them, only while reserved items are due."""
        return self._expected > 0 or not self._reservations_used

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(self._metrics.model).set(len(self._queue))


def _resolve(pairs: list[tuple[asyncio.Future, object]], failed: bool) -> None:
    for future, value in pairs:
        if future.done():
            continue
        if failed:
            future.set_exception(value)  # type: ignore[arg-type]
        else:
            future.set_result(value)
