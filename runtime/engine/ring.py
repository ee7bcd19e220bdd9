"""A ring of fixed-size image slots in one shared-memory block, one ring per frontend.

The frontend writes a letterboxed image into a free slot and sends only the slot's number; the model process
reads the pixels in place (a numpy view on the same memory) when it stacks the batch. Only the frontend hands
out slots, so the free list needs no cross-process lock: a slot goes back to it when the model process's
answer for it arrives, never before, so the model never reads a slot that is being rewritten.
"""

from __future__ import annotations

import threading
from multiprocessing import shared_memory

import numpy as np


class SlotRing:
    """``slots`` images of ``shape`` (uint8) in the shared-memory block ``name``."""

    def __init__(self, block: shared_memory.SharedMemory, slots: int, shape: tuple[int, ...], owner: bool) -> None:
        self.block = block
        self.slots = slots
        self.shape = shape
        self.owner = owner
        self.images = np.ndarray((slots, *shape), dtype=np.uint8, buffer=block.buf)
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.block.name

    @classmethod
    def create(cls, slots: int, shape: tuple[int, ...]) -> SlotRing:
        """A new block (the model process makes one per frontend, and unlinks it at exit)."""
        size = slots * int(np.prod(shape))
        return cls(shared_memory.SharedMemory(create=True, size=max(size, 1)), slots, shape, owner=True)

    @classmethod
    def attach(cls, name: str, slots: int, shape: tuple[int, ...]) -> SlotRing:
        return cls(shared_memory.SharedMemory(name=name), slots, shape, owner=False)

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self, count: int) -> list[int] | None:
        """``count`` free slots, or None (and none taken) when fewer are free."""
        with self._lock:
            if count > len(self._free):
                return None
            return [self._free.pop() for _ in range(count)]

    def give_back(self, slots: list[int]) -> None:
        with self._lock:
            self._free.extend(slots)

    def close(self) -> None:
        """Drop this process's mapping (and the block itself, in the process that made it)."""
        del self.images
        self.block.close()
        if self.owner:
            self.block.unlink()
