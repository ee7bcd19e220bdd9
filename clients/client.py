"""The gRPC client: typed methods per task over the generated kubeinfer.v1 stubs.

Errors surface as ``grpc.RpcError`` with the server's status code and message
(``err.code()``, ``err.details()``), e.g. INVALID_ARGUMENT naming a bad image.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubeinfer.clients import balancing, convert, revisions, video
from kubeinfer.clients.images import ImageLike, to_proto_image
from kubeinfer.clients.types import (
    ClassifyResult,
    ClipResult,
    DetectResult,
    ModelInfo,
    ProcessedFrame,
    Recognition,
    StreamFrame,
    StreamPrediction,
    VideoSummary,
)
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
T = TypeVar("T")
TABLE_TIMEOUT_S = 5.0  # a GetModelInfo fetching the traffic table


class _Revision:
    """A channel to one revision's headless Service (``dns:///NAME-REV...``), balanced like the service's own."""

    def __init__(self, target: str, options: Sequence[tuple[str, object]],
                 credentials: grpc.ChannelCredentials | None) -> None:
        self.channel = (grpc.secure_channel(target, credentials, options) if credentials
                        else grpc.insecure_channel(target, options))
        self.stub = pb_grpc.InferenceStub(self.channel)


class Client:
    """A connection to a runtime or a set of replicas. Thread-safe; reuse it, close it when done.

    ``target`` is one runtime (``host:port``) or several: ``dns:///name:port`` (every address the name resolves
    to), ``ipv4:a:port,b:port`` or ``ipv6:...``, balanced per call round-robin (see ``for_service`` and
    ``kubeinfer.clients.balancing`` for the retry policy). ``retries`` (default: on for balanced targets, off
    for one runtime) retries the safe unary calls on UNAVAILABLE and on a drain's CANCELLED.

    ``rollout=True`` (what ``for_service`` sets) follows a progressive rollout's traffic table, which the runtimes
    serve in GetModelInfo: while a candidate revision takes a share, each call goes to the candidate's or the
    stable revision's headless Service in the table's exact proportion (``kubeinfer.clients.revisions``); a unary
    call that fails UNAVAILABLE there is tried once more on ``target``. Without a table, calls go to ``target``.
    """

    def __init__(self, target: str, *, timeout: float | None = 60.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 keepalive_seconds: float = 30.0, credentials: grpc.ChannelCredentials | None = None,
                 retries: bool | None = None, options: Sequence[tuple[str, object]] = (),
                 rollout: bool = False, refresh_seconds: float = revisions.REFRESH_SECONDS) -> None:
        self.target = target
        self.timeout = timeout
        balanced = balancing.balances(target)

        def channel_options(to: str, balance: bool) -> list[tuple[str, object]]:
            return [
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.service_config", balancing.service_config(round_robin=balance,
                                                                 retries=balance if retries is None else retries)),
                *balancing.channel_options(to),
                *options,
            ]

        self.channel = (grpc.secure_channel(target, credentials, channel_options(target, balanced)) if credentials
                        else grpc.insecure_channel(target, channel_options(target, balanced)))
        self.stub = pb_grpc.InferenceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.revisions: revisions.RevisionTable[_Revision] | None = None
        if rollout:
            self.revisions = revisions.RevisionTable(
                self.traffic_table, lambda to: _Revision(to, channel_options(to, True), credentials),
                lambda revision: revision.channel.close(), authority=revisions.authority_of(target),
                refresh_seconds=refresh_seconds)

    @classmethod
    def for_service(cls, name: str, namespace: str = "default", *, port: int = 8001,
                    cluster_domain: str = "cluster.local", dns_server: str = "", **kwargs: Any) -> Client:
        """A client of an InferenceService from inside the cluster: its headless ``NAME-pods`` Service through
        DNS, balanced round-robin over every ready pod, with retries, following a rollout's traffic split
        (``rollout=True``); ``dns_server`` (``host:port``) is asked instead of the system's resolver; ``kwargs``
        as for ``Client``."""
        kwargs.setdefault("rollout", True)
        return cls(balancing.service_target(name, namespace, port, cluster_domain, dns_server), **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.revisions is not None:
            self.revisions.close()
        self.channel.close()

    def traffic_table(self, timeout: float | None = TABLE_TIMEOUT_S) -> pb.Traffic | None:
        """The rollout's traffic table a replica serves in GetModelInfo (through ``target``); None without one."""
        return revisions.traffic_of(self.stub.GetModelInfo(pb.ModelInfoRequest(), timeout=timeout))

    def _unary(self, method: str, request: Any, timeout: float | None) -> Any:
        """A unary call on the revision the table picks (else on ``target``); UNAVAILABLE there (the revision
        scaled away before the table said so) is tried once more on ``target`` within the same deadline, and the
        revision set aside for a while (its share goes to ``target``)."""
        table = self.revisions
        lease = table.pick() if table is not None else None
        if table is None or lease is None:
            return getattr(self.stub, method)(request, timeout=timeout)
        started = time.monotonic()
        try:
            with lease as revision:
                return getattr(revision.stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            table.set_aside(lease.target)
        left = None if timeout is None else max(timeout - (time.monotonic() - started), 0.001)
        return getattr(self.stub, method)(request, timeout=left)

    def _stream_stub(self, stream_id: str) -> tuple[pb_grpc.InferenceStub, revisions.Lease[_Revision] | None]:
        """The stub of a streaming call: its id's revision (SWRR without an id) while a split is on."""
        if self.revisions is None:
            return self.stub, None
        lease = self.revisions.for_stream(stream_id) if stream_id else self.revisions.pick()
        return (self.stub, None) if lease is None else (lease.value.stub, lease)

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
        response = self._unary("Detect", request, self._timeout(timeout))
        return [convert.detect_result(r) for r in response.results]

    def classify(self, images: Iterable[ImageLike], *, top_k: int | None = None,
                 timeout: float | None = None) -> list[ClassifyResult]:
        """The ``top_k`` most probable labels per image (default: the runtime's --top-k), best first."""
        request = pb.ClassifyRequest(images=[to_proto_image(i) for i in images], top_k=top_k)
        response = self._unary("Classify", request, self._timeout(timeout))
        return [convert.classify_result(r) for r in response.results]

    def classify_clip(self, frames: Iterable[ImageLike], *, top_k: int | None = None,
                      timeout: float | None = None) -> ClipResult:
        """One prediction for a whole clip: the mean of its frames' class probabilities.

        ``frames`` is sent lazily as it is iterated; the server batches frames as they arrive.
        """
        def requests() -> Iterator[pb.ClipFrame]:
            for index, frame in enumerate(frames):
                yield pb.ClipFrame(image=to_proto_image(frame), top_k=top_k if index == 0 else None)

        stub, lease = self._stream_stub("")
        try:
            return convert.clip_result(stub.ClassifyClip(requests(), timeout=self._timeout(timeout)))
        finally:
            if lease is not None:
                lease.release()

    def stream_classify(self, frames: Iterable[ImageLike | StreamFrame], *, stream_id: str = "", mode: str = "",
                        top_k: int | None = None, resume: bool = False,
                        timeout: float | None = None) -> Iterator[StreamPrediction]:
        """Classify a stream of frames: per frame, in order, its own and its stream's window-averaged prediction.

        Frames are numbered from 0 and belong to ``stream_id``/``mode``; ``StreamFrame`` items may carry their
        own stream id, mode, sequence and top_k, so one call can interleave several streams (windows never mix
        across calls, even with equal ids). ``frames`` is consumed lazily, so it may be a live source. A frame that
        fails (bad image, stream refused past --max-streams: RESOURCE_EXHAUSTED) comes back with ``error`` set;
        the call goes on. No deadline unless ``timeout`` is given; closing the iterator ends the call and frees
        its windows on the server.

        ``resume=True`` keeps a stream's window by its id alone, beyond this call, until the runtime's
        ``--stream-idle-seconds`` pass without a frame: a later call with the same id and ``resume`` continues
        it (a reconnecting camera), and a prediction has ``window_restarted`` set when the replica held no
        window for the id. Resumable ids are shared by every client of the replica: make them unique to their
        source (a camera serial, a UUID). Over several replicas, ``StreamRouter`` sends each id to one replica.
        """
        def requests() -> Iterator[pb.StreamFrame]:
            for index, frame in enumerate(frames):
                if isinstance(frame, StreamFrame):
                    yield pb.StreamFrame(stream_id=stream_id if frame.stream_id is None else frame.stream_id,
                                         mode=mode if frame.mode is None else frame.mode,
                                         sequence=index if frame.sequence is None else frame.sequence,
                                         image=to_proto_image(frame.image),
                                         top_k=top_k if frame.top_k is None else frame.top_k,
                                         resume=resume if frame.resume is None else frame.resume)
                else:
                    yield pb.StreamFrame(stream_id=stream_id, mode=mode, sequence=index,
                                         image=to_proto_image(frame), top_k=top_k, resume=resume)

        stub, lease = self._stream_stub(stream_id)
        return _leased(video.responses(stub.StreamClassify(requests(), timeout=timeout), convert.stream_prediction),
                       lease)

    def recognize(self, images: Iterable[ImageLike], threshold: float | None = None, top_k: int | None = 1, *,
                  timeout: float | None = None) -> list[Recognition]:
        """The best gallery label per image ("unknown" below the threshold) and the top_k candidates.

        ``threshold`` (cosine similarity in [-1, 1]) overrides the runtime's --similarity-threshold;
        ``top_k=None`` takes the runtime's --top-k.
        """
        request = pb.RecognizeRequest(images=[to_proto_image(i) for i in images], threshold=threshold, top_k=top_k)
        response = self._unary("Recognize", request, self._timeout(timeout))
        return [convert.recognition(r) for r in response.results]

    def process_video(self, frames: Iterable[ImageLike], *, ops: Sequence[video.OpLike] = (), stream_id: str = "",
                      jpeg_quality: int | None = None, timeout: float | None = None) -> Iterator[ProcessedFrame]:
        """Stream frames through the video task's pipeline; processed frames come back as they are done, in order.

        ``frames`` is consumed lazily (frames are numbered from 0), so it may be a live source. ``ops`` are
        operations like ``"edges:low=50:high=150"`` or ``("resize", {"width": 320})``. A frame that fails comes
        back with ``error`` set; the stream goes on. Streams have no deadline unless ``timeout`` is given.
        Closing the returned iterator cancels the call, which frees the stream on the server.
        """
        pipeline = video.to_pipeline(ops, jpeg_quality)
        stub, lease = self._stream_stub(stream_id)
        call = stub.ProcessVideo(video.video_requests(frames, pipeline, stream_id), timeout=timeout)
        return _leased(video.responses(call, convert.processed_frame), lease)

    def process_video_file(self, path: str | Path | bytes, *, ops: Sequence[video.OpLike] = (),
                           jpeg_quality: int | None = None,
                           timeout: float | None = None) -> Iterator[ProcessedFrame | VideoSummary]:
        """Upload a video file (anything OpenCV decodes; it must fit in one message) and iterate its processed
        frames, then a ``VideoSummary`` with the frame count and fps. No deadline unless ``timeout`` is given."""
        data = path if isinstance(path, bytes) else Path(path).read_bytes()
        request = pb.VideoFileRequest(video=data, pipeline=video.to_pipeline(ops, jpeg_quality))
        stub, lease = self._stream_stub("")
        call = stub.ProcessVideoFile(request, timeout=timeout)
        return _leased(video.responses(call, convert.video_file_event), lease)


def _leased(items: Iterator[T], lease: revisions.Lease[Any] | None) -> Iterator[T]:
    """``items``, holding ``lease`` (a revision's channel) until they end or are closed."""
    if lease is None:
        return items

    def held() -> Iterator[T]:
        try:
            yield from items
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            lease.release()

    return held()

