"""The interface between the request side and the model side, and what each kind of model declares.

A task prepares its items (decoded, letterboxed or resized images, with their box selection) in its own process
and hands them to an ``Engine``; it never sees the model or the batcher behind it. The same task code runs over
``LocalEngine`` (the model here) and ``RemoteEngine`` (the model in the model process): what it knows of the model
is the engine's ``facts``, plain data that crosses the link once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from kubeinfer.runtime.config import Flag, ServeConfig
from kubeinfer.runtime.engine.link import LinkItem
from kubeinfer.runtime.engine.ring import SlotRing
from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.metrics import RuntimeMetrics

if TYPE_CHECKING:
    from kubeinfer.runtime.engine.local import LocalEngine

In = TypeVar("In")
Out = TypeVar("Out")
FactsT = TypeVar("FactsT")
FactsListener = Callable[[Any], None]


class Engine(ABC, Generic[In, Out, FactsT]):
    """A model as a task uses it: its facts, room in its queue, and batched inference."""

    @property
    @abstractmethod
    def facts(self) -> FactsT:
        """What the request side needs to know of the model (labels, input size, preprocessing...), current."""

    @abstractmethod
    def start(self) -> None:
        """Start the inference threads (or the link's reader); once, before the first ``infer``."""

    @abstractmethod
    def stop(self) -> None:
        """Finish what is queued and stop; called after the transports drained."""

    @abstractmethod
    def reserve(self, count: int) -> AbstractContextManager[Any]:
        """Room for ``count`` items about to be submitted (use around decoding); RESOURCE_EXHAUSTED when the queue
        (or a frontend's image slots) cannot take them, before anything is decoded."""

    @abstractmethod
    async def infer(self, items: Sequence[In], reservation: Any = None, options: object | None = None) -> list[Out]:
        """Every item's output, in order, through the one dynamic batcher; ``options`` apply to the whole request
        (a gallery search's threshold). A failed item fails the request."""

    def reload(self) -> None:
        """Re-read what may change while serving (SIGHUP): a gallery."""


class ItemCodec(Protocol[In]):
    """How one kind's items cross the link: pixels into a ring slot, the rest in the message."""

    def slot_shape(self, facts: Any) -> tuple[int, int, int]:
        """One ring slot: one image as the frontend prepares it for this model."""
        ...

    def to_link(self, item: In, into_slot: Callable[[np.ndarray], int]) -> LinkItem:
        """The item as sent; ``into_slot(pixels)`` writes pixels into a reserved slot and gives its number."""
        ...

    def from_link(self, item: LinkItem, ring: SlotRing) -> In:
        """The item again, in the model process, its pixels read in place from the ring."""
        ...


@dataclass(frozen=True)
class EngineKind(Generic[In]):
    """One kind of model: its name, how it loads into a ``LocalEngine``, how its items cross the link, and the
    flags it reads (every task that serves it declares them too)."""

    name: str
    load: Callable[[ServeConfig, RuntimeMetrics, Executor], LocalEngine[Any, Any, Any]]
    items: ItemCodec[In]
    flags: tuple[Flag[Any], ...] = ()


class ResizedImages:
    """The items of an image model (classifier, encoder): each image resized to the model's square input, in a
    slot of its own; its facts carry the ``preprocessing`` that says the size."""

    def slot_shape(self, facts: Any) -> tuple[int, int, int]:
        size = facts.preprocessing.input_size
        return (size, size, 3)

    def to_link(self, item: np.ndarray, into_slot: Callable[[np.ndarray], int]) -> LinkItem:
        return LinkItem(into_slot(item), None, 0, item.shape[0], item.shape[1], None)

    def from_link(self, item: LinkItem, ring: SlotRing) -> np.ndarray:
        if item.slot is None:  # a frontend writes every resized image into a slot: anything else is a bug
            raise InferenceError(Code.INTERNAL, "internal error: an image came without a ring slot")
        return ring.images[item.slot]
