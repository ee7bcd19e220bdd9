"""The tasks, one module each, registered in ``registry``: the request side, built around the engine that runs the
model. A new task is one module here (its Task, its RPCs and their codecs, its flags) and its proto messages."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine.base import Engine, EngineKind
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.tasks.base import Task
from kubeinfer.runtime.tasks.registry import spec_of


def task_class(config: ServeConfig) -> type[Task]:
    """The request side of ``--task``."""
    return spec_of(config.task).task


def engine_kind(config: ServeConfig) -> EngineKind[Any] | None:
    """The kind of model ``--task`` serves (None: a task whose model is optional, started without one)."""
    return spec_of(config.task).engine_kind(config)


def build_task(config: ServeConfig, engine: Engine[Any, Any, Any] | None, metrics: RuntimeMetrics,
               pool: Executor) -> Task:
    """The request side of ``--task`` around ``engine``."""
    return task_class(config)(config, engine, metrics, pool)
