"""A rollout's traffic table served to clients the way the runtimes serve it: in GetModelInfo.

``TableFront`` is a real gRPC server on its own loopback address (the service's ``NAME-pods`` name resolves to it
in the tests) that answers GetModelInfo with a backend runtime's answer plus a traffic table the test sets, and
passes every other call through to that backend unchanged (bytes in, bytes out; streams too). So the clients'
table fetch, their fallback calls on ``NAME-pods`` and the revisions' channels all cross real gRPC, while the
runtimes themselves serve the split calls and count them in /metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from kubeinfer.clients.balancing import service_config
from kubeinfer.v1 import inference_pb2 as pb

INFERENCE = pb.DESCRIPTOR.services_by_name["Inference"]
GET_MODEL_INFO = "/kubeinfer.v1.Inference/GetModelInfo"


def table(generation: int, stable: tuple[str, str], candidate: tuple[str, str] | None = None,
          weight: int = 0, shadow: int = 0) -> pb.Traffic:
    """A traffic table: ``stable``/``candidate`` are (revision, ``host:port`` target)."""
    traffic = pb.Traffic(generation=generation, stable=pb.RevisionTarget(revision=stable[0], target=stable[1]),
                         candidate_weight=weight, shadow_percent=shadow)
    if candidate is not None:
        traffic.candidate.CopyFrom(pb.RevisionTarget(revision=candidate[0], target=candidate[1]))
    return traffic


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, front: TableFront) -> None:
        self.front = front

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        self.front.count(method)
        if method == GET_MODEL_INFO:
            return grpc.unary_unary_rpc_method_handler(self.front._model_info)
        name = method.rsplit("/", 1)[-1]
        described = INFERENCE.methods_by_name.get(name) if method.startswith("/kubeinfer.v1.Inference/") else None
        client_streams = bool(described and described.client_streaming)
        server_streams = bool(described and described.server_streaming)
        channel = self.front.backend
        if client_streams and server_streams:
            call_ss = channel.stream_stream(method)
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: self.front._relay_stream(call_ss(requests, timeout=_left(context)),
                                                                   context))
        if client_streams:
            call_su = channel.stream_unary(method)
            return grpc.stream_unary_rpc_method_handler(
                lambda requests, context: self.front._relay(lambda: call_su(requests, timeout=_left(context)),
                                                            context))
        if server_streams:
            call_us = channel.unary_stream(method)
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: self.front._relay_stream(call_us(request, timeout=_left(context)),
                                                                  context))
        call_uu = channel.unary_unary(method)
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self.front._relay(lambda: call_uu(request, timeout=_left(context)), context))


def _left(context: grpc.ServicerContext) -> float | None:
    return context.time_remaining()


class TableFront:
    """A gRPC server on ``host:port`` serving ``traffic`` (None: no table) in GetModelInfo over ``backend``'s."""

    def __init__(self, host: str, port: int, backend: str) -> None:
        self.traffic: pb.Traffic | None = None
        self.calls: dict[str, int] = {}  # relayed or answered, by method name
        self._lock = threading.Lock()
        self.backend = grpc.insecure_channel(backend, [
            ("grpc.service_config", service_config(round_robin=True, retries=True)),
            ("grpc.dns_min_time_between_resolutions_ms", 200)])
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[_Handler(self)])
        self.server.add_insecure_port(f"{host}:{port}")
        self.server.start()

    def count(self, method: str) -> None:
        with self._lock:
            name = method.rsplit("/", 1)[-1]
            self.calls[name] = self.calls.get(name, 0) + 1

    def set(self, traffic: pb.Traffic | None) -> None:
        with self._lock:
            self.traffic = traffic

    def _model_info(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        answer = self._relay(lambda: self.backend.unary_unary(GET_MODEL_INFO)(request, timeout=_left(context)),
                             context)
        info = pb.ModelInfo.FromString(answer)
        with self._lock:
            if self.traffic is not None:
                info.traffic.CopyFrom(self.traffic)
        return info.SerializeToString()

    @staticmethod
    def _relay(call: Any, context: grpc.ServicerContext) -> Any:
        try:
            return call()
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")

    @staticmethod
    def _relay_stream(responses: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            yield from responses
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")

    def close(self) -> None:
        self.server.stop(0).wait(5)
        self.backend.close()

    def __enter__(self) -> TableFront:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

