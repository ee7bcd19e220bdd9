"""The shadow mirror: on a replica of the stable revision, ``shadowPercent`` of the successful calls replayed on the
candidate revision and the two answers compared, without ever touching the client's call.

Active only while the traffic table names this replica's revision as stable and a candidate with shadowPercent > 0.
A call is offered only once its answer went out (the gRPC call's done callback; a stream frame once its answer was
written), and mirrored as a task of its own: the client's call never waits for it. Sampling is deterministic:
call n is mirrored when floor(n * percent / 100) grows. At most ``MAX_IN_FLIGHT`` mirrored calls run at once; a
sample beyond that is dropped and counted. The mirrored call carries ``x-kubeinfer-shadow: 1``, and a call that
carries it is never mirrored again. Unary Detect, Classify and Recognize go as themselves (their request's wire
bytes, unparsed); a StreamClassify frame goes as a one-image Classify, compared with the frame's own prediction;
ProcessVideo frames have no matching unary call and are not mirrored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import Traffic
from kubeinfer.runtime.shadow import compare
from kubeinfer.runtime.traffic import TrafficFile
from kubeinfer.v1 import inference_pb2 as pb

log = logging.getLogger("kubeinfer.runtime.shadow")

SHADOW_HEADER = "x-kubeinfer-shadow"
SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name
MAX_IN_FLIGHT = 64
TIMEOUT_SECONDS = 10.0  # a mirrored call that takes longer is an error (and frees its slot)
STREAM_FRAMES_KEPT = 1024  # StreamClassify frames waiting for their answer, per call (the oldest go first)

Comparator = Callable[[Any, Any], compare.Comparison]
# rpc offered -> (rpc called on the candidate, its response type, how the two answers compare)
MIRRORED: dict[str, tuple[str, type[Message], Comparator]] = {
    "Detect": ("Detect", pb.DetectResponse, compare.compare_detect),
    "Classify": ("Classify", pb.ClassifyResponse, compare.compare_classify),
    "Recognize": ("Recognize", pb.RecognizeResponse, compare.compare_recognize),
    "StreamClassify": ("Classify", pb.ClassifyResponse, compare.compare_stream_frame),
}


class Sampler:
    """Deterministic sampling: the n-th offer is taken when floor(n * percent / 100) grows."""

    def __init__(self) -> None:
        self.offered = 0

    def take(self, percent: int) -> bool:
        self.offered += 1
        n = self.offered
        return n * percent // 100 > (n - 1) * percent // 100


class ShadowMirror:
    """One replica's mirror (one per process, on its event loop)."""

    def __init__(self, config: ServeConfig, metrics: RuntimeMetrics, traffic: TrafficFile,
                 max_in_flight: int = MAX_IN_FLIGHT, timeout: float = TIMEOUT_SECONDS) -> None:
        self.revision = config.revision
        self.max_message_bytes = config.max_message_bytes
        self.metrics = metrics
        self.traffic = traffic
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.sampler = Sampler()
        self.in_flight = 0
        self._channel: tuple[str, grpc.aio.Channel] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        model = metrics.model
        self._results = {result: metrics.shadow_requests.labels(model, result)
                         for result in ("compared", "error", "dropped")}
        self._agreement = metrics.shadow_agreement.labels(model)
        self._duration = metrics.shadow_duration.labels(model)

    def active(self) -> Traffic | None:
        """The table while this replica is to mirror (its revision is the stable one, shadowPercent > 0)."""
        table = self.traffic.table
        if (table is None or table.candidate is None or table.shadow_percent <= 0 or table.stable is None
                or not self.revision or table.stable.revision != self.revision):
            return None
        return table

    @staticmethod
    def wanted(rpc: str, metadata: Any) -> bool:
        """Whether a call of ``rpc`` with this invocation metadata may be mirrored at all."""
        return rpc in MIRRORED and not any(key == SHADOW_HEADER for key, _ in metadata or ())

    def after_call(self, context: grpc.aio.ServicerContext, rpc: str, request: bytes, response: Message) -> None:
        """A unary call answered ``response``: offer it once the call is over (its status sent)."""
        if self.active() is not None:
            context.add_done_callback(lambda _: self.offer(rpc, request, response))

    def tap(self, rpc: str) -> StreamTap | None:
        """What follows a StreamClassify call's frames to their answers (None: not mirrored now)."""
        return StreamTap(self, rpc) if rpc == "StreamClassify" and self.active() is not None else None

    def offer(self, rpc: str, request: bytes | Callable[[], bytes], response: Message) -> None:
        """One successful call (``request``: its wire bytes, or how to make them): sampled, then mirrored in a
        task of its own, or dropped when ``max_in_flight`` are running."""
        table = self.active()
        if table is None or table.candidate is None or not self.sampler.take(table.shadow_percent):
            return
        if self.in_flight >= self.max_in_flight:
            self._results["dropped"].inc()
            return
        self.in_flight += 1
        payload = request if isinstance(request, bytes) else request()
        task = asyncio.get_running_loop().create_task(self._mirror(table.candidate.target, rpc, payload, response))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _channel_to(self, target: str) -> grpc.aio.Channel:
        """One channel to the candidate's headless Service, round robin over its pods; a new target replaces it."""
        if self._channel is not None and self._channel[0] == target:
            return self._channel[1]
        if self._channel is not None:
            old = self._channel[1]
            task = asyncio.get_running_loop().create_task(old.close(self.timeout))
            self._tasks.add(task)  # type: ignore[arg-type]
            task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]
        limit = self.max_message_bytes
        channel = grpc.aio.insecure_channel(
            target if target.startswith("dns:") else f"dns:///{target}",
            options=[("grpc.lb_policy_name", "round_robin"), ("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", limit)])
        self._channel = (target, channel)
        return channel

    async def _mirror(self, target: str, rpc: str, request: bytes, response: Message) -> None:
        called, response_type, comparator = MIRRORED[rpc]
        started = time.monotonic()
        try:
            method = self._channel_to(target).unary_unary(
                f"/{SERVICE}/{called}", request_serializer=None, response_deserializer=response_type.FromString)
            answer = await method(request, timeout=self.timeout, metadata=((SHADOW_HEADER, "1"),))
            self._duration.observe(time.monotonic() - started)
            comparison = comparator(response, answer)
        except asyncio.CancelledError:
            self._results["error"].inc()
            raise
        except Exception as exc:  # the candidate failed (or its answer could not be compared): counted, not raised
            self._results["error"].inc()
            log.debug("shadow %s on %s failed: %s", rpc, target, exc)
            return
        finally:
            self.in_flight -= 1
        self._results["compared"].inc()
        self._agreement.inc(comparison.score)
        for name, counts in comparison.classes.items():
            for outcome in ("tp", "fp", "fn"):
                value = getattr(counts, outcome)
                if value:
                    self.metrics.shadow_class_matches.labels(self.metrics.model, name, outcome).inc(value)

    async def close(self) -> None:
        """Stop mirroring: running mirrored calls are cancelled, the channel closed."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._channel is not None:
            await self._channel[1].close()
            self._channel = None


class StreamTap:
    """One StreamClassify call: its frames kept by (stream id, sequence) until their answer is written, then each
    answered frame (without a frame error) offered as a one-image Classify."""

    def __init__(self, mirror: ShadowMirror, rpc: str) -> None:
        self.mirror = mirror
        self.rpc = rpc
        self.frames: dict[tuple[str, int], pb.StreamFrame] = {}

    async def requests(self, frames: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for frame in frames:
            if len(self.frames) >= STREAM_FRAMES_KEPT:
                self.frames.pop(next(iter(self.frames)))
            self.frames[(frame.stream_id, frame.sequence)] = frame
            yield frame

    def answered(self, response: pb.StreamPrediction) -> None:
        frame = self.frames.pop((response.stream_id, response.sequence), None)
        if frame is None or response.HasField("error"):
            return

        def request() -> bytes:
            message = pb.ClassifyRequest(images=[frame.image])
            if frame.HasField("top_k"):
                message.top_k = frame.top_k
            return message.SerializeToString()

        self.mirror.offer(self.rpc, request, response)
