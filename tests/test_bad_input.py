"""Each bad input gets a precise status and message while a parallel client keeps being served."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import fresh_images, png_bytes
from PIL import Image
from runtime_support import BackgroundTraffic, RuntimeProcess

from kubeinfer.clients import Client
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1.inference_pb2_grpc import InferenceStub


@pytest.fixture(scope="module")
def traffic(detect_runtime: RuntimeProcess) -> Iterator[BackgroundTraffic]:
    """A client detecting a good image in a loop while bad requests are refused; every call must succeed."""
    image = png_bytes(fresh_images(seed=40, count=1)[0].pixels)
    with Client(detect_runtime.grpc_target) as client:

        def detect() -> None:
            assert client.detect([image])[0].detections, "good image lost its detections"

        background = BackgroundTraffic(detect)
        yield background
        background.stop()


def call_detect(target: str, request: pb.DetectRequest) -> grpc.RpcError:
    options = [("grpc.max_send_message_length", 256 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel, pytest.raises(grpc.RpcError) as failure:
        InferenceStub(channel).Detect(request, timeout=60)
    return failure.value


def good() -> pb.Image:
    return pb.Image(encoded=png_bytes(fresh_images(seed=41, count=1)[0].pixels))


def big_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("images", "message"), [
    ([good(), pb.Image(encoded=b"definitely not an image")], "image 1: not a decodable"),
    ([pb.Image(encoded=png_bytes(np.zeros((8, 8, 3), np.uint8))[:40])], "image 0:"),
    ([good(), good(), pb.Image()], "image 2: empty"),
    ([pb.Image(raw=pb.RawImage(pixels=b"\0" * 10, height=4, width=4, channels=3))],
     "image 0: raw pixels hold 10 bytes, expected 4x4x3 = 48"),
    ([pb.Image(raw=pb.RawImage(pixels=b"\0" * 32, height=4, width=4, channels=2))], "1 or 3 channels"),
    ([pb.Image(raw=pb.RawImage(pixels=b"", height=0, width=4, channels=3))], "positive height and width"),
    ([pb.Image(encoded=big_png(2100, 2000))], "image 0: 2100x2000 = 4200000 pixels exceeds the limit of 4000000"),
    ([], "no images"),
])
def test_bad_images_are_invalid_arguments_naming_the_image(detect_runtime: RuntimeProcess,
                                                           traffic: BackgroundTraffic, images: list[pb.Image],
                                                           message: str) -> None:
    error = call_detect(detect_runtime.grpc_target, pb.DetectRequest(images=images))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


def test_a_bad_parameter_is_an_invalid_argument(detect_runtime: RuntimeProcess, traffic: BackgroundTraffic) -> None:
    request = pb.DetectRequest(images=[good()], parameters=pb.DetectParameters(confidence=7))
    error = call_detect(detect_runtime.grpc_target, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_another_tasks_rpc_is_a_failed_precondition(detect_runtime: RuntimeProcess,
                                                    traffic: BackgroundTraffic) -> None:
    with grpc.insecure_channel(detect_runtime.grpc_target) as channel, pytest.raises(grpc.RpcError) as failure:
        InferenceStub(channel).Recognize(pb.RecognizeRequest(images=[good()]), timeout=30)
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "serves 'detect'" in failure.value.details()


@pytest.fixture(scope="module")
def small_runtime(runtime_factory: Callable[..., RuntimeProcess], detector_model: Path) -> RuntimeProcess:
    """Tight limits: 300 kB messages, a queue of 16 images."""
    return runtime_factory("--task", "detect", "--model", str(detector_model), "--max-message-bytes", "300000",
                           "--max-queue-size", "16", "--max-batch-size", "16")


def test_a_message_over_the_limit_is_resource_exhausted(small_runtime: RuntimeProcess) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)  # 480 kB raw
    error = call_detect(small_runtime.grpc_target, pb.DetectRequest(images=[
        pb.Image(raw=pb.RawImage(pixels=noise.tobytes(), height=400, width=400, channels=3))]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with Client(small_runtime.grpc_target) as client:  # the server is fine afterwards
        assert client.detect([good().encoded])[0].height == 128


def test_more_images_than_the_queue_holds_is_resource_exhausted(small_runtime: RuntimeProcess) -> None:
    error = call_detect(small_runtime.grpc_target, pb.DetectRequest(images=[good()] * 17))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in error.details()


def test_errors_are_counted_by_code(detect_runtime: RuntimeProcess, traffic: BackgroundTraffic) -> None:
    call_detect(detect_runtime.grpc_target, pb.DetectRequest(images=[pb.Image(encoded=b"xx")]))
    text = detect_runtime.metrics()
    assert 'kubeinfer_requests_total{code="INVALID_ARGUMENT",model="rects",protocol="grpc",rpc="Detect"}' in text
    assert 'kubeinfer_requests_total{code="OK",model="rects",protocol="grpc",rpc="Detect"}' in text
