"""``RemoteEngine``: a frontend's view of the engine the model process runs (``--frontends N``).

The frontend's task prepares its items as it would for a ``LocalEngine`` (in its own pool: decode, letterbox or
resize); ``reserve`` takes ring slots when a request arrives (no free slot: RESOURCE_EXHAUSTED before anything is
decoded), ``infer`` writes each image into its slot, sends the request and resolves it when the model process
answers. A slot goes back to the ring only with that answer, even when the caller gave up first, so the model
process never reads a slot that is being rewritten. How a kind's items cross is its ``ItemCodec``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from kubeinfer.runtime.engine import link
from kubeinfer.runtime.engine.base import Engine, In, ItemCodec, Out
from kubeinfer.runtime.engine.ring import SlotRing
from kubeinfer.runtime.errors import Overloaded, Unavailable

log = logging.getLogger(__name__)


class SlotReservation:
    """Ring slots taken for one request's images; those never sent go back when the request ends."""

    def __init__(self, ring: SlotRing, slots: list[int]) -> None:
        self._ring = ring
        self.slots = slots

    def __enter__(self) -> SlotReservation:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.slots:
            self._ring.give_back(self.slots)
            self.slots = []


@dataclass(slots=True)
class _InFlight:
    future: asyncio.Future[link.BatchReply]
    slots: list[int]


class RemoteEngine(Engine[In, Out, Any]):
    """The model process's engine over this frontend's link and ring; ``on_lost`` is told once when the link
    breaks (the frontend then stops: the pod restarts whole)."""

    def __init__(self, facts: object, items: ItemCodec[In], ring: SlotRing, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, on_lost: Callable[[], None]) -> None:
        self._facts = facts
        self._items = items
        self._ring = ring
        self._reader = reader
        self._writer = writer
        self._on_lost = on_lost
        self._ids = itertools.count()
        self._in_flight: dict[int, _InFlight] = {}
        self._lost = False
        self._receiving: asyncio.Task[None] | None = None

    @property
    def facts(self) -> Any:
        return self._facts

    def start(self) -> None:
        if self._receiving is None:
            self._receiving = asyncio.get_running_loop().create_task(self._receive())

    def stop(self) -> None:
        """Close the link (called once the transports drained: nothing is in flight)."""
        self._lost = True
        self._writer.close()

    def reserve(self, count: int) -> SlotReservation:
        if self._lost:
            raise Unavailable("the model process is gone")
        slots = self._ring.take(count)
        if slots is None:
            raise Overloaded(f"this frontend's {self._ring.slots} image slots hold {self._ring.slots - self._ring.free}"
                             f" images waiting for the model, {count} more do not fit (--frontend-queue-size); "
                             "retry later")
        return SlotReservation(self._ring, slots)

    async def infer(self, items: Sequence[In], reservation: Any = None, options: object | None = None) -> list[Out]:
        """Send the items (pixels into the reservation's slots) and await the model process's answers, in order."""
        if reservation is None:
            with self.reserve(len(items)) as own:
                return await self.infer(items, own, options)
        if self._lost:
            raise Unavailable("the model process is gone")
        loop = asyncio.get_running_loop()
        used: list[int] = []

        def into_slot(pixels: np.ndarray) -> int:
            slot = reservation.slots.pop()
            used.append(slot)
            self._ring.images[slot] = pixels
            return slot

        try:
            request = link.BatchRequest(next(self._ids), [self._items.to_link(item, into_slot) for item in items],
                                        options)
        except BaseException:
            self._ring.give_back(used)
            raise
        flight = _InFlight(loop.create_future(), used)
        self._in_flight[request.id] = flight
        try:
            await link.send(self._writer, request)
        except (ConnectionError, RuntimeError) as exc:
            self._lose(f"sending to the model process failed: {exc}")
        reply = await asyncio.shield(flight.future)  # cancelled: the slots still wait for the answer
        if reply.error is not None:
            raise reply.error.error()
        return cast(list[Out], reply.results)

    async def _receive(self) -> None:
        while True:
            message = await link.receive(self._reader)
            if message is None:
                break
            if isinstance(message, link.FactsChanged):
                self._facts = message.facts
                continue
            assert isinstance(message, link.BatchReply)
            flight = self._in_flight.pop(message.id, None)
            if flight is None:
                continue
            self._ring.give_back(flight.slots)
            if not flight.future.done():
                flight.future.set_result(message)
        self._lose("the model process closed the link")

    def _lose(self, why: str) -> None:
        """Fail everything in flight with UNAVAILABLE and tell the frontend to stop (once)."""
        already = self._lost
        self._lost = True
        for flight in self._in_flight.values():
            if not flight.future.done():
                flight.future.set_exception(Unavailable(f"the model process is gone ({why})"))
        self._in_flight.clear()
        if not already:
            log.error("%s; this frontend stops", why)
            self._on_lost()
