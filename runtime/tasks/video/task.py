"""Video: frames streamed in, processed with OpenCV (and the detector), streamed back in order.

Two calls share one per-frame path. ``process_video`` takes frames as the client
sends them; ``process_video_file`` decodes an uploaded file with cv2.VideoCapture in
the worker pool. Either way ``concurrency.ordered_map`` keeps at most ``--max-frames-in-flight``
frames of a stream between reading and sending: it pulls the next frame only after
an earlier one was sent, so a slow client slows its own reading (gRPC flow control
does the rest) and nothing is read ahead without bound. Frames of every stream meet
in the detector engine's one dynamic batcher. A stream's pipeline (its OpenCV work,
its decoder) lives in the process that owns the call: behind ``--frontends N`` only
the ``detect`` operation's letterboxed frames cross to the model process. A cancelled call closes its generators at
once: pending frames are cancelled (the batcher skips them) and the stream is
no longer counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from kubeinfer.runtime import codec
from kubeinfer.runtime.concurrency import ordered_map
from kubeinfer.runtime.config import Flag, ServeConfig, at_least, within
from kubeinfer.runtime.detection import FLAGS as DETECTION_FLAGS
from kubeinfer.runtime.detection import DetectionRequests, detection_to_proto
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.engine.detector import DETECTOR, DetectorFacts
from kubeinfer.runtime.errors import InferenceError, Overloaded, invalid_argument, public_error
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.models.yolo_io import BatchItem, Detection
from kubeinfer.runtime.tasks.base import MAX_STREAMS, Task
from kubeinfer.runtime.tasks.registry import StreamingRpc, TaskSpec, register
from kubeinfer.runtime.tasks.video.ops import (
    OPERATIONS,
    EncodedFrame,
    FaceCascade,
    Pipeline,
    finish_frame,
    parse_pipeline,
    run_pipeline,
    start_frame,
)
from kubeinfer.runtime.tasks.video.pipeline_spec import OpSpec, PipelineSpec
from kubeinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)
MAX_FRAMES_IN_FLIGHT = Flag("max-frames-in-flight", int, 8, "frames of one stream being processed at once (flow "
                            "control)", "video", at_least(1, "max-frames-in-flight"))
JPEG_QUALITY = Flag("jpeg-quality", int, 85, "default JPEG quality of processed frames", "video",
                    within(1, 100, "jpeg-quality", "1..100"))


@dataclass(frozen=True, slots=True)
class VideoMessage:
    """One message of a ProcessVideo call: the pipeline (first message) and/or a frame."""

    stream_id: str = ""
    sequence: int = 0
    image: ImageInput | None = None
    pipeline: PipelineSpec | None = None


@dataclass(slots=True)
class FrameResult:
    """A processed frame, or the error of that frame (``error`` set, no JPEG)."""

    stream_id: str
    sequence: int
    jpeg: bytes = b""
    width: int = 0
    height: int = 0
    detections: list[Detection] = field(default_factory=list)
    error: InferenceError | None = None


@dataclass(frozen=True, slots=True)
class VideoSummary:
    """Sent after the last frame of a video file: frames decoded, the file's frame rate and frame size."""

    frame_count: int
    fps: float
    width: int
    height: int


class VideoTask(Task):
    """The OpenCV operations, plus ``detect`` when the runtime was started with a detector (its engine)."""

    name = "video"

    def __init__(self, config: ServeConfig, engine: Engine[BatchItem, list[Detection], DetectorFacts] | None,
                 metrics: RuntimeMetrics, pool: Executor) -> None:
        super().__init__(config, engine, metrics, pool)
        self.engine = engine
        self.detector = DetectionRequests(config, engine.facts) if engine is not None else None
        self.faces = FaceCascade()
        self.max_streams, self.frames_in_flight = config.flag(MAX_STREAMS), config.flag(MAX_FRAMES_IN_FLIGHT)
        self.jpeg_quality = config.flag(JPEG_QUALITY)
        self.active_streams = 0
        self._streams_gauge = metrics.active_streams.labels(metrics.model, self.name)
        self._frames = metrics.frames.labels(metrics.model, self.name)
        self._images = metrics.images.labels(metrics.model, self.name)
        self._streams_gauge.set(0)

    @property
    def operations(self) -> list[str]:
        return [op for op in OPERATIONS if op != "detect" or self.detector is not None]

    def info(self, base: ModelInfo) -> ModelInfo:
        info = replace(base, operations=tuple(self.operations), active_streams=self.active_streams,
                       max_streams=self.max_streams)
        if self.detector is None:
            return info
        facts = self.detector.facts
        return replace(info, model_format=facts.format, labels=tuple(facts.labels), input_size=facts.image_size,
                       thresholds=self.detector.thresholds())

    async def serve_warm_up(self, images: list[ImageInput]) -> None:
        """The frame path: every OpenCV operation, and the detector when there is one."""
        pipeline = self.pipeline(PipelineSpec(tuple(OpSpec.of(n, {"width": 64} if n == "resize" else None)
                                                    for n in self.operations)))
        results = await asyncio.gather(*(self._run(pipeline, i, image) for i, image in enumerate(images)))
        assert all(r.jpeg for r in results)

    def pipeline(self, spec: PipelineSpec) -> Pipeline:
        return parse_pipeline(spec, detector=self.detector, faces=self.faces,
                              default_quality=self.jpeg_quality, max_pixels=self.config.max_image_pixels)

    async def process_video(self, messages: AsyncIterator[VideoMessage]) -> AsyncIterator[FrameResult]:
        """Processed frames in the order received; the first message must carry the pipeline."""
        first = await anext(messages, None)
        if first is None:
            return
        if first.pipeline is None:
            raise invalid_argument("the first message of a ProcessVideo call must carry the pipeline")
        spec = first.pipeline
        pipeline = self.pipeline(spec)

        async def frames() -> AsyncIterator[VideoMessage]:
            if first.image is not None:
                yield first
            async for message in messages:
                if message.pipeline is not None and message.pipeline != spec:
                    raise invalid_argument(
                        f"frame {message.sequence}: the pipeline cannot change within a call; open a new call")
                yield message

        def process(message: VideoMessage) -> Awaitable[FrameResult]:
            image = message.image if message.image is not None else ImageInput()
            return self._process(pipeline, message.stream_id, message.sequence, image)

        with self._stream():
            async with contextlib.aclosing(ordered_map(frames(), process, self.frames_in_flight)) as out:
                async for result in out:
                    yield result

    async def process_video_file(self, data: bytes, spec: PipelineSpec) -> AsyncIterator[FrameResult | VideoSummary]:
        """Every decodable frame of the file, processed and in order, then a summary."""
        pipeline = self.pipeline(spec)
        if not data:
            raise invalid_argument("the video file is empty")
        with self._stream():
            reader = await self.in_pool(VideoFileReader, data, self.config.max_image_pixels)
            try:
                async def frames() -> AsyncIterator[tuple[int, np.ndarray]]:
                    while (pixels := await self.in_pool(reader.read)) is not None:
                        yield reader.decoded - 1, pixels

                def process(item: tuple[int, np.ndarray]) -> Awaitable[FrameResult]:
                    return self._process(pipeline, "", item[0], item[1])

                limit = self.frames_in_flight
                async with contextlib.aclosing(ordered_map(frames(), process, limit)) as out:
                    async for result in out:
                        yield result
                yield VideoSummary(reader.decoded, reader.fps, reader.width, reader.height)
            finally:
                self._close_later(reader)

    def _close_later(self, reader: VideoFileReader) -> None:
        """Free the decoder in the pool, after any read of a cancelled call still running there."""
        try:
            self.pool.submit(reader.close)
        except RuntimeError:  # the pool is shut down: nothing reads any more
            reader.close()

    @contextlib.contextmanager
    def _stream(self) -> Any:
        """Count an open stream (ModelInfo and the active-streams gauge); refuse beyond --max-streams."""
        if self.active_streams >= self.max_streams:
            raise Overloaded(f"{self.active_streams} video streams are open, the limit (--max-streams) is "
                             f"{self.max_streams}; retry later")
        self.active_streams += 1
        self._streams_gauge.set(self.active_streams)
        try:
            yield
        finally:
            self.active_streams -= 1
            self._streams_gauge.set(self.active_streams)

    async def _process(self, pipeline: Pipeline, stream_id: str, sequence: int,
                       source: ImageInput | np.ndarray) -> FrameResult:
        """One frame through the pipeline; its failure becomes that frame's error, not the stream's."""
        try:
            encoded = await self._run(pipeline, sequence, source)
        except InferenceError as exc:
            return FrameResult(stream_id, sequence, error=exc)
        except Exception as exc:  # an OpenCV failure on one odd frame must not end the stream
            error = public_error(exc, f"frame {sequence} of stream {stream_id!r}")
            return FrameResult(stream_id, sequence, error=error)
        self._frames.inc()
        return FrameResult(stream_id, sequence, encoded.jpeg, encoded.width, encoded.height, encoded.detections)

    async def _run(self, pipeline: Pipeline, sequence: int, source: ImageInput | np.ndarray) -> EncodedFrame:
        if pipeline.detect is None:
            return await self.in_pool(self._whole, pipeline, sequence, source)
        engine = self.engine
        assert engine is not None
        with engine.reserve(1) as reservation:
            frame, boxed = await self.in_pool(self._first_half, pipeline, sequence, source)
            assert boxed is not None
            (found,) = await engine.infer([boxed], reservation)
        self._images.inc()
        return await self.in_pool(finish_frame, pipeline, frame, found)

    def _pixels(self, sequence: int, source: ImageInput | np.ndarray) -> np.ndarray:
        if isinstance(source, np.ndarray):
            return source
        try:
            return self.decode(source, sequence)
        except InferenceError as exc:  # name the frame, not an "image"
            raise InferenceError(exc.code, f"frame {sequence}: {exc.message.removeprefix(f'image {sequence}: ')}") \
                from None

    def _whole(self, pipeline: Pipeline, sequence: int, source: ImageInput | np.ndarray) -> EncodedFrame:
        return run_pipeline(pipeline, self._pixels(sequence, source))

    def _first_half(self, pipeline: Pipeline, sequence: int, source: ImageInput | np.ndarray) -> Any:
        return start_frame(pipeline, self._pixels(sequence, source))


class VideoFileReader:
    """cv2.VideoCapture over an uploaded file, used from the worker pool one call at a time.

    The bytes go to a temporary file (OpenCV's FFmpeg backend reads files, not
    memory), which is unlinked as soon as the decoder holds it open. A lock makes
    ``close`` wait for a ``read`` still running, since freeing a decoder mid-read crashes.
    """

    def __init__(self, data: bytes, max_pixels: int) -> None:
        self._lock = threading.Lock()
        self.decoded = 0
        handle, path = tempfile.mkstemp(prefix="kubeinfer-video-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            self._capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        finally:
            os.unlink(path)
        try:
            if not self._capture.isOpened():
                raise invalid_argument("the video file is not in a format OpenCV can decode (MP4, AVI, MJPEG...)")
            self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
            self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            fps = float(self._capture.get(cv2.CAP_PROP_FPS))
            self.fps = fps if fps > 0 and np.isfinite(fps) else 0.0
            if self.width * self.height > max_pixels:
                raise invalid_argument(f"video frames of {self.width}x{self.height} exceed the limit of {max_pixels} "
                                       "pixels (--max-image-pixels)")
            ok, first = self._capture.read()
            if not ok or first is None:
                raise invalid_argument("the video file holds no decodable frame")
        except BaseException:
            self._capture.release()
            raise
        self._next: np.ndarray | None = first

    def read(self) -> np.ndarray | None:
        """The next frame (BGR), or None at the end of the file."""
        with self._lock:
            if self._next is not None:
                frame, self._next = self._next, None
            else:
                if not self._capture.isOpened():
                    return None
                ok, frame = self._capture.read()
                if not ok or frame is None:
                    return None
            self.decoded += 1
            return frame

    def close(self) -> None:
        with self._lock:
            self._next = None
            self._capture.release()


# -- the RPCs: their codecs

def pipeline_from_proto(pipeline: pb.VideoPipeline) -> PipelineSpec:
    return PipelineSpec(
        operations=tuple(OpSpec.of(op.name, dict(op.params)) for op in pipeline.operations),
        jpeg_quality=pipeline.jpeg_quality if pipeline.HasField("jpeg_quality") else None,
    )


async def messages_from_proto(requests: AsyncIterator[pb.VideoRequest]) -> AsyncIterator[VideoMessage]:
    async for request in requests:
        yield VideoMessage(
            stream_id=request.stream_id, sequence=request.sequence,
            image=codec.image_from_proto(request.image) if request.HasField("image") else None,
            pipeline=pipeline_from_proto(request.pipeline) if request.HasField("pipeline") else None,
        )


def frame_to_proto(frame: FrameResult) -> pb.ProcessedFrame:
    message = pb.ProcessedFrame(stream_id=frame.stream_id, sequence=frame.sequence)
    if frame.error is not None:
        message.error.code = frame.error.code.value
        message.error.message = frame.error.message
        return message
    message.jpeg, message.width, message.height = frame.jpeg, frame.width, frame.height
    message.detections.extend(detection_to_proto(d) for d in frame.detections)
    return message


def file_event_to_proto(event: FrameResult | VideoSummary) -> pb.VideoFileEvent:
    if isinstance(event, VideoSummary):
        return pb.VideoFileEvent(summary=pb.VideoSummary(frame_count=event.frame_count, fps=event.fps,
                                                         width=event.width, height=event.height))
    return pb.VideoFileEvent(frame=frame_to_proto(event))


async def process_video(task: VideoTask, requests: AsyncIterator[pb.VideoRequest]) -> AsyncIterator[pb.ProcessedFrame]:
    async with contextlib.aclosing(task.process_video(messages_from_proto(requests))) as frames:
        async for frame in frames:
            yield frame_to_proto(frame)


async def process_video_file(task: VideoTask, request: pb.VideoFileRequest) -> AsyncIterator[pb.VideoFileEvent]:
    events = task.process_video_file(request.video, pipeline_from_proto(request.pipeline))
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            yield file_event_to_proto(event)


PROCESS_VIDEO = StreamingRpc("ProcessVideo", pb.VideoRequest, pb.ProcessedFrame, requests_stream=True,
                             responses_stream=True, handle=process_video)
PROCESS_VIDEO_FILE = StreamingRpc("ProcessVideoFile", pb.VideoFileRequest, pb.VideoFileEvent, requests_stream=False,
                                  responses_stream=True, handle=process_video_file)

register(TaskSpec("video", VideoTask, DETECTOR, (PROCESS_VIDEO, PROCESS_VIDEO_FILE), model_optional=True,
                  flags=(MAX_FRAMES_IN_FLIGHT, JPEG_QUALITY, MAX_STREAMS, *DETECTION_FLAGS)))
