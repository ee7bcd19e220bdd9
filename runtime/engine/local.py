"""``LocalEngine``: a model loaded in this process behind its dynamic batcher.

The batcher's ``--model-instances`` inference threads run the model's batch step; ``finish`` (per kind) turns a
request's raw outputs into what the task gets, on the event loop or in the worker pool (mask outlines, a gallery
search). The one-process runtime serves tasks from it, and so does the model process behind the frontends.
"""

from __future__ import annotations

import asyncio
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from kubeinfer.runtime.batching import DynamicBatcher, Reservation
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine.base import Engine, FactsListener, FactsT, In, Out
from kubeinfer.runtime.metrics import RuntimeMetrics

Raw = TypeVar("Raw")
T = TypeVar("T")


class LocalEngine(Engine[In, Out, FactsT]):
    """``run_batch`` (the model's batch step) behind one dynamic batcher, shared by every request and client."""

    def __init__(self, name: str, facts: FactsT, run_batch: Callable[[Sequence[In]], Sequence[Any]],
                 config: ServeConfig, metrics: RuntimeMetrics, pool: Executor) -> None:
        self.config = config
        self.metrics = metrics
        self.pool = pool
        self.batcher: DynamicBatcher[In, Any] = DynamicBatcher.from_config(name, run_batch, config, metrics)
        self._facts = facts
        self._listeners: list[FactsListener] = []
        self._listening = threading.Lock()

    @property
    def facts(self) -> FactsT:
        return self._facts

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    def reserve(self, count: int) -> Reservation:
        return self.batcher.reserve(count)

    async def infer(self, items: Sequence[In], reservation: Any = None, options: object | None = None) -> list[Out]:
        if reservation is None:  # announced now: the batcher dispatches at once instead of waiting out its delay
            with self.batcher.reserve(len(items)) as own:
                return await self.infer(items, own, options)
        outputs = await self.batcher.submit_many(items, reservation)
        return await self.finish(outputs, items, options)

    async def finish(self, outputs: list[Any], items: Sequence[In], options: object | None) -> list[Out]:
        """A request's outputs as the task gets them; by default as the batch step gave them."""
        return outputs

    async def in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    @abstractmethod
    def warm_up_request(self) -> tuple[In, object | None]:
        """One synthetic item (and the request's options), prepared as a task prepares a request's."""

    async def warm_up(self) -> None:
        """The model path at batch sizes 1 and --max-batch-size before anyone is told the model is ready (the model
        process's; a one-process runtime warms the same path through its task); a failure stops the start."""
        item, options = self.warm_up_request()
        for size in sorted({1, self.config.max_batch_size}):
            await self.infer([item] * size, None, options)

    def listen(self, listener: FactsListener) -> None:
        """Call ``listener(facts)`` whenever the facts change (from whichever thread changed them)."""
        with self._listening:
            self._listeners.append(listener)

    def publish(self, facts: FactsT) -> None:
        """New facts (a gallery swapped in): reported from now on, and to every listener."""
        with self._listening:
            self._facts = facts
            listeners = list(self._listeners)
        for listener in listeners:
            listener(facts)
