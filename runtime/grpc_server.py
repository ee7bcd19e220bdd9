"""gRPC transport: kubeinfer.v1.Inference over grpc.aio, plus the standard health and reflection services.

Servicer methods only translate: protobuf -> data plane call -> protobuf, and
InferenceError -> the matching gRPC status. Every call is counted by RPC and code.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubeinfer.runtime import codec
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.dataplane import DataPlane
from kubeinfer.runtime.errors import InferenceError, StartupError
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.oip import grpc_service as oip_grpc
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
R = TypeVar("R")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, dataplane: DataPlane, metrics: RuntimeMetrics) -> None:
        self.dataplane = dataplane
        self.metrics = metrics

    @contextlib.asynccontextmanager
    async def _observed(self, rpc: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Around one call: InferenceError -> its gRPC status, anything else -> INTERNAL; in-flight and outcome
        recorded in the metrics before the status is sent, so a client that saw it also sees it counted."""
        started = time.monotonic()
        in_flight = self.metrics.in_flight.labels(self.metrics.model, "grpc")
        in_flight.inc()
        recorded = False

        def record(code: str) -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                in_flight.dec()
                self.metrics.observe_request("grpc", rpc, code, time.monotonic() - started)

        try:
            yield
        except InferenceError as exc:
            record(exc.code.name)
            await context.abort(grpc.StatusCode[exc.code.name], exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            record("INTERNAL")
            log.exception("%s failed", rpc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        except BaseException:  # cancelled by the client or the server shutting down
            record("CANCELLED")
            raise
        finally:
            record("OK")

    async def _unary(self, rpc: str, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[R]]) -> R:
        """Run one unary call under ``_observed``."""
        async with self._observed(rpc, context):
            return await call()
        raise AssertionError("unreachable: errors end in context.abort, which raises")

    async def _write_stream(self, rpc: str, context: grpc.aio.ServicerContext,
                            open_stream: Callable[[], AsyncIterator[Any]], to_proto: Callable[[Any], Any]) -> None:
        """Run one server-streaming call under ``_observed``, writing items as they come.

        The data plane's generator is closed on every exit, so a cancelled call frees its state at once.
        """
        async with self._observed(rpc, context), contextlib.aclosing(open_stream()) as items:
            async for item in items:
                await context.write(to_proto(item))

    async def GetModelInfo(self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        async def call() -> pb.ModelInfo:
            return codec.model_info_to_proto(self.dataplane.model_info())

        return await self._unary("GetModelInfo", context, call)

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        async def call() -> pb.DetectResponse:
            results = await self.dataplane.detect(codec.images_from_proto(request.images),
                                                  codec.detect_overrides_from_proto(request.parameters))
            return codec.detect_response_to_proto(results)

        return await self._unary("Detect", context, call)

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        async def call() -> pb.ClassifyResponse:
            results = await self.dataplane.classify(codec.images_from_proto(request.images),
                                                    request.top_k if request.HasField("top_k") else None)
            return codec.classify_response_to_proto(results)

        return await self._unary("Classify", context, call)

    async def ClassifyClip(self, request_iterator: AsyncIterator[pb.ClipFrame],
                           context: grpc.aio.ServicerContext) -> pb.ClipResult:
        async def call() -> pb.ClipResult:
            result = await self.dataplane.classify_clip(codec.clip_frames_from_proto(request_iterator))
            return codec.clip_result_to_proto(result)

        return await self._unary("ClassifyClip", context, call)

    async def StreamClassify(self, request_iterator: AsyncIterator[pb.StreamFrame],
                             context: grpc.aio.ServicerContext) -> None:
        def open_stream() -> AsyncIterator[Any]:
            return self.dataplane.stream_classify(codec.stream_frames_from_proto(request_iterator))

        await self._write_stream("StreamClassify", context, open_stream, codec.stream_prediction_to_proto)

    async def Recognize(self, request: pb.RecognizeRequest,
                        context: grpc.aio.ServicerContext) -> pb.RecognizeResponse:
        async def call() -> pb.RecognizeResponse:
            results = await self.dataplane.recognize(codec.images_from_proto(request.images),
                                                     codec.recognize_overrides_from_proto(request))
            return codec.recognize_response_to_proto(results)

        return await self._unary("Recognize", context, call)

    async def ProcessVideo(self, request_iterator: AsyncIterator[pb.VideoRequest],
                           context: grpc.aio.ServicerContext) -> None:
        async def messages() -> AsyncIterator[Any]:
            async for request in request_iterator:
                yield codec.video_message_from_proto(request)

        await self._write_stream("ProcessVideo", context, lambda: self.dataplane.process_video(messages()),
                                 codec.processed_frame_to_proto)

    async def ProcessVideoFile(self, request: pb.VideoFileRequest, context: grpc.aio.ServicerContext) -> None:
        def open_stream() -> AsyncIterator[Any]:
            return self.dataplane.process_video_file(request.video,
                                                     codec.video_pipeline_from_proto(request.pipeline))

        await self._write_stream("ProcessVideoFile", context, open_stream, codec.video_file_event_to_proto)


class GrpcTransport:
    """The grpc.aio server with the inference, health and reflection services."""

    def __init__(self, config: ServeConfig, dataplane: DataPlane, metrics: RuntimeMetrics) -> None:
        limit = config.max_message_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ])
        self.health = health.aio.HealthServicer()
        pb_grpc.add_InferenceServicer_to_server(InferenceServicer(dataplane, metrics), self.server)
        oip_grpc.add_to_server(self.server, dataplane, metrics)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, oip_grpc.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self.server)
        address = f"{config.host}:{config.grpc_port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises when the port is taken
            raise StartupError(f"cannot listen on {address} for gRPC: {exc}") from None
        if self.port == 0:
            raise StartupError(f"cannot listen on {address} for gRPC")

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(False)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def announce_shutdown(self) -> None:
        """NOT_SERVING for every service, for good: probes and balancers stop sending new work."""
        await self.health.enter_graceful_shutdown()

    async def drain(self, grace: float) -> None:
        """Refuse new calls and give in-flight ones ``grace`` seconds."""
        await self.announce_shutdown()
        await self.server.stop(grace)
