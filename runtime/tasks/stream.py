"""Stream classification: per-frame predictions averaged over a window of each client's stream.

A StreamClassify call may interleave several streams, each frame tagged with a
stream id and an input mode. Window state is the mean of the class probabilities
of that stream's last ``--window`` frames, keyed by (call, stream id): two calls
never share state, even with equal stream ids, and a call's streams end with it.
A frame with ``resume`` set is the exception: its window is keyed by the stream id
alone and outlives the call, so a client that reconnects (or another client, or a
client routed here after a replica went away) continues it; the prediction says
``window_restarted`` when this replica held no window for the id.
Streams idle for ``--stream-idle-seconds`` are evicted; past ``--max-streams``
open streams, a frame opening a new one is answered with RESOURCE_EXHAUSTED (as
that frame's error: the call and its other streams go on). Frames of every
stream and call go through the one batcher of the model, as Classify requests do.
Windows live in the process that owns the call: behind ``--frontends N`` each
frontend holds its own calls' windows (and its resumable ones), and only the
frames cross to the model process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import numpy as np

from kubeinfer.runtime import codec
from kubeinfer.runtime.concurrency import ordered_map
from kubeinfer.runtime.config import Flag, ServeConfig, at_least
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.engine.classifier import CLASSIFIER, ClassifierFacts
from kubeinfer.runtime.errors import Code, InferenceError, Overloaded, public_error
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.tasks.base import MAX_STREAMS, TOP_K
from kubeinfer.runtime.tasks.classify import (
    CLASSIFY,
    CLASSIFY_CLIP,
    ClassifyResult,
    ClassifyTask,
    classify_result_to_proto,
)
from kubeinfer.runtime.tasks.registry import StreamingRpc, TaskSpec, register
from kubeinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)
GROUP = "stream-classify"
WINDOW = Flag("window", int, 8, "frames averaged per stream", GROUP, at_least(1, "window"))
STREAM_IDLE_SECONDS = Flag("stream-idle-seconds", float, 300.0, "evict a stream idle this long", GROUP,
                           lambda seconds: None if seconds > 0 else "--stream-idle-seconds must be positive")


@dataclass(frozen=True, slots=True)
class StreamFrameInput:
    stream_id: str
    mode: str  # input mode / source name, echoed back
    sequence: int  # echoed back
    image: ImageInput
    top_k: int | None = None
    resume: bool = False  # the window is kept by stream id alone, beyond the call


@dataclass(frozen=True, slots=True)
class FrameError:
    code: Code
    message: str


@dataclass(frozen=True, slots=True)
class StreamPrediction:
    stream_id: str
    mode: str
    sequence: int
    raw: ClassifyResult | None  # this frame alone
    averaged: ClassifyResult | None  # mean over the stream's last `window` frames
    window_fill: int  # frames in the window now
    error: FrameError | None = None  # set instead of the predictions when this frame failed
    window_restarted: bool = False  # resume only: the frame opened a new window (none was held for the id)


class StreamWindow:
    """The last ``size`` probability vectors of one stream. Touched only on the event loop."""

    def __init__(self, size: int, now: float) -> None:
        self._frames: deque[np.ndarray] = deque(maxlen=size)
        self.last_seen = now

    def add(self, probabilities: np.ndarray) -> tuple[np.ndarray, int]:
        """Push a frame; the window's mean (recomputed exactly, no drifting running sum) and fill."""
        self._frames.append(probabilities)
        mean = np.stack(self._frames).mean(axis=0, dtype=np.float64)
        return mean.astype(np.float32), len(self._frames)

    @property
    def fill(self) -> int:
        return len(self._frames)


RESUMABLE = 0  # the call part of a resumable stream's key: no call owns it (call ids start at 1)


class StreamRegistry:
    """Every open stream's window, keyed by (call, stream id) or, resumable, by (RESUMABLE, stream id): bounded,
    idle ones evicted. Thread-safe."""

    def __init__(self, window: int, max_streams: int, idle_seconds: float,
                 on_change: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_streams = max_streams
        self.idle_seconds = idle_seconds
        self._on_change = on_change
        self._clock = clock
        self._streams: OrderedDict[tuple[int, str], StreamWindow] = OrderedDict()  # least recently seen first
        self._calls: dict[int, set[str]] = {}
        self._call_ids = itertools.count(1)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._streams)

    def open_call(self) -> int:
        """A new call's id: its streams are its own."""
        with self._lock:
            call = next(self._call_ids)
            self._calls[call] = set()
            return call

    def admit(self, call: int, stream_id: str) -> StreamWindow:
        """The call's stream's window, opening it if new; RESOURCE_EXHAUSTED when --max-streams are open."""
        return self._admit(call, stream_id)[0]

    def resume(self, stream_id: str) -> tuple[StreamWindow, bool]:
        """The window kept for ``stream_id`` across calls, and whether it was opened now (none was held)."""
        return self._admit(RESUMABLE, stream_id)

    def _admit(self, call: int, stream_id: str) -> tuple[StreamWindow, bool]:
        now = self._clock()
        key = (call, stream_id)
        with self._lock:
            window = self._streams.get(key)
            if window is not None:
                window.last_seen = now
                self._streams.move_to_end(key)
                return window, False
            evicted = self._evict_locked(now)
            count = len(self._streams)
            if count >= self.max_streams:
                if evicted:
                    self._notify(count)
                raise Overloaded(f"stream {stream_id!r} refused: {count} streams are open, the limit is "
                                 f"{self.max_streams} (--max-streams); retry later")
            window = StreamWindow(self.window, now)
            self._streams[key] = window
            if call != RESUMABLE:
                self._calls.setdefault(call, set()).add(stream_id)
            self._notify(count + 1)
            return window, True

    def close_call(self, call: int) -> None:
        """The call ended: its streams' state goes with it."""
        with self._lock:
            for stream_id in self._calls.pop(call, set()):
                self._streams.pop((call, stream_id), None)
            self._notify(len(self._streams))

    def evict_idle(self) -> int:
        """Drop streams idle longer than the limit; how many were dropped."""
        with self._lock:
            evicted = self._evict_locked(self._clock())
            if evicted:
                self._notify(len(self._streams))
        return evicted

    def _evict_locked(self, now: float) -> int:
        evicted = 0
        while self._streams:
            (call, stream_id), window = next(iter(self._streams.items()))
            if now - window.last_seen < self.idle_seconds:
                break
            del self._streams[(call, stream_id)]
            self._calls.get(call, set()).discard(stream_id)
            evicted += 1
            owner = "resumable" if call == RESUMABLE else f"of call {call}"
            log.info("stream %r %s evicted after %.0fs idle", stream_id, owner, now - window.last_seen)
        return evicted

    def _notify(self, count: int) -> None:
        """Report the count under the lock, so concurrent changes cannot land out of order."""
        if self._on_change is not None:
            self._on_change(count)


@dataclass(slots=True)
class _InFlight:
    frame: StreamFrameInput
    window: StreamWindow | None
    top_k: int
    job: asyncio.Future[list[np.ndarray]] | None
    error: InferenceError | None = None
    restarted: bool = False  # a resumed stream's window was opened by this frame
    probabilities: np.ndarray | None = None


class StreamClassifyTask(ClassifyTask):
    """Stream-classify: ClassifyTask plus the per-stream windows; Classify and ClassifyClip work here too."""

    name = "stream-classify"

    def __init__(self, config: ServeConfig, engine: Engine[np.ndarray, np.ndarray, ClassifierFacts],
                 metrics: RuntimeMetrics, pool: Executor) -> None:
        super().__init__(config, engine, metrics, pool)
        gauge = metrics.active_streams.labels(metrics.model, self.name)
        self.window, self.max_streams = config.flag(WINDOW), config.flag(MAX_STREAMS)
        self.idle_seconds = config.flag(STREAM_IDLE_SECONDS)
        self.registry = StreamRegistry(self.window, self.max_streams, self.idle_seconds, on_change=gauge.set)
        gauge.set(0)
        self._stopping = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="stream-eviction", daemon=True)

    def start(self) -> None:
        self._sweeper.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._sweeper.is_alive():
            self._sweeper.join()

    def _sweep(self) -> None:
        """Evict idle streams even when no frame arrives, so the gauge and ModelInfo stay true."""
        interval = min(1.0, max(0.05, self.idle_seconds / 4))
        while not self._stopping.wait(interval):
            self.registry.evict_idle()

    def info(self, base: ModelInfo) -> ModelInfo:
        return replace(super().info(base), window=self.window, active_streams=len(self.registry),
                       max_streams=self.max_streams)

    async def stream(self, frames: AsyncIterable[StreamFrameInput]) -> AsyncIterator[StreamPrediction]:
        """One call: predictions in the order the frames came, while later frames are already being batched.

        ``ordered_map`` bounds the frames in flight (the call's flow control); each frame's stream is
        admitted when the frame is read, and its window updated when its prediction is sent, both in order.
        """
        call = self.registry.open_call()
        index = itertools.count()

        def begin(frame: StreamFrameInput) -> asyncio.Future[_InFlight]:
            return self._settled(self._begin(call, frame, next(index)))

        try:
            async with contextlib.aclosing(ordered_map(aiter(frames), begin, self.pipeline_depth)) as entries:
                async for entry in entries:
                    yield self._predict(entry)
        finally:
            self.registry.close_call(call)

    def _begin(self, call: int, frame: StreamFrameInput, index: int) -> _InFlight:
        try:
            window, restarted = (self.registry.resume(frame.stream_id) if frame.resume
                                 else (self.registry.admit(call, frame.stream_id), False))
        except InferenceError as exc:
            return _InFlight(frame, None, 0, None, exc)
        try:
            k = self.resolve_top_k(frame.top_k)
        except InferenceError as exc:
            return _InFlight(frame, window, 0, None, exc, restarted=restarted)
        return _InFlight(frame, window, k, asyncio.ensure_future(self.probabilities([frame.image], index)),
                         restarted=restarted)

    @staticmethod
    def _settled(entry: _InFlight) -> asyncio.Future[_InFlight]:
        """``entry`` once its inference finished (its failure kept as the frame's error); cancelling it cancels
        the inference."""
        settled: asyncio.Future[_InFlight] = asyncio.get_running_loop().create_future()
        job = entry.job
        if job is None:
            settled.set_result(entry)
            return settled

        def finished(done: asyncio.Future[list[np.ndarray]]) -> None:
            if settled.done():
                return
            if done.cancelled():
                settled.cancel()
                return
            error = done.exception()
            if error is None:
                entry.probabilities = done.result()[0]
            else:
                frame = entry.frame
                entry.error = public_error(error, f"frame {frame.sequence} of stream {frame.stream_id!r}")
            settled.set_result(entry)

        job.add_done_callback(finished)
        settled.add_done_callback(lambda f: job.cancel() if f.cancelled() else None)
        return settled

    def _predict(self, entry: _InFlight) -> StreamPrediction:
        frame = entry.frame
        if entry.error is not None or entry.probabilities is None or entry.window is None:
            error = entry.error or public_error(RuntimeError("frame settled without a result"))
            fill = entry.window.fill if entry.window is not None else 0
            return StreamPrediction(frame.stream_id, frame.mode, frame.sequence, None, None, fill,
                                    FrameError(error.code, error.message), entry.restarted)
        probabilities = entry.probabilities
        averaged, fill = entry.window.add(probabilities)
        self.metrics.frames.labels(self.metrics.model, self.name).inc()
        return StreamPrediction(frame.stream_id, frame.mode, frame.sequence, self.top(probabilities, entry.top_k),
                                self.top(averaged, entry.top_k), fill, window_restarted=entry.restarted)


# -- the RPC: its codec (Classify and ClassifyClip are the classify task's)

async def frames_from_proto(frames: AsyncIterator[pb.StreamFrame]) -> AsyncIterator[StreamFrameInput]:
    async for frame in frames:
        yield StreamFrameInput(frame.stream_id, frame.mode, frame.sequence, codec.image_from_proto(frame.image),
                               frame.top_k if frame.HasField("top_k") else None, frame.resume)


def prediction_to_proto(prediction: StreamPrediction) -> pb.StreamPrediction:
    message = pb.StreamPrediction(stream_id=prediction.stream_id, mode=prediction.mode,
                                  sequence=prediction.sequence, window_fill=prediction.window_fill,
                                  window_restarted=prediction.window_restarted)
    if prediction.error is not None:
        message.error.code = prediction.error.code.value
        message.error.message = prediction.error.message
    if prediction.raw is not None:
        message.raw.CopyFrom(classify_result_to_proto(prediction.raw))
    if prediction.averaged is not None:
        message.averaged.CopyFrom(classify_result_to_proto(prediction.averaged))
    return message


async def stream_classify(task: StreamClassifyTask,
                          frames: AsyncIterator[pb.StreamFrame]) -> AsyncIterator[pb.StreamPrediction]:
    async with contextlib.aclosing(task.stream(frames_from_proto(frames))) as predictions:
        async for prediction in predictions:
            yield prediction_to_proto(prediction)


STREAM_CLASSIFY = StreamingRpc("StreamClassify", pb.StreamFrame, pb.StreamPrediction, requests_stream=True,
                               responses_stream=True, handle=stream_classify)

register(TaskSpec("stream-classify", StreamClassifyTask, CLASSIFIER, (CLASSIFY, CLASSIFY_CLIP, STREAM_CLASSIFY),
                  oip=CLASSIFY, flags=(TOP_K, WINDOW, MAX_STREAMS, STREAM_IDLE_SECONDS)))
