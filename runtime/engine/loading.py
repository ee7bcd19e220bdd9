"""Loading the engine a runtime serves: the one place where the thread budget is set and the model loaded, for the
one-process runtime and the model process alike."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine.base import EngineKind
from kubeinfer.runtime.engine.local import LocalEngine
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.models import threads


async def load_engine(kind: EngineKind[Any] | None, config: ServeConfig, metrics: RuntimeMetrics, pool: Executor,
                      preflight: Callable[[], None] | None = None) -> LocalEngine[Any, Any, Any] | None:
    """``kind``'s model with its batcher (None: the runtime serves no model), in a thread of its own that ends
    once it is loaded (``models.threads`` says why). ``preflight`` first (checks that need no model, so a broken
    file fails before a large model loads), then the thread budget (torch's thread count must be set before its
    first parallel work), then the model."""

    def load() -> LocalEngine[Any, Any, Any] | None:
        if preflight is not None:
            preflight()
        if kind is None:
            return None
        threads.configure(config.model_threads, spinning=config.model_spinning, instances=config.model_instances)
        return kind.load(config, metrics, pool)

    return await threads.in_passing_thread(load)
