"""Recognition through the Open Inference Protocol: Triton and KServe clients get the native client's answers.

The runtime builds its gallery from a --base-data folder of the synthetic brand logos
(recognize_support); queries are distorted logos (known) and unrelated images (unknown).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conftest import png_bytes
from oip_support import ALL_CLIENTS, drive, images_tensor, infer_op, pixels_tensor, tensor_array, value
from recognize_support import BRANDS, logo_encoders, queries, unrelated_images, write_base_data
from runtime_support import RuntimeProcess

from kubeinfer.clients import Client
from kubeinfer.clients.types import Recognition

MODEL = "logos"
THRESHOLD = 0.7
OUTPUTS = ["label", "similarity", "known", "candidate_labels", "candidate_similarities"]
IMAGES = [queries(BRANDS["acme"]())["noisy"], queries(BRANDS["star"]())["shifted"], unrelated_images(5)[2],
          queries(BRANDS["kube"]())["jpeg"]]
ENCODED = [png_bytes(i) for i in IMAGES]


@pytest.fixture(scope="module")
def runtime(runtime_factory: Callable[..., RuntimeProcess], tmp_path_factory: pytest.TempPathFactory) -> RuntimeProcess:
    base = write_base_data(tmp_path_factory.mktemp("oip-recognize") / "base", BRANDS)
    return runtime_factory("--task", "recognize", "--model", str(logo_encoders().torchscript), "--base-data",
                           str(base), "--similarity-threshold", str(THRESHOLD), "--top-k", "3",
                           "--model-name", MODEL, "--max-batch-delay-ms", "5")


def assert_like_native(outputs: dict, native: list[Recognition]) -> None:
    assert list(outputs) == OUTPUTS
    assert [outputs[n]["datatype"] for n in OUTPUTS] == ["BYTES", "FP32", "BOOL", "BYTES", "FP32"]
    label, similarity, known, candidates, candidate_similarities = (tensor_array(outputs[n]) for n in OUTPUTS)
    assert label.tolist() == [r.label for r in native]
    assert known.tolist() == [r.known for r in native]
    np.testing.assert_allclose(similarity, [r.similarity for r in native], atol=1e-5)
    assert candidates.tolist() == [[c.label for c in r.candidates] for r in native]
    np.testing.assert_allclose(candidate_similarities, [[c.similarity for c in r.candidates] for r in native],
                               atol=1e-5)


@pytest.mark.parametrize("client", ALL_CLIENTS)
def test_every_client_recognises_like_the_native_client(client: str, runtime: RuntimeProcess) -> None:
    with Client(runtime.grpc_target) as native:
        default = native.recognize(ENCODED, top_k=3)
        loose = native.recognize(ENCODED, threshold=0.3, top_k=2)
    assert [(r.label, r.known) for r in default] == [("acme", True), ("star", True), ("unknown", False),
                                                      ("kube", True)]
    assert [r.known for r in loose] != [r.known for r in default], "the looser threshold must change something"
    loose_params = {"threshold": "0.3", "top_k": 2} if client == "kserve-grpc" else {"threshold": 0.3, "top_k": 2}
    results = drive(client, runtime, [
        infer_op(MODEL, images_tensor(ENCODED)),
        infer_op(MODEL, pixels_tensor(np.stack(IMAGES))),
        infer_op(MODEL, images_tensor(ENCODED), parameters=loose_params),
    ])
    assert_like_native(value(results[0])["outputs"], default)
    assert_like_native(value(results[1])["outputs"], default)
    assert_like_native(value(results[2])["outputs"], loose)


def test_metadata_documents_the_recognition_tensors(runtime: RuntimeProcess) -> None:
    (meta,) = drive("triton-http", runtime, [{"op": "model_metadata", "model": MODEL}])
    assert value(meta)["platform"] == "kubeinfer_recognize"
    assert value(meta)["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                                      {"name": "similarity", "datatype": "FP32", "shape": [-1]},
                                      {"name": "known", "datatype": "BOOL", "shape": [-1]},
                                      {"name": "candidate_labels", "datatype": "BYTES", "shape": [-1, -1]},
                                      {"name": "candidate_similarities", "datatype": "FP32", "shape": [-1, -1]}]
