"""The gRPC client: typed methods per task over the generated kubeinfer.v1 stubs.

Errors surface as ``grpc.RpcError`` with the server's status code and message
(``err.code()``, ``err.details()``), e.g. INVALID_ARGUMENT naming a bad image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubeinfer.clients import convert
from kubeinfer.clients.images import ImageLike, to_proto_image
from kubeinfer.clients.types import DetectResult, ModelInfo
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Client:
    """A connection to one runtime (``host:port``). Thread-safe; reuse it, close it when done."""

    def __init__(self, target: str, *, timeout: float | None = 60.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 keepalive_seconds: float = 30.0, credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, object]] = ()) -> None:
        self.target = target
        self.timeout = timeout
        channel_options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            *options,
        ]
        self.channel = (grpc.secure_channel(target, credentials, channel_options) if credentials
                        else grpc.insecure_channel(target, channel_options))
        self.stub = pb_grpc.InferenceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The standard health status name: SERVING, NOT_SERVING, ..."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._timeout(timeout))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the channel connects (the runtime may still be loading; see health())."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def model_info(self, timeout: float | None = None) -> ModelInfo:
        return convert.model_info(self.stub.GetModelInfo(pb.ModelInfoRequest(), timeout=self._timeout(timeout)))

    def detect(self, images: Iterable[ImageLike], *, confidence: float | None = None, iou: float | None = None,
               max_detections: int | None = None, classes: Sequence[int] = (), return_masks: bool = False,
               timeout: float | None = None) -> list[DetectResult]:
        """Detect objects in each image; one result per image, in order."""
        params = pb.DetectParameters(confidence=confidence, iou=iou, max_detections=max_detections,
                                     classes=list(classes), return_masks=return_masks)
        request = pb.DetectRequest(images=[to_proto_image(i) for i in images], parameters=params)
        response = self.stub.Detect(request, timeout=self._timeout(timeout))
        return [convert.detect_result(r) for r in response.results]
