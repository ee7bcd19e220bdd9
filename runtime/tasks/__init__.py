"""Task handlers, one module per task. ``build_task`` picks the handler for ``--task``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.tasks.base import Task


def build_task(config: ServeConfig, metrics: RuntimeMetrics, pool: ThreadPoolExecutor) -> Task:
    """Load the model for ``config.task`` (blocking: call it from a thread) and return its handler."""
    if config.task == "detect":
        from kubeinfer.runtime.tasks.detect import DetectTask

        return DetectTask(config, metrics, pool)
    if config.task == "classify":
        from kubeinfer.runtime.tasks.classify import ClassifyTask

        return ClassifyTask(config, metrics, pool)
    if config.task == "stream-classify":
        from kubeinfer.runtime.tasks.stream import StreamClassifyTask

        return StreamClassifyTask(config, metrics, pool)
    if config.task == "recognize":
        from kubeinfer.runtime.tasks.recognize import RecognizeTask

        return RecognizeTask(config, metrics, pool)
    if config.task == "video":
        from kubeinfer.runtime.tasks.video import VideoTask

        return VideoTask(config, metrics, pool)
    raise StartupError(f"task {config.task!r} is not available in this build")
