"""Stacking a batch's images in the batcher's thread without letting go of the GIL.

The event loop holds the GIL most of the time under load and lets go of it only for an instant around each
system call. A thread that drops the GIL for a short C call (``np.stack``'s copy does, as do torch's ops) then
waits to get it back until the loop blocks or wins no race against it: CPython's convoy effect. Measured in
the batcher serving the benchmark classifier at concurrency 16 (8 images of 224x224, 1 model thread),
``np.stack`` took 3.3 ms of wall time for 0.5 ms of CPU, nearly all of it in ``take_gil``; copying the images
with the GIL held takes 0.3 ms. The batch path therefore drops the GIL as few times as it can: once to run the
model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stack_holding_gil(items: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """``np.stack(items)`` (into ``out`` when given), copied by ``memoryview`` assignment, which keeps the GIL.

    Items of different shapes or dtypes, or not C-contiguous, go through ``np.stack`` (which checks them).
    """
    first = items[0]
    if out is None:
        out = np.empty((len(items), *first.shape), first.dtype)
    if (out.shape != (len(items), *first.shape) or out.dtype != first.dtype or not out.flags.c_contiguous
            or any(item.shape != first.shape or item.dtype != first.dtype or not item.flags.c_contiguous
                   for item in items)):
        return np.stack(items, out=out)
    size = first.nbytes
    target = memoryview(out).cast("B")
    for i, item in enumerate(items):
        target[i * size:(i + 1) * size] = memoryview(item).cast("B")
    return out
