"""Classification through the Open Inference Protocol: Triton and KServe clients get the native client's top-k.

The model is the colour classifier of classify_support, whose answers are known by
construction; its runtime also caps messages at 1 MB, so the size limit is checked here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from classify_support import classify_runtime, noisy, solid
from conftest import png_bytes
from oip_support import ALL_CLIENTS, drive, error, images_tensor, infer_op, pixels_tensor, tensor_array, value
from runtime_support import RuntimeProcess

from kubeinfer.clients import Client
from kubeinfer.clients.types import ClassifyResult

MODEL = "colours"  # classify_runtime's --model-name; it serves --top-k 2
IMAGES = [noisy("red", 1), noisy("green", 2), noisy("blue", 3), noisy("green", 4)]
ENCODED = [png_bytes(i) for i in IMAGES]


@pytest.fixture(scope="module")
def runtime(runtime_factory: Callable[..., RuntimeProcess], tmp_path_factory: pytest.TempPathFactory) -> RuntimeProcess:
    return classify_runtime(runtime_factory, tmp_path_factory.mktemp("oip-classify-labels"))


def assert_like_native(outputs: dict, native: list[ClassifyResult], k: int) -> None:
    assert list(outputs) == ["labels", "scores", "classes"]
    labels, scores, classes = (tensor_array(outputs[n]) for n in ("labels", "scores", "classes"))
    assert labels.shape == scores.shape == classes.shape == (len(native), k)
    assert labels.tolist() == [[c.label for c in r.top] for r in native]
    assert classes.tolist() == [[c.class_id for c in r.top] for r in native]
    np.testing.assert_allclose(scores, [[c.score for c in r.top] for r in native], atol=1e-6)


@pytest.mark.parametrize("client", ALL_CLIENTS)
def test_every_client_classifies_like_the_native_client(client: str, runtime: RuntimeProcess) -> None:
    with Client(runtime.grpc_target) as native:
        default, top3 = native.classify(ENCODED), native.classify(ENCODED, top_k=3)
    assert [r.top[0].label for r in default] == ["red", "green", "blue", "green"]
    results = drive(client, runtime, [
        infer_op(MODEL, images_tensor(ENCODED)),
        infer_op(MODEL, pixels_tensor(np.stack(IMAGES))),
        infer_op(MODEL, images_tensor(ENCODED), parameters={"top_k": 3}),
        infer_op(MODEL, images_tensor(ENCODED), parameters={"top_k": 0}),
    ])
    assert_like_native(value(results[0])["outputs"], default, 2)
    assert_like_native(value(results[1])["outputs"], default, 2)
    assert_like_native(value(results[2])["outputs"], top3, 3)
    failure = error(results[3])
    assert failure["status"] in ("INVALID_ARGUMENT", "400") and "top_k must be at least 1" in failure["message"]


def test_metadata_documents_the_classification_tensors(runtime: RuntimeProcess) -> None:
    (meta,) = drive("triton-grpc", runtime, [{"op": "model_metadata", "model": MODEL}])
    assert value(meta)["platform"] == "kubeinfer_classify"
    assert value(meta)["outputs"] == [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                                      {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
                                      {"name": "classes", "datatype": "INT32", "shape": [-1, -1]}]


def test_messages_over_the_runtimes_limit_are_refused(runtime: RuntimeProcess) -> None:
    """--max-message-bytes 1000000 holds for v2 requests too: RESOURCE_EXHAUSTED over gRPC, 413 over REST."""
    big = solid("red", 600, 600)  # 1.08 MB of raw pixels
    request = infer_op(MODEL, pixels_tensor(big[None]))
    grpc_failure = error(drive("triton-grpc", runtime, [request])[0])
    assert grpc_failure["status"] == "RESOURCE_EXHAUSTED", grpc_failure
    http_failure = error(drive("triton-http", runtime, [request])[0])
    assert http_failure["status"] == "413" and "exceeds 1000000 bytes" in http_failure["message"], http_failure
    small = value(drive("triton-http", runtime, [infer_op(MODEL, pixels_tensor(solid("red", 100, 100)[None]))])[0])
    assert tensor_array(small["outputs"]["labels"])[0, 0] == "red"
