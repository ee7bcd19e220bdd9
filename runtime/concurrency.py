"""One bounded, in-order concurrent map, for every place that overlaps work on a stream of items.

Clips, streams, video frames and the Open Inference Protocol's ModelStreamInfer all take items from a
client's stream, start each one's work at once (so items of one call share model batches) and answer
in the order the items came, with at most ``limit`` items started but not yet answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _End:
    error: BaseException | None = None


async def ordered_map(source: AsyncIterator[In], fn: Callable[[In], Awaitable[Out]],
                      limit: int) -> AsyncIterator[Out]:
    """``fn`` over ``source`` with at most ``limit`` items between being pulled and being yielded, in order.

    A feeder task pulls an item only once a slot is free, and a slot frees when its
    result was yielded, i.e. taken by the consumer: a consumer that stops taking stops
    the reading. An error of ``source`` ends the output after the results before it.
    Closing the generator cancels the feeder and every pending item at once.
    """
    slots = asyncio.Semaphore(limit)
    order: asyncio.Queue[asyncio.Future[Out] | _End] = asyncio.Queue()
    pending: set[asyncio.Future[Out]] = set()

    async def feed() -> None:
        try:
            while True:
                await slots.acquire()
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    break
                future = asyncio.ensure_future(fn(item))
                pending.add(future)
                order.put_nowait(future)
        except Exception as exc:
            order.put_nowait(_End(exc))
        else:
            order.put_nowait(_End())

    feeder = asyncio.create_task(feed())
    try:
        while True:
            entry = await order.get()
            if isinstance(entry, _End):
                if entry.error is not None:
                    raise entry.error
                return
            try:
                result = await entry
            finally:
                pending.discard(entry)
            yield result
            slots.release()
    finally:
        feeder.cancel()
        for future in pending:
            future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
