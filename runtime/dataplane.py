"""The transport-neutral data plane: every transport calls these methods; errors are InferenceErrors.

A feature is written once here and in its task module, and reached from gRPC, REST and the Open
Inference Protocol alike. Which task serves which RPC is checked here and only here (``served``).
The task modules are imported for their types only: the data plane loads no model library itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from kubeinfer import __version__
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.errors import Overloaded, PayloadTooLarge, Unavailable, WrongTask
from kubeinfer.runtime.images import ImageInput, declared_pixels
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import Batching, ModelInfo
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.video.pipeline_spec import PipelineSpec

if TYPE_CHECKING:
    from kubeinfer.runtime.detection import DetectResult
    from kubeinfer.runtime.gallery import Recognition
    from kubeinfer.runtime.tasks.base import Task
    from kubeinfer.runtime.tasks.classify import ClassifyResult, ClassifyTask, ClipFrameInput, ClipResult
    from kubeinfer.runtime.tasks.detect import DetectTask
    from kubeinfer.runtime.tasks.recognize import RecognizeTask
    from kubeinfer.runtime.tasks.stream import StreamClassifyTask, StreamFrameInput, StreamPrediction
    from kubeinfer.runtime.tasks.video import FrameResult, VideoMessage, VideoSummary, VideoTask

# Which tasks (by --task name) serve which RPC.
RPC_TASKS: dict[str, tuple[str, ...]] = {
    "Detect": ("detect",),
    "Classify": ("classify", "stream-classify"),
    "ClassifyClip": ("classify", "stream-classify"),
    "StreamClassify": ("stream-classify",),
    "Recognize": ("recognize",),
    "ProcessVideo": ("video",),
    "ProcessVideoFile": ("video",),
}


class ByteBudget:
    """The request bytes being served at once, over every transport (--max-inflight-bytes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def acquire(self, size: int) -> int:
        """Count ``size`` bytes in (release them with ``release``); Overloaded when they do not fit now."""
        if self.used + size > self.limit:
            raise Overloaded(f"{self.used} request bytes are being served, {size} more would pass the limit of "
                             f"{self.limit} (--max-inflight-bytes); retry later")
        self.used += size
        return size

    def release(self, size: int) -> None:
        self.used -= size


class DataPlane:
    """Holds the served task and the runtime's lifecycle state (loading, ready, draining), and checks each
    request's limits before any work is done for it."""

    def __init__(self, config: ServeConfig, metrics: RuntimeMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.task: Task | None = None
        self.draining = False
        self.request_bytes = ByteBudget(config.max_inflight_bytes)

    @property
    def ready(self) -> bool:
        return self.task is not None and not self.draining

    def attach(self, task: Task) -> None:
        self.task = task
        self.metrics.model_ready.labels(self.metrics.model).set(1)

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.model_ready.labels(self.metrics.model).set(0)

    def served(self, rpc: str) -> Any:
        """The task if loaded and serving ``rpc``; UNAVAILABLE or FAILED_PRECONDITION otherwise.

        Transports may call it before reading a request's body. While draining, requests that still
        arrive are served: the transports stop accepting them.
        """
        if self.task is None:
            raise Unavailable("the model is still loading")
        tasks = RPC_TASKS[rpc]
        if self.config.task not in tasks:
            raise WrongTask(f"{rpc} needs a runtime serving task {' or '.join(tasks)}; "
                            f"this one serves {self.config.task!r}")
        return self.task

    def check_images(self, images: Sequence[ImageInput]) -> None:
        """--max-images-per-request and --max-request-pixels (from headers), before anything is decoded."""
        c = self.config
        if len(images) > c.max_images_per_request:
            raise PayloadTooLarge(f"the request holds {len(images)} images, the limit is "
                                  f"{c.max_images_per_request} (--max-images-per-request)")
        total = 0
        for image in images:
            total += declared_pixels(image)
            if total > c.max_request_pixels:
                raise PayloadTooLarge(f"the request's images hold more than {c.max_request_pixels} pixels together "
                                      "(--max-request-pixels)")

    def model_info(self) -> ModelInfo:
        c = self.config
        # the file's name, never its path: clients have no business with the server's file system
        info = ModelInfo(task=c.task, model_name=c.model_name, model_path=c.model.name if c.model else "",
                         device=c.device, version=__version__,
                         batching=Batching(c.max_batch_size, c.max_batch_delay_ms, c.max_queue_size,
                                           c.model_instances, c.model_threads))
        return self.task.info(info) if self.task is not None else info

    async def detect(self, images: Sequence[ImageInput], params: Parameters) -> list[DetectResult]:
        task = cast("DetectTask", self.served("Detect"))
        self.check_images(images)
        return await task.detect(images, params)

    async def classify(self, images: Sequence[ImageInput], top_k: int | None) -> list[ClassifyResult]:
        task = cast("ClassifyTask", self.served("Classify"))
        self.check_images(images)
        return await task.classify(images, top_k)

    async def classify_clip(self, frames: AsyncIterator[ClipFrameInput]) -> ClipResult:
        return await cast("ClassifyTask", self.served("ClassifyClip")).classify_clip(frames)

    def stream_classify(self, frames: AsyncIterator[StreamFrameInput]) -> AsyncIterator[StreamPrediction]:
        """Predictions of one StreamClassify call, in frame order (an async generator: close it when done)."""
        return cast("StreamClassifyTask", self.served("StreamClassify")).stream(frames)

    async def recognize(self, images: Sequence[ImageInput], params: Parameters) -> list[Recognition]:
        task = cast("RecognizeTask", self.served("Recognize"))
        self.check_images(images)
        return await task.recognize(images, params)

    def process_video(self, messages: AsyncIterator[VideoMessage]) -> AsyncIterator[FrameResult]:
        """Processed frames of one ProcessVideo call, in order (an async generator: close it when done)."""
        return cast("VideoTask", self.served("ProcessVideo")).process_video(messages)

    def process_video_file(self, data: bytes, pipeline: PipelineSpec) -> AsyncIterator[FrameResult | VideoSummary]:
        """A video file's processed frames, then its summary (an async generator: close it when done)."""
        return cast("VideoTask", self.served("ProcessVideoFile")).process_video_file(data, pipeline)
