"""What a frontend's task sees of the model in the model process: its facts, and a batcher over the link.

``RemoteDetector`` letterboxes (in the frontend's pool, as the one-process runtime does) and labels boxes;
``RemoteClassifier`` resizes images to the classifier's input. ``RemoteBatcher`` takes ring slots when a
request arrives (no free slot: RESOURCE_EXHAUSTED before anything is decoded), writes each prepared image into
its slot, sends the request and resolves it when the model process answers with the selected boxes or the
class probabilities. A slot goes back to the ring only with that answer, even when the caller gave up first,
so the model process never reads a slot that is being rewritten. How a task's items cross the link is its
``ItemCodec`` (``DETECT_ITEMS``, ``CLASSIFY_ITEMS``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np

from kubeinfer.runtime.errors import Code, InferenceError, Overloaded, Unavailable
from kubeinfer.runtime.frontends import link
from kubeinfer.runtime.frontends.ring import SlotRing
from kubeinfer.runtime.models.image_model import Preprocessing
from kubeinfer.runtime.models.yolo_io import (
    BatchItem,
    Detection,
    EncodedJpeg,
    Letterboxed,
    NamedDevice,
    RawDetections,
    Selection,
    letterboxed,
)

log = logging.getLogger(__name__)
In = TypeVar("In")
Out = TypeVar("Out")


class RemoteDetector:
    """The model process's detector as the detect task uses it (``detection.DetectorModel``)."""

    def __init__(self, facts: link.DetectorFacts) -> None:
        self.names = facts.names
        self.image_size = facts.image_size
        self.segmentation = facts.segmentation
        self.device = NamedDevice(facts.device)
        self.format = facts.format
        self.engine = facts.engine

    @property
    def labels(self) -> list[str]:
        return [self.names[i] for i in sorted(self.names)]

    def preprocess(self, bgr: np.ndarray, selection: Selection | None = None) -> Letterboxed:
        return letterboxed(bgr, self.image_size, selection)

    def postprocess(self, raw: RawDetections, item: BatchItem) -> list[Detection]:
        """The model process selected the boxes (and drew the polygons) already."""
        return raw.boxes or []


class RemoteClassifier:
    """The model process's classifier as the classify task uses it (``tasks.classify.ClassifierModel``)."""

    def __init__(self, facts: link.ClassifierFacts, path: Path) -> None:
        self.path = path
        self.preprocessing: Preprocessing = facts.preprocessing
        self.output_size = facts.output_size
        self.class_names = facts.class_names
        self.format = facts.format

    @property
    def input_order(self) -> str:
        return self.preprocessing.channel_order

    def preprocess(self, pixels: np.ndarray, order: str = "bgr") -> np.ndarray:
        return self.preprocessing.resize(pixels, order)


class ItemCodec(Protocol[In, Out]):
    """How one task's batch items and outputs cross the link."""

    def to_link(self, item: In, into_slot: Callable[[np.ndarray], int]) -> link.LinkItem:
        """The item as sent; ``into_slot(pixels)`` writes pixels into a reserved ring slot and gives its number."""
        ...

    def from_link(self, result: object) -> Out:
        """One image's answer: its output, or (``link.LinkError``) its error."""
        ...


class _DetectItems:
    def to_link(self, item: BatchItem, into_slot: Callable[[np.ndarray], int]) -> link.LinkItem:
        if item.selection is None:
            raise InferenceError(Code.INTERNAL, "internal error: a frontend's image carries no box selection")
        if isinstance(item, EncodedJpeg):
            return link.LinkItem(None, item.data, item.index, item.original_height, item.original_width,
                                 item.selection)
        return link.LinkItem(into_slot(item.pixels), None, 0, item.original_height, item.original_width,
                             item.selection)

    def from_link(self, result: object) -> RawDetections:
        if isinstance(result, link.LinkError):
            return RawDetections(None, None, error=result.error())
        return RawDetections(None, None, boxes=result)  # type: ignore[arg-type]


class _ClassifyItems:
    def to_link(self, item: np.ndarray, into_slot: Callable[[np.ndarray], int]) -> link.LinkItem:
        return link.LinkItem(into_slot(item), None, 0, item.shape[0], item.shape[1], None)

    def from_link(self, result: object) -> np.ndarray:
        if isinstance(result, link.LinkError):  # the classifier's batch step fails whole, never per image
            raise result.error()
        assert isinstance(result, np.ndarray)
        return result


DETECT_ITEMS: ItemCodec[BatchItem, RawDetections] = _DetectItems()
CLASSIFY_ITEMS: ItemCodec[np.ndarray, np.ndarray] = _ClassifyItems()


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


class RemoteBatcher(Generic[In, Out]):
    """The model process's dynamic batcher, reached over the link (``detection.DetectBatcher``, and the batcher
    of ``tasks.classify``)."""

    def __init__(self, ring: SlotRing, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_lost: Callable[[], None], codec: ItemCodec[In, Out]) -> None:
        self._ring = ring
        self._codec = codec
        self._reader = reader
        self._writer = writer
        self._on_lost = on_lost
        self._ids = itertools.count()
        self._in_flight: dict[int, _InFlight] = {}
        self._lost = False
        self._receiving: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._receiving is None:
            self._receiving = asyncio.get_running_loop().create_task(self._receive())

    def stop(self, timeout: float | None = None) -> None:
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

    async def submit_many(self, items: Sequence[In], reservation: SlotReservation | None = None) -> list[Out]:
        """Send the items (pixels into the reservation's slots) and await the model process's answers, in order."""
        if reservation is None:
            with self.reserve(len(items)) as own:
                return await self.submit_many(items, own)
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
            request = link.BatchRequest(next(self._ids), [self._codec.to_link(item, into_slot) for item in items])
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
        return [self._codec.from_link(result) for result in reply.results]

    async def _receive(self) -> None:
        while True:
            reply = await link.receive(self._reader)
            if reply is None:
                break
            assert isinstance(reply, link.BatchReply)
            flight = self._in_flight.pop(reply.id, None)
            if flight is None:
                continue
            self._ring.give_back(flight.slots)
            if not flight.future.done():
                flight.future.set_result(reply)
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
