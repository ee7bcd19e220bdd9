"""Detection through the Open Inference Protocol with unmodified Triton and KServe clients.

Every client flavour (tritonclient gRPC/HTTP, sync/asyncio; KServe gRPC/REST) must get the
same boxes as the native kubeinfer client, see the same health and metadata, and get the
protocol's status for each kind of bad request.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import fresh_images, png_bytes
from oip_support import (
    ALL_CLIENTS,
    KSERVE_CLIENTS,
    TRITON_CLIENTS,
    drive,
    error,
    images_tensor,
    infer_op,
    metric,
    pixels_tensor,
    tensor_array,
    value,
)
from runtime_support import RuntimeProcess

from kubeinfer.clients import Client
from kubeinfer.clients.types import DetectResult
from kubeinfer.runtime.metrics import BATCH_SIZE, REQUESTS

MODEL = "rects"  # the detect_runtime fixture's --model-name
OUTPUTS = ["boxes", "scores", "classes", "labels", "counts"]
SAMPLES = fresh_images(seed=1, count=4)  # 1, 1, 3 and 2 rectangles: the outputs need padding
ENCODED = [png_bytes(s.pixels) for s in SAMPLES]
PIXELS = np.stack([s.pixels for s in SAMPLES])

def is_grpc(client: str) -> bool:
    return "grpc" in client


def status(client: str, grpc_code: str, http_code: int) -> str:
    return grpc_code if is_grpc(client) else str(http_code)


def assert_like_native(outputs: dict[str, Any], native: list[DetectResult]) -> None:
    """The padded tensors hold exactly the native client's detections, image by image."""
    assert list(outputs) == OUTPUTS
    assert [outputs[n]["datatype"] for n in OUTPUTS] == ["FP32", "FP32", "INT32", "BYTES", "INT32"]
    boxes, scores, classes, labels, counts = (tensor_array(outputs[n]) for n in OUTPUTS)
    k = max(len(r.detections) for r in native)
    assert boxes.shape == (len(native), k, 4) and scores.shape == classes.shape == labels.shape == (len(native), k)
    assert counts.tolist() == [len(r.detections) for r in native]
    for i, result in enumerate(native):
        n = len(result.detections)
        want = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in result.detections]).reshape(n, 4)
        np.testing.assert_allclose(boxes[i, :n], want, atol=1e-3)
        np.testing.assert_allclose(scores[i, :n], [d.score for d in result.detections], atol=1e-5)
        assert classes[i, :n].tolist() == [d.class_id for d in result.detections]
        assert labels[i, :n].tolist() == [d.label for d in result.detections]
        assert classes[i, n:].tolist() == [-1] * (k - n) and labels[i, n:].tolist() == [""] * (k - n)
        assert not boxes[i, n:].any() and not scores[i, n:].any()


@pytest.fixture(scope="module")
def native(detect_runtime: RuntimeProcess) -> dict[str, list[DetectResult]]:
    with Client(detect_runtime.grpc_target) as client:
        return {"default": client.detect(ENCODED), "confident": client.detect(ENCODED, confidence=0.6, iou=0.3)}


@pytest.mark.parametrize("client", ALL_CLIENTS)
def test_every_client_detects_like_the_native_client(client: str, detect_runtime: RuntimeProcess,
                                                     native: dict[str, list[DetectResult]]) -> None:
    counts = [len(r.detections) for r in native["default"]]
    assert sorted(set(counts)) == [1, 2, 3], "the samples must need padding"
    # KServe's gRPC client has no double parameter: numbers travel as strings there
    overrides = {"confidence": "0.6", "iou": "0.3"} if client == "kserve-grpc" else {"confidence": 0.6, "iou": 0.3}
    results = drive(client, detect_runtime, [
        infer_op(MODEL, images_tensor(ENCODED), request_id="det-1"),
        # raw pixels; the HTTP clients send them as JSON numbers here, not binary
        infer_op(MODEL, pixels_tensor(PIXELS), binary_inputs=is_grpc(client)),
        infer_op(MODEL, images_tensor(ENCODED), parameters=overrides),
        infer_op(MODEL, images_tensor(ENCODED), outputs=[{"name": "labels", "binary": False}, {"name": "counts"}]),
    ])
    encoded, pixels, confident, subset = (value(r) for r in results)
    assert encoded["id"] == "det-1"
    assert_like_native(encoded["outputs"], native["default"])
    assert_like_native(pixels["outputs"], native["default"])
    assert_like_native(confident["outputs"], native["confident"])
    assert sum(len(r.detections) for r in native["confident"]) < sum(counts), "the overrides must change something"
    assert list(subset["outputs"]) == ["labels", "counts"]
    assert tensor_array(subset["outputs"]["counts"]).tolist() == counts


def test_health_and_metadata_through_every_client(detect_runtime: RuntimeProcess) -> None:
    expected_metadata = {
        "name": MODEL, "versions": ["1"], "platform": "kubeinfer_detect",
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [-1]},
                   {"name": "pixels", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
        "outputs": [{"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "classes", "datatype": "INT32", "shape": [-1, -1]},
                    {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                    {"name": "counts", "datatype": "INT32", "shape": [-1]}]}
    health = [{"op": "live"}, {"op": "ready"}, {"op": "model_ready", "model": MODEL}]
    for client in TRITON_CLIENTS:
        results = drive(client, detect_runtime, [*health, {"op": "server_metadata"},
                                                 {"op": "model_metadata", "model": MODEL}])
        live, ready, model_ready, server, model = (value(r) for r in results)
        assert (live, ready, model_ready) == (True, True, True), client
        assert server["name"] == "kubeinfer" and "binary_tensor_data" in server["extensions"]
        assert model == expected_metadata, client
    for client in KSERVE_CLIENTS:  # KServe's clients offer the health calls only
        assert [value(r) for r in drive(client, detect_runtime, health)] == [True, True, True], client


@pytest.mark.parametrize("client", ["triton-grpc", "triton-http", "kserve-grpc", "kserve-rest"])
def test_each_bad_request_gets_the_protocols_status_and_names_the_culprit(client: str,
                                                                          detect_runtime: RuntimeProcess) -> None:
    huge = png_bytes(np.zeros((2000, 2100, 3), np.uint8))  # 4.2 MP > the runtime's --max-image-pixels 4000000
    cases = [
        (infer_op("nope", images_tensor(ENCODED[:1])), "NOT_FOUND", 404,
         "unknown model 'nope'; this runtime serves 'rects'"),
        (infer_op(MODEL, pixels_tensor(PIXELS[:1].astype(np.float32), datatype="FP32")), "INVALID_ARGUMENT", 400,
         "input 'pixels' must be UINT8"),
        (infer_op(MODEL, pixels_tensor(PIXELS[0])), "INVALID_ARGUMENT", 400,
         "input 'pixels' must have shape [N, H, W, 3]"),
        (infer_op(MODEL, images_tensor(ENCODED[:1], name="image")), "INVALID_ARGUMENT", 400, "unknown input 'image'"),
        (infer_op(MODEL, images_tensor([b"not an image"])), "INVALID_ARGUMENT", 400,
         "image 0: not a decodable JPEG, PNG, WebP or BMP image"),
        (infer_op(MODEL, images_tensor([huge])), "INVALID_ARGUMENT", 400, "exceeds the limit of 4000000"),
        (infer_op(MODEL, images_tensor(ENCODED[:1]), parameters={"confidence": "2"}), "INVALID_ARGUMENT", 400,
         "confidence must be in [0.0, 1.0], got 2.0"),
        (infer_op(MODEL, images_tensor(ENCODED[:1]), outputs=[{"name": "masks"}]), "INVALID_ARGUMENT", 400,
         "unknown output 'masks'"),
    ]
    results = drive(client, detect_runtime, [op for op, *_ in cases])
    for (_, grpc_code, http_code, message), result in zip(cases, results, strict=True):
        failure = error(result)
        assert failure["status"] == status(client, grpc_code, http_code), failure
        assert message in failure["message"], failure


def test_model_ready_of_an_unknown_model(detect_runtime: RuntimeProcess) -> None:
    """gRPC answers NOT_FOUND; over HTTP the 404 reads as not ready (the clients turn any non-200 into False)."""
    assert error(drive("triton-grpc", detect_runtime, [{"op": "model_ready", "model": "nope"}])[0])["status"] \
        == "NOT_FOUND"
    for client in ("triton-http", "kserve-rest"):
        assert value(drive(client, detect_runtime, [{"op": "model_ready", "model": "nope"}])[0]) is False


def test_triton_stream_answers_in_order_and_survives_a_bad_request(detect_runtime: RuntimeProcess,
                                                                   native: dict[str, list[DetectResult]]) -> None:
    requests = [infer_op(MODEL, images_tensor([e]), request_id=f"frame-{i}")["request"] for i, e in enumerate(ENCODED)]
    requests.insert(2, infer_op(MODEL, images_tensor([b"garbage"]), request_id="bad")["request"])
    (result,) = drive("triton-grpc", detect_runtime, [{"op": "stream", "requests": requests}])
    answers = value(result)
    assert len(answers) == 5
    assert "image 0: not a decodable" in error(answers[2])["message"]
    good = [value(a) for i, a in enumerate(answers) if i != 2]
    assert [a["id"] for a in good] == [f"frame-{i}" for i in range(4)]
    for answer, want in zip(good, native["default"], strict=True):
        assert_like_native(answer["outputs"], [want])


def test_v2_requests_are_counted_and_batched_with_the_others(detect_runtime: RuntimeProcess) -> None:
    def requests(rpc: str, code: str) -> float:
        return metric(detect_runtime, REQUESTS, protocol="v2", rpc=rpc, code=code)

    before = {key: requests(*key) for key in [("ModelInfer", "OK"), ("ModelInfer", "INVALID_ARGUMENT"),
                                              ("http:ModelInfer", "OK"), ("http:ServerReady", "OK")]}
    batches_before = metric(detect_runtime, BATCH_SIZE + "_count"), metric(detect_runtime, BATCH_SIZE + "_sum")
    single = infer_op(MODEL, images_tensor(ENCODED[:1]))["request"]
    (bench,) = drive("triton-grpc-aio", detect_runtime, [{"op": "bench", "request": single, "concurrency": 16,
                                                          "count": 64}])
    assert value(bench)["requests"] == 64
    drive("triton-grpc", detect_runtime, [infer_op(MODEL, images_tensor([b"x"]))])
    drive("triton-http", detect_runtime, [{"op": "ready"}, infer_op(MODEL, images_tensor(ENCODED[:2]))])
    assert requests("ModelInfer", "OK") - before["ModelInfer", "OK"] == 64
    assert requests("ModelInfer", "INVALID_ARGUMENT") - before["ModelInfer", "INVALID_ARGUMENT"] == 1
    assert requests("http:ModelInfer", "OK") - before["http:ModelInfer", "OK"] == 1
    assert requests("http:ServerReady", "OK") - before["http:ServerReady", "OK"] == 1
    batches = metric(detect_runtime, BATCH_SIZE + "_count") - batches_before[0]
    images = metric(detect_runtime, BATCH_SIZE + "_sum") - batches_before[1]
    assert images == 64 + 2
    assert batches < 64, "16 concurrent ModelInfer callers never shared a batch"


def test_the_runtimes_own_limits_apply(runtime_factory: Any, detector_model: Any) -> None:
    """A full batcher queue refuses v2 requests exactly as it refuses native ones."""
    runtime = runtime_factory("--task", "detect", "--model", str(detector_model), "--model-name", "tiny-queue",
                              "--max-batch-size", "1", "--max-queue-size", "2", "--max-batch-delay-ms", "0")
    request = infer_op("tiny-queue", images_tensor(ENCODED[:3]))  # 3 images never fit a queue of 2
    for client, code in (("triton-grpc", "RESOURCE_EXHAUSTED"), ("triton-http", "429")):
        failure = error(drive(client, runtime, [request])[0])
        assert failure["status"] == code, failure
        assert "inference queue is full" in failure["message"], failure
