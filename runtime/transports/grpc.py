"""gRPC transport: kubeinfer.v1.Inference and inference.GRPCInferenceService over grpc.aio, plus health and reflection.

kubeinfer.v1.Inference's methods are every registered task's RPCs (``tasks.registry``): each handler only
translates (protobuf -> data plane call -> protobuf, with the task module's codec) and raises. One server
interceptor, ``ObservingInterceptor``, owns what every call shares: the request id (the client's
``x-request-id`` metadata or a fresh one), the in-flight gauge, the outcome in the metrics (recorded
before the status is sent), and the mapping of an exception to its status
(``errors.public_error``: an InferenceError's code and message, anything else INTERNAL "internal
error" with the request id, which the log line carries too), and where requests are parsed: grpc.aio
deserializes on the event loop, so every message arrives ``Received`` (still in its wire form, its size
counted in the in-flight budget before any parsing) and one of ``PARSE_OFF_LOOP_BYTES`` or more is parsed in
the worker pool, keeping the loop free for every other call meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubeinfer.runtime import codec
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.dataplane import ByteBudget, DataPlane
from kubeinfer.runtime.errors import InferenceError, StartupError, invalid_argument, public_error
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.shadow.mirror import ShadowMirror, StreamTap
from kubeinfer.runtime.tasks import registry
from kubeinfer.runtime.tasks.registry import ImagesRpc, Rpc
from kubeinfer.runtime.transports import oip_grpc
from kubeinfer.runtime.transports.observe import NATIVE_GRPC, OIP, Call, Route
from kubeinfer.v1 import inference_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name
RETRY_PUSHBACK = "grpc-retry-pushback-ms"  # the trailer gRPC's retry policy reads as the server's retry hint
# Parsing copies every bytes field: here a 1 MiB message takes about 0.1 ms, the cost of the round trip
# through the pool, and a raw 1080p frame (6 MiB) 0.8 ms; from 1 MiB on they are parsed in the pool.
PARSE_OFF_LOOP_BYTES = 1024 * 1024


async def send_error(context: grpc.aio.ServicerContext, error: InferenceError) -> None:
    """Abort the call with ``error``'s status (and retry hint); raises."""
    if error.retry_after_s is not None:
        context.set_trailing_metadata(((RETRY_PUSHBACK, str(int(error.retry_after_s * 1000))),))
    await context.abort(grpc.StatusCode[error.code.name], error.message)


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method of the inference services (health and reflection pass untouched)."""

    def __init__(self, metrics: RuntimeMetrics, protocols: Mapping[str, str], budget: ByteBudget | None = None,
                 pool: Executor | None = None, off_loop_bytes: int = PARSE_OFF_LOOP_BYTES,
                 shadow: ShadowMirror | None = None) -> None:
        self.metrics = metrics
        self.shadow = shadow  # the rollout's shadow mirror: offered native calls once they succeeded
        self.protocols = dict(protocols)  # service full name -> protocol label
        self.budget = budget  # request bytes in flight (unary requests; streams are bounded by their windows)
        self.pool = pool  # where large messages are parsed (None: the loop's default executor)
        self.off_loop_bytes = off_loop_bytes

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        service, _, rpc = details.method.lstrip("/").partition("/")
        protocol = self.protocols.get(service)
        if handler is None or protocol is None:
            return handler
        route = Route(protocol, rpc)
        request_id = dict(details.invocation_metadata or ()).get("x-request-id")
        shadow = self.shadow if (self.shadow is not None and protocol == NATIVE_GRPC
                                 and self.shadow.wanted(rpc, details.invocation_metadata)) else None
        kinds = {"unary_unary": grpc.unary_unary_rpc_method_handler,
                 "unary_stream": grpc.unary_stream_rpc_method_handler,
                 "stream_unary": grpc.stream_unary_rpc_method_handler,
                 "stream_stream": grpc.stream_stream_rpc_method_handler}
        for kind, make in kinds.items():
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                streaming = kind.startswith("stream_")
                return make(self._wrap(behaviour, route, request_id, streaming, shadow),
                            request_deserializer=request_parser(handler.request_deserializer, self.off_loop_bytes),
                            response_serializer=handler.response_serializer)
        return handler

    def _wrap(self, behaviour: Callable[..., Any], route: Route, request_id: str | None,
              request_streaming: bool, shadow: ShadowMirror | None = None) -> Callable[..., Any]:
        """``shadow``: the mirror, where this call may be mirrored (a native call not itself a mirrored one)."""
        metrics, pool = self.metrics, self.pool

        def handle(request: Any, context: grpc.aio.ServicerContext, tap: StreamTap | None = None) -> Any:
            """``request``: the parsed message of a unary request, else the stream of Received messages."""
            if not request_streaming:
                return behaviour(request, context)
            parsed = _parsed_stream(request, pool)
            return behaviour(tap.requests(parsed) if tap is not None else parsed, context)

        if inspect.isasyncgenfunction(behaviour):
            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                call = Call(metrics, route, request_id)
                tap = shadow.tap(route.rpc) if shadow is not None else None
                try:
                    if not request_streaming:  # one Received message, then a stream of answers
                        request = await _parsed(request, pool)
                    async with contextlib.aclosing(handle(request, context, tap)) as responses:
                        async for response in responses:
                            yield response
                            if tap is not None:  # resumed once the answer was written
                                tap.answered(response)
                    call.finish("OK")
                except BaseException as exc:
                    await _fail(call, context, exc)
                finally:
                    call.close()

            return streaming

        budget = self.budget

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = Call(metrics, route, request_id)
            held = 0
            try:
                wire = b""
                if not request_streaming:
                    wire = request.data
                    if budget is not None:  # counted first: refused before it is parsed
                        held = budget.acquire(len(wire))
                    request = await _parsed(request, pool)
                response = await handle(request, context)
                call.finish("OK")
                if shadow is not None and not request_streaming:
                    shadow.after_call(context, route.rpc, wire, response)
                return response
            except BaseException as exc:
                await _fail(call, context, exc)
            finally:
                if held and budget is not None:
                    budget.release(held)
                call.close()

        return unary


class Malformed:
    """A request message that is not valid protobuf (what the tolerant deserializer returns instead of raising)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> InferenceError:
        return invalid_argument(f"the request is not a valid protobuf message of its type: {self.reason}")


class Received:
    """A request message still in its wire form: the budget reads its size from ``data`` (asking a parsed
    message its ``ByteSize()`` serialises it again, a copy of every byte on the event loop), then ``parse``."""

    __slots__ = ("_deserialize", "_off_loop_bytes", "data")

    def __init__(self, data: bytes, deserialize: Callable[[bytes], Any], off_loop_bytes: int) -> None:
        self.data = data
        self._deserialize = deserialize
        self._off_loop_bytes = off_loop_bytes

    async def parse(self, pool: Executor | None) -> Any:
        """The message, or Malformed (protobuf refused it; gRPC itself would answer INTERNAL): parsed here when
        small, in ``pool`` from ``off_loop_bytes`` on."""
        if len(self.data) < self._off_loop_bytes:
            return _tolerant_parse(self._deserialize, self.data)
        return await asyncio.get_running_loop().run_in_executor(pool, _tolerant_parse, self._deserialize, self.data)


def request_parser(deserialize: Callable[[bytes], Any] | None, off_loop_bytes: int) -> Callable[[bytes], Any] | None:
    """The deserializer grpc.aio calls on the event loop: it only wraps the bytes (``Received``)."""
    if deserialize is None:
        return None

    def receive(data: bytes) -> Received:
        return Received(data, deserialize, off_loop_bytes)

    return receive


def _tolerant_parse(deserialize: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return deserialize(data)
    except Exception as exc:
        return Malformed(str(exc) or type(exc).__name__)


async def _parsed(received: Received, pool: Executor | None) -> Any:
    """The message ``received`` holds; a malformed one is the client's error (INVALID_ARGUMENT)."""
    request = await received.parse(pool)
    if isinstance(request, Malformed):
        raise request.error()
    return request


async def _parsed_stream(requests: AsyncIterator[Received], pool: Executor | None) -> AsyncIterator[Any]:
    """A request stream's messages, large ones parsed in ``pool``; the first malformed one ends it."""
    async for received in requests:
        yield await _parsed(received, pool)


async def _fail(call: Call, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Record the outcome, then send the status; always raises."""
    if isinstance(exc, grpc.aio.AbortError):  # a handler aborted on its own: its status stands
        code = context.code()
        call.finish(code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN")
        raise exc
    if isinstance(exc, asyncio.CancelledError | GeneratorExit) or not isinstance(exc, Exception):
        call.finish("CANCELLED")  # the client went away, or the server is stopping
        raise exc
    error = public_error(exc, f"{call.route.protocol} {call.route.rpc}")
    call.finish(error.code.name)
    await send_error(context, error)


def native_handlers(dataplane: DataPlane) -> dict[str, grpc.RpcMethodHandler]:
    """kubeinfer.v1.Inference: GetModelInfo, and every registered task's RPCs (``tasks.registry``), each turning
    messages into a data-plane call and back; the interceptor does the rest."""

    async def model_info(request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        return codec.model_info_to_proto(dataplane.model_info())

    handlers = {"GetModelInfo": grpc.unary_unary_rpc_method_handler(
        model_info, request_deserializer=pb.ModelInfoRequest.FromString,
        response_serializer=pb.ModelInfo.SerializeToString)}
    for rpc in registry.rpcs():
        handlers[rpc.name] = _handler(rpc, dataplane)
    return handlers


def _handler(rpc: Rpc, dataplane: DataPlane) -> grpc.RpcMethodHandler:
    serializers = {"request_deserializer": rpc.request.FromString,
                   "response_serializer": rpc.response.SerializeToString}
    if isinstance(rpc, ImagesRpc):
        async def images(request: Any, context: grpc.aio.ServicerContext) -> Message:
            results = await dataplane.infer_images(rpc, codec.images_from_proto(request.images),
                                                   rpc.parameters_from_proto(request))
            return rpc.response_to_proto(results)

        return grpc.unary_unary_rpc_method_handler(images, **serializers)
    if not rpc.responses_stream:
        async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Message:
            return await dataplane.stream(rpc, request)  # type: ignore[no-any-return]

        make = grpc.stream_unary_rpc_method_handler if rpc.requests_stream else grpc.unary_unary_rpc_method_handler
        return make(unary_response, **serializers)

    async def responses(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        async with contextlib.aclosing(dataplane.stream(rpc, request)) as answers:
            async for answer in answers:
                yield answer

    make = grpc.stream_stream_rpc_method_handler if rpc.requests_stream else grpc.unary_stream_rpc_method_handler
    return make(responses, **serializers)


def server_options(config: ServeConfig) -> list[tuple[str, int]]:
    """Message limits and connection hygiene: idle and aged connections closed (GOAWAY), pings policed."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    limit = config.max_message_bytes
    ping = ms(config.grpc_min_ping_interval)
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", int(config.frontends > 1)),  # frontends share the port; otherwise one owner
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", ping),
        ("grpc.http2.min_ping_interval_without_data_ms", ping),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if config.grpc_max_connection_idle > 0:
        options.append(("grpc.max_connection_idle_ms", ms(config.grpc_max_connection_idle)))
    if config.grpc_max_connection_age > 0:
        options += [("grpc.max_connection_age_ms", ms(config.grpc_max_connection_age)),
                    ("grpc.max_connection_age_grace_ms", ms(config.grpc_max_connection_age_grace))]
    return options


class GrpcTransport:
    """The grpc.aio server with the inference services (native and OIP), health and reflection."""

    def __init__(self, config: ServeConfig, dataplane: DataPlane, metrics: RuntimeMetrics,
                 pool: Executor | None = None) -> None:
        self.shadow = ShadowMirror(config, metrics, dataplane.traffic)
        interceptor = ObservingInterceptor(metrics, {SERVICE_NAME: NATIVE_GRPC, oip_grpc.SERVICE_NAME: OIP},
                                           dataplane.request_bytes, pool, shadow=self.shadow)
        self.server = grpc.aio.server(interceptors=[interceptor], options=server_options(config))
        self.health = health.aio.HealthServicer()
        handlers = native_handlers(dataplane)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        self.server.add_registered_method_handlers(SERVICE_NAME, handlers)
        oip_grpc.add_to_server(self.server, dataplane)
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
        await self.shadow.close()
