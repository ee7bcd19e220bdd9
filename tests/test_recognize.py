"""Recognize through `kubeinfer serve`: distorted logos are recognised, unrelated images are unknown.

Galleries both ways: an .npz written by `kubeinfer gallery build` (TorchScript encoder,
centroid) and a --base-data folder built at start (ONNX encoder, exemplar).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import png_bytes
from recognize_support import (
    ALL_BRANDS,
    BRANDS,
    NEW_BRAND,
    embed,
    gallery_views,
    logo_encoders,
    queries,
    unrelated_images,
    write_base_data,
)
from runtime_support import REPO, RuntimeProcess, runtime_env

from kubeinfer.clients import Client
from kubeinfer.clients.images import to_proto_image
from kubeinfer.clients.rest import RestClient
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1.inference_pb2_grpc import InferenceStub

THRESHOLD = 0.7  # same-brand queries score >= 0.9, other brands <= 0.55, unrelated images <= 0.45
UNRELATED = unrelated_images(5) + unrelated_images(6)


def build_gallery(directory: Path) -> subprocess.Popen[str]:
    """The gallery file, made the way users make it: `kubeinfer gallery build` (into directory/brands.npz)."""
    base = write_base_data(directory / "base", BRANDS)
    return subprocess.Popen([sys.executable, "-m", "kubeinfer", "gallery", "build", "--model",
                             str(logo_encoders().torchscript), "--base-data", str(base), "--out",
                             str(directory / "brands.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runtime_env(), cwd=REPO)


@pytest.fixture(scope="module")
def runtimes(runtime_factory: Callable[..., RuntimeProcess],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, RuntimeProcess]:
    """Both recognize runtimes; the exemplar one starts while the gallery file is built, then they load together."""
    base = write_base_data(tmp_path_factory.mktemp("recognize-base") / "base", BRANDS)
    base_data = runtime_factory("--task", "recognize", "--model", str(logo_encoders().onnx), "--base-data", str(base),
                                "--gallery-mode", "exemplar", "--gallery-batch-size", "4",
                                "--similarity-threshold", str(THRESHOLD), "--model-name", "logos-exemplar",
                                "--shutdown-delay", "0", wait=False)
    directory = tmp_path_factory.mktemp("recognize-file")
    building = build_gallery(directory)
    _, errors = building.communicate(timeout=120)
    assert building.returncode == 0, errors
    file = runtime_factory("--task", "recognize", "--model", str(logo_encoders().torchscript), "--embeddings",
                           str(directory / "brands.npz"), "--similarity-threshold", str(THRESHOLD),
                           "--model-name", "logos", "--max-batch-delay-ms", "5", "--top-k", "3",
                           "--shutdown-delay", "0", wait=False)
    return {"file_runtime": file.wait_ready(), "base_data_runtime": base_data.wait_ready()}


@pytest.fixture(scope="module")
def file_runtime(runtimes: dict[str, RuntimeProcess]) -> RuntimeProcess:
    """The encoder in TorchScript with a gallery file (mean per brand)."""
    return runtimes["file_runtime"]


@pytest.fixture(scope="module")
def base_data_runtime(runtimes: dict[str, RuntimeProcess]) -> RuntimeProcess:
    """The encoder in ONNX with a base-data folder (every exemplar kept)."""
    return runtimes["base_data_runtime"]


def brand_queries() -> list[tuple[str, str, np.ndarray]]:
    return [(brand, kind, image) for brand, logo in BRANDS.items() for kind, image in queries(logo()).items()]


@pytest.mark.parametrize("runtime_name", ["file_runtime", "base_data_runtime"])
def test_distorted_logos_are_recognised_as_their_brand(runtime_name: str, request: pytest.FixtureRequest) -> None:
    runtime: RuntimeProcess = request.getfixturevalue(runtime_name)
    cases = brand_queries()
    # half as PNG files, half as raw RGB pixels: both paths must agree with the encoder
    images = [png_bytes(image) if i % 2 else image for i, (_, _, image) in enumerate(cases)]
    with Client(runtime.grpc_target) as client:
        results = client.recognize(images)
    assert len(results) == len(cases)
    for (brand, kind, _), result in zip(cases, results, strict=True):
        assert (result.label, result.known) == (brand, True), f"{brand} ({kind}): {result}"
        assert THRESHOLD <= result.similarity <= 1.0 + 1e-5
        assert [c.label for c in result.candidates] == [brand]
        assert result.candidates[0].similarity == pytest.approx(result.similarity)


@pytest.mark.parametrize("runtime_name", ["file_runtime", "base_data_runtime"])
def test_unrelated_images_are_unknown(runtime_name: str, request: pytest.FixtureRequest) -> None:
    runtime: RuntimeProcess = request.getfixturevalue(runtime_name)
    unseen_brand = ALL_BRANDS[NEW_BRAND]()
    with Client(runtime.grpc_target) as client:
        results = client.recognize([*UNRELATED, unseen_brand], top_k=2)
    for result in results:
        assert (result.label, result.known) == ("unknown", False), result
        assert -1.0 <= result.similarity < THRESHOLD
        assert len(result.candidates) == 2 and result.candidates[0].label in BRANDS  # the nearest is still named
        assert result.candidates[0].similarity == pytest.approx(result.similarity)


def test_threshold_override(file_runtime: RuntimeProcess) -> None:
    distorted = queries(BRANDS["delta"]())["all-at-once"]
    with Client(file_runtime.grpc_target) as client:
        default, strict, lax = (client.recognize([distorted, UNRELATED[2]], threshold=threshold)
                                for threshold in (None, 0.9999, -1.0))
    assert default[0].label == "delta" and default[1].label == "unknown"
    assert (strict[0].label, strict[0].known) == ("unknown", False)  # same similarity, stricter threshold
    assert strict[0].similarity == pytest.approx(default[0].similarity)
    assert (lax[1].known, lax[1].label) == (True, lax[1].candidates[0].label)  # everything is known at -1
    assert lax[1].label in BRANDS


def test_top_k_override_and_default(file_runtime: RuntimeProcess) -> None:
    query = queries(BRANDS["star"]())["shifted"]
    with Client(file_runtime.grpc_target) as client:
        three = client.recognize([query], top_k=3)[0]
        everything = client.recognize([query], top_k=100)[0]
        runtime_default = client.recognize([query], top_k=None)[0]  # the runtime's --top-k 3
    assert [c.label for c in three.candidates] == [c.label for c in everything.candidates[:3]]
    assert three.candidates[0].label == "star"
    assert sorted(c.label for c in everything.candidates) == sorted(BRANDS)  # each label once, even with k > labels
    similarities = [c.similarity for c in everything.candidates]
    assert similarities == sorted(similarities, reverse=True) and similarities[0] > similarities[1]
    assert len(runtime_default.candidates) == 3


def test_similarities_are_cosines_of_the_raw_encoder_outputs(base_data_runtime: RuntimeProcess) -> None:
    """The served numbers, recomputed here: no softmax on the encoder (its sidecar says logits), per-label max."""
    query = queries(BRANDS["star"]())["noisy"]
    with Client(base_data_runtime.grpc_target) as client:
        (result,) = client.recognize([query], top_k=100)
    encoder = logo_encoders().torchscript
    (unit_query,) = embed(encoder, [query])
    assert len(result.candidates) == len(BRANDS)
    for candidate in result.candidates:
        views = embed(encoder, gallery_views(BRANDS[candidate.label]()))
        assert candidate.similarity == pytest.approx(float((views @ unit_query).max()), abs=1e-4), candidate.label


@pytest.mark.parametrize(("threshold", "top_k", "message"), [
    (1.5, None, "threshold must be in [-1.0, 1.0], got 1.5"),
    (-1.01, None, "threshold must be in [-1.0, 1.0]"),
    (float("nan"), None, "parameter 'threshold' must be finite, got NaN"),
    (None, 0, "top_k must be in [1, 1000], got 0"),
    (None, 1001, "top_k must be in [1, 1000], got 1001"),
])
def test_out_of_range_parameters_are_invalid_argument(file_runtime: RuntimeProcess, threshold: float | None,
                                                      top_k: int | None, message: str) -> None:
    with Client(file_runtime.grpc_target) as client, pytest.raises(grpc.RpcError) as failure:
        client.recognize([BRANDS["acme"]()], threshold=threshold, top_k=top_k)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in failure.value.details()


def test_bad_images_are_invalid_argument(file_runtime: RuntimeProcess) -> None:
    with grpc.insecure_channel(file_runtime.grpc_target) as channel:
        stub = InferenceStub(channel)
        for request, message in [
            (pb.RecognizeRequest(images=[to_proto_image(BRANDS["acme"]()), pb.Image(encoded=b"not an image")]),
             "image 1: not a decodable"),
            (pb.RecognizeRequest(), "the request holds no images"),
        ]:
            with pytest.raises(grpc.RpcError) as failure:
                stub.Recognize(request, timeout=30)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in failure.value.details()


def test_model_info_and_metrics_describe_the_gallery(file_runtime: RuntimeProcess,
                                                     base_data_runtime: RuntimeProcess) -> None:
    with Client(file_runtime.grpc_target) as client:
        info = client.model_info()
    assert (info.task, info.model_name, info.model_format) == ("recognize", "logos", "torchscript")
    assert (info.gallery_size, info.gallery_dimension) == (6, logo_encoders().dimension)
    assert info.gallery_labels == sorted(BRANDS)
    assert info.similarity == pytest.approx(THRESHOLD) and info.top_k == 3 and info.input_size == 64
    assert 'kubeinfer_gallery_size{model="logos"} 6.0' in file_runtime.metrics()

    with Client(base_data_runtime.grpc_target) as client:
        exemplar = client.model_info()
    assert (exemplar.model_format, exemplar.gallery_size, exemplar.gallery_labels) == ("onnx", 18, sorted(BRANDS))
    assert 'kubeinfer_gallery_size{model="logos-exemplar"} 18.0' in base_data_runtime.metrics()


def test_other_tasks_rpcs_are_failed_precondition(file_runtime: RuntimeProcess) -> None:
    with Client(file_runtime.grpc_target) as client, pytest.raises(grpc.RpcError) as failure:
        client.detect([BRANDS["acme"]()])
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "serves 'recognize'" in failure.value.details()


def test_predict_cli_calls_recognize(file_runtime: RuntimeProcess, tmp_path: Path) -> None:
    query, unrelated = tmp_path / "query.png", tmp_path / "unrelated.png"
    query.write_bytes(png_bytes(queries(BRANDS["kube"]())["scaled-down"]))
    unrelated.write_bytes(png_bytes(UNRELATED[0]))
    done = subprocess.run([sys.executable, "-m", "kubeinfer", "predict", "--target", file_runtime.grpc_target,
                           "--top-k", "2", str(query), str(unrelated)], capture_output=True, text=True,
                          env=runtime_env(), cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert [(r["image"], r["label"], r["known"]) for r in output] == [(str(query), "kube", True),
                                                                       (str(unrelated), "unknown", False)]
    assert len(output[0]["candidates"]) == 2
    refused = subprocess.run([sys.executable, "-m", "kubeinfer", "predict", "--target", file_runtime.grpc_target,
                              "--threshold", "2", str(query)], capture_output=True, text=True, env=runtime_env(),
                             cwd=REPO, timeout=60)
    assert refused.returncode == 1 and "INVALID_ARGUMENT: threshold must be in [-1.0, 1.0]" in refused.stderr


def post_json(url: str, document: dict) -> tuple[dict, int]:
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read()), response.status
    except urllib.error.HTTPError as error:
        with error:
            return json.loads(error.read()), error.code


def test_rest_recognize(file_runtime: RuntimeProcess) -> None:
    query = png_bytes(queries(BRANDS["checker"]())["noisy"])
    url = file_runtime.http_url + "/v1/recognize"
    body, status = post_json(url, {"images": [{"b64": base64.b64encode(query).decode()},
                                              {"b64": base64.b64encode(png_bytes(UNRELATED[3])).decode()}],
                                   "parameters": {"top_k": 2, "threshold": 0.6}})
    assert status == 200, body
    first, second = body["results"]
    assert (first["label"], first["known"], len(first["candidates"])) == ("checker", True, 2)
    assert first["candidates"][0] == {"label": "checker", "similarity": pytest.approx(first["similarity"])}
    assert (second["label"], second["known"]) == ("unknown", False)

    rest = RestClient(file_runtime.http_url)
    results, status = rest.recognize([query], threshold=0.9999)
    assert status == 200 and results[0].label == "unknown" and not results[0].known  # type: ignore[index]
    results, status = rest.recognize([query], top_k=2)
    assert status == 200 and results[0].known and len(results[0].candidates) == 2  # type: ignore[index]
    refused, status = post_json(url, {"images": [{"b64": base64.b64encode(query).decode()}],
                                      "parameters": {"threshold": -3}})
    assert status == 400 and refused["code"] == "INVALID_ARGUMENT" and "threshold must be in" in refused["error"]
