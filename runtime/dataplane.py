"""The transport-neutral data plane: every transport calls these methods and maps InferenceError to its codes.

A feature is written once here and in its task module, and reached from gRPC,
REST and the Open Inference Protocol alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from kubeinfer import __version__
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.tasks.base import Task
from kubeinfer.runtime.tasks.classify import ClassifyResult, ClassifyTask, ClipFrameInput, ClipResult
from kubeinfer.runtime.tasks.detect import DetectOverrides, DetectResult, DetectTask
from kubeinfer.runtime.tasks.recognize import Recognition, RecognizeOverrides, RecognizeTask
from kubeinfer.runtime.tasks.stream import StreamClassifyTask, StreamFrameInput, StreamPrediction
from kubeinfer.runtime.tasks.video import FrameResult, VideoMessage, VideoSummary, VideoTask
from kubeinfer.runtime.video_ops import PipelineSpec

T = TypeVar("T", bound=Task)

# Which task serves which RPC, for the FAILED_PRECONDITION message.
RPC_TASKS = {
    "Detect": "detect",
    "Classify": "classify or stream-classify",
    "ClassifyClip": "classify or stream-classify",
    "StreamClassify": "stream-classify",
    "Recognize": "recognize",
    "ProcessVideo": "video",
    "ProcessVideoFile": "video",
}


class DataPlane:
    """Holds the served task and the runtime's lifecycle state (loading, ready, draining)."""

    def __init__(self, config: ServeConfig, metrics: RuntimeMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.task: Task | None = None
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.task is not None and not self.draining

    def attach(self, task: Task) -> None:
        self.task = task
        self.metrics.model_ready.labels(self.metrics.model).set(1)

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.model_ready.labels(self.metrics.model).set(0)

    def served(self, kind: type[T], rpc: str) -> T:
        """The task if loaded and of ``kind``; UNAVAILABLE or FAILED_PRECONDITION otherwise.

        While draining, requests that still arrive are served: the transports stop accepting them.
        """
        if self.task is None:
            raise InferenceError(Code.UNAVAILABLE, "the model is still loading")
        if not isinstance(self.task, kind):
            raise InferenceError(
                Code.FAILED_PRECONDITION,
                f"{rpc} needs a runtime serving task {RPC_TASKS.get(rpc, '?')}; this one serves {self.config.task!r}")
        return self.task

    def model_info(self) -> dict[str, Any]:
        c = self.config
        info: dict[str, Any] = {
            "task": c.task, "model_name": c.model_name, "model_path": str(c.model or ""), "device": c.device,
            "version": __version__, "top_k": c.top_k,
            "batching": {"max_batch_size": c.max_batch_size, "max_batch_delay_ms": c.max_batch_delay_ms,
                         "max_queue_size": c.max_queue_size},
            "thresholds": {"confidence": c.confidence, "iou": c.iou, "similarity": c.similarity_threshold},
        }
        if self.task is not None:
            info.update(self.task.info())
        return info

    async def detect(self, images: Sequence[ImageInput], overrides: DetectOverrides) -> list[DetectResult]:
        return await self.served(DetectTask, "Detect").detect(images, overrides)

    async def classify(self, images: Sequence[ImageInput], top_k: int | None) -> list[ClassifyResult]:
        return await self.served(ClassifyTask, "Classify").classify(images, top_k)

    async def classify_clip(self, frames: AsyncIterator[ClipFrameInput]) -> ClipResult:
        return await self.served(ClassifyTask, "ClassifyClip").classify_clip(frames)

    def stream_classify(self, frames: AsyncIterator[StreamFrameInput]) -> AsyncIterator[StreamPrediction]:
        """Predictions of one StreamClassify call, in frame order (an async generator: close it when done)."""
        return self.served(StreamClassifyTask, "StreamClassify").stream(frames)

    async def recognize(self, images: Sequence[ImageInput], overrides: RecognizeOverrides) -> list[Recognition]:
        return await self.served(RecognizeTask, "Recognize").recognize(images, overrides)

    def process_video(self, messages: AsyncIterator[VideoMessage]) -> AsyncIterator[FrameResult]:
        """Processed frames of one ProcessVideo call, in order (an async generator: close it when done)."""
        return self.served(VideoTask, "ProcessVideo").process_video(messages)

    def process_video_file(self, data: bytes, pipeline: PipelineSpec) -> AsyncIterator[FrameResult | VideoSummary]:
        """A video file's processed frames, then its summary (an async generator: close it when done)."""
        return self.served(VideoTask, "ProcessVideoFile").process_video_file(data, pipeline)
