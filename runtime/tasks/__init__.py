"""Task handlers, one module per task: the request side, built around the engine that runs the model."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine.base import Engine, EngineKind
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.tasks.base import Task


def task_class(task: str) -> type[Task]:
    """The handler of ``--task``."""
    if task == "detect":
        from kubeinfer.runtime.tasks.detect import DetectTask

        return DetectTask
    if task == "classify":
        from kubeinfer.runtime.tasks.classify import ClassifyTask

        return ClassifyTask
    if task == "stream-classify":
        from kubeinfer.runtime.tasks.stream import StreamClassifyTask

        return StreamClassifyTask
    if task == "recognize":
        from kubeinfer.runtime.tasks.recognize import RecognizeTask

        return RecognizeTask
    if task == "video":
        from kubeinfer.runtime.tasks.video import VideoTask

        return VideoTask
    raise StartupError(f"task {task!r} is not available in this build")


def engine_kind(config: ServeConfig) -> EngineKind[Any] | None:
    """The kind of model ``--task`` serves (None: a video runtime without --model)."""
    if config.task in ("detect", "video"):
        from kubeinfer.runtime.engine.detector import DETECTOR

        return DETECTOR if config.model is not None else None
    if config.task in ("classify", "stream-classify"):
        from kubeinfer.runtime.engine.classifier import CLASSIFIER

        return CLASSIFIER
    from kubeinfer.runtime.engine.encoder import ENCODER

    return ENCODER


def build_task(config: ServeConfig, engine: Engine[Any, Any, Any] | None, metrics: RuntimeMetrics,
               pool: Executor) -> Task:
    """The request side of ``--task`` around ``engine``."""
    return task_class(config.task)(config, engine, metrics, pool)
