"""Classify and ClassifyClip through `kubeinfer serve`, with a colour classifier whose answer is known."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from classify_support import (
    COLOURS,
    classify_runtime,
    colour_models,
    expected_probabilities,
    noisy,
    shared_runtime,
    solid,
    train_colour_cls,
    write_labels,
)
from conftest import jpeg_bytes, png_bytes
from runtime_support import REPO, BackgroundTraffic, RuntimeProcess, free_port, runtime_env

from kubeinfer.clients import Client
from kubeinfer.clients.types import ClassifyResult
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1.inference_pb2_grpc import InferenceStub


@pytest.fixture(scope="module")
def onnx_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_labels(tmp_path_factory.mktemp("onnx-labels"), "csv-onehot")


@pytest.fixture(scope="module")
def onnx_starting(runtime_factory: Callable[..., RuntimeProcess], onnx_labels: Path) -> RuntimeProcess:
    """The ONNX runtime, started but not waited for: it loads while the TorchScript one does."""
    return shared_runtime(runtime_factory, "classify-onnx", "--task", "classify", "--model",
                          str(colour_models().onnx), "--labels", str(onnx_labels), "--model-name", "colours-onnx",
                          wait=False)


@pytest.fixture(scope="module")
def runtime(runtime_factory: Callable[..., RuntimeProcess], tmp_path_factory: pytest.TempPathFactory,
            onnx_starting: RuntimeProcess) -> RuntimeProcess:
    return classify_runtime(runtime_factory, tmp_path_factory.mktemp("classify-labels"))


@pytest.fixture(scope="module")
def onnx_runtime(onnx_starting: RuntimeProcess) -> RuntimeProcess:
    return onnx_starting.wait_ready()


@pytest.fixture(scope="module")
def client(runtime: RuntimeProcess) -> Iterator[Client]:
    with Client(runtime.grpc_target) as connection:
        yield connection


def scores_by_class(result: ClassifyResult) -> np.ndarray:
    scores = np.zeros(len(COLOURS))
    for c in result.top:
        scores[c.class_id] = c.score
    return scores


def assert_matches(result: ClassifyResult, rgb: np.ndarray, colour: str, tolerance: float = 1e-5) -> None:
    expected = expected_probabilities(rgb)
    assert result.label == colour
    assert [c.label for c in result.top] == [COLOURS[i] for i in np.argsort(-expected, kind="stable")]
    assert all(c.label == COLOURS[c.class_id] for c in result.top)
    np.testing.assert_allclose(scores_by_class(result), expected, atol=tolerance)


def test_solid_images_in_every_form_get_their_colour(client: Client, tmp_path: Path) -> None:
    images, colours = [], []
    for colour in COLOURS:
        pixels = solid(colour, 37, 91)
        path = tmp_path / f"{colour}.png"
        path.write_bytes(png_bytes(pixels))
        images += [pixels, png_bytes(pixels), path, jpeg_bytes(pixels)]
        colours += [colour] * 4
    results = client.classify(images, top_k=3)
    assert len(results) == len(images)
    for image, colour, result in zip(images, colours, results, strict=True):
        if isinstance(image, np.ndarray):
            assert_matches(result, image, colour)
        assert result.label == colour
        assert result.score > 0.999


def test_noisy_images_get_their_dominant_colour_with_the_expected_scores(client: Client) -> None:
    pictures = [(colour, noisy(colour, seed)) for seed in range(3) for colour in COLOURS]
    results = client.classify([png_bytes(p) for _, p in pictures], top_k=3)
    for (colour, pixels), result in zip(pictures, results, strict=True):
        assert_matches(result, pixels, colour)
        assert 0.5 < result.score < 0.999, "the noise should leave the answer uncertain"


def test_top_k_defaults_to_the_runtime_flag_and_is_capped_at_the_class_count(client: Client) -> None:
    image = [png_bytes(noisy("green", 7))]
    assert len(client.classify(image)[0].top) == 2  # --top-k 2
    (one,) = client.classify(image, top_k=1)
    (everything,) = client.classify(image, top_k=50)
    assert [c.label for c in one.top] == ["green"]
    assert len(everything.top) == 3
    assert sum(c.score for c in everything.top) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(grpc.RpcError) as failure:
        client.classify(image, top_k=0)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_k must be at least 1, got 0" in failure.value.details()


def test_onnx_export_serves_the_same_answers_with_one_hot_csv_labels(onnx_runtime: RuntimeProcess,
                                                                     client: Client) -> None:
    pictures = [png_bytes(noisy(colour, 20 + i)) for i, colour in enumerate(COLOURS * 2)]
    with Client(onnx_runtime.grpc_target) as onnx:
        info = onnx.model_info()
        got = onnx.classify(pictures, top_k=3)
    assert (info.model_format, info.labels) == ("onnx", COLOURS)
    want = client.classify(pictures, top_k=3)
    for g, w, colour in zip(got, want, COLOURS * 2, strict=True):
        assert g.label == w.label == colour
        np.testing.assert_allclose(scores_by_class(g), scores_by_class(w), atol=1e-5)


def test_a_clip_is_the_mean_of_its_frames(client: Client) -> None:
    frames = [noisy("red", 30), noisy("red", 31), noisy("blue", 32), noisy("red", 33), noisy("blue", 34)]
    result = client.classify_clip(iter([png_bytes(f) for f in frames]), top_k=3)
    expected = np.mean([expected_probabilities(f) for f in frames], axis=0)
    assert result.frames == 5
    assert result.result.label == "red"
    np.testing.assert_allclose(scores_by_class(result.result), expected, atol=1e-5)
    assert len(client.classify_clip([frames[0]]).result.top) == 2  # default top-k


def test_a_long_clip_is_batched_across_its_frames(client: Client, runtime: RuntimeProcess) -> None:
    before = batch_counts(runtime)
    result = client.classify_clip([solid("blue", 16, 16)] * 120)
    after = batch_counts(runtime)
    assert (result.frames, result.result.label) == (120, "blue")
    assert after[1] - before[1] == 120  # images through the model
    assert after[0] - before[0] < 120  # in fewer model calls than frames


def batch_counts(runtime: RuntimeProcess) -> tuple[float, float]:
    """(model calls, images) so far, from the batch size histogram."""
    lines = runtime.metrics().splitlines()
    count = next(float(line.split()[-1]) for line in lines if line.startswith("kubeinfer_batch_size_count"))
    total = next(float(line.split()[-1]) for line in lines if line.startswith("kubeinfer_batch_size_sum"))
    return count, total


@pytest.mark.parametrize(("frames", "message"), [
    ([], "the clip holds no frames"),
    ([b"png?", b"no"], "image 0: not a decodable"),
    (["good", "good", b"broken"], "image 2: not a decodable"),
])
def test_a_bad_clip_is_an_invalid_argument(client: Client, frames: list, message: str) -> None:
    frames = [png_bytes(solid("red")) if f == "good" else f for f in frames]
    with pytest.raises(grpc.RpcError) as failure:
        client.classify_clip(frames)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in failure.value.details()


def test_another_tasks_rpcs_are_failed_preconditions(client: Client, runtime: RuntimeProcess) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        client.detect([png_bytes(solid("red"))])
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "serves 'classify'" in failure.value.details()
    with pytest.raises(grpc.RpcError) as failure:
        list(client.stream_classify([png_bytes(solid("red"))], stream_id="s"))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "StreamClassify needs a runtime serving task stream-classify" in failure.value.details()


@pytest.fixture
def traffic(runtime: RuntimeProcess) -> Iterator[BackgroundTraffic]:
    connection = Client(runtime.grpc_target)
    image = png_bytes(noisy("blue", 50))

    def classify() -> None:
        assert connection.classify([image])[0].label == "blue"

    background = BackgroundTraffic(classify)
    yield background
    background.stop()
    connection.close()


def raw(pixels: bytes, height: int, width: int, channels: int = 3) -> pb.Image:
    return pb.Image(raw=pb.RawImage(pixels=pixels, height=height, width=width, channels=channels))


@pytest.mark.parametrize(("images", "message"), [
    ([pb.Image(encoded=png_bytes(solid("red"))), pb.Image(encoded=b"GIF89a nope")], "image 1: not a decodable"),
    ([pb.Image()], "image 0: empty"),
    ([raw(b"\0" * 10, 2, 2)], "image 0: raw pixels hold 10 bytes, expected 2x2x3 = 12"),
    ([raw(b"\0" * 8, 2, 2, 2)], "1 or 3 channels"),
    ([], "the request holds no images"),
])
def test_bad_images_are_refused_while_a_parallel_client_is_served(runtime: RuntimeProcess,
                                                                  traffic: BackgroundTraffic,
                                                                  images: list[pb.Image], message: str) -> None:
    with grpc.insecure_channel(runtime.grpc_target) as channel, pytest.raises(grpc.RpcError) as failure:
        InferenceStub(channel).Classify(pb.ClassifyRequest(images=images), timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in failure.value.details()


def test_an_oversized_message_is_resource_exhausted(runtime: RuntimeProcess, traffic: BackgroundTraffic) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (700, 700, 3), dtype=np.uint8)  # 1.47 MB > 1 MB limit
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(runtime.grpc_target, options) as channel, pytest.raises(grpc.RpcError) as failure:
        InferenceStub(channel).Classify(pb.ClassifyRequest(images=[raw(noise.tobytes(), 700, 700)]), timeout=30)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_model_info_reports_labels_from_the_one_hot_file(client: Client) -> None:
    info = client.model_info()
    assert (info.task, info.model_name, info.model_format) == ("classify", "colours", "torchscript")
    assert info.labels == COLOURS  # the .npy rows were stored in reverse: the 1's position decided
    assert (info.input_size, info.top_k) == (32, 2)
    assert info.model_path == colour_models().torchscript.name  # the file's name, not the server's path


def test_what_was_loaded_is_frozen_out_of_the_garbage_collector_before_serving(runtime: RuntimeProcess) -> None:
    logs = runtime.logs()
    frozen = re.search(r"garbage collector: (\d+) loaded objects frozen", logs)
    assert frozen is not None, logs
    assert int(frozen.group(1)) > 100_000  # torch, gRPC and the model: hundreds of thousands of objects
    assert frozen.start() < logs.index("serving colours (classify)")


def test_requests_and_images_are_counted(client: Client, runtime: RuntimeProcess) -> None:
    def images_total() -> float:
        line = next(line for line in runtime.metrics().splitlines()
                    if line.startswith('kubeinfer_images_processed_total{model="colours",task="classify"}'))
        return float(line.split()[-1])

    before = images_total()
    client.classify([solid("red")] * 3)
    with pytest.raises(grpc.RpcError):
        client.classify([b"nope"])
    assert images_total() - before == 3  # only images that reached the model
    client.classify_clip([solid("blue")])  # counted by RPC, as every call is
    text = runtime.metrics()
    assert 'kubeinfer_requests_total{code="OK",model="colours",protocol="grpc",rpc="Classify"}' in text
    assert 'kubeinfer_requests_total{code="INVALID_ARGUMENT",model="colours",protocol="grpc",rpc="Classify"}' in text
    assert 'kubeinfer_requests_total{code="OK",model="colours",protocol="grpc",rpc="ClassifyClip"}' in text


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubeinfer", *args], capture_output=True, text=True, cwd=REPO,
                          env=runtime_env(), timeout=timeout)


def test_predict_cli_classifies_files(runtime: RuntimeProcess, tmp_path: Path) -> None:
    paths = []
    for colour in ("blue", "red"):
        path = tmp_path / f"{colour}.png"
        path.write_bytes(png_bytes(noisy(colour, 60)))
        paths.append(str(path))
    result = run_cli("predict", "--target", runtime.grpc_target, "--top-k", "1", *paths)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert [entry["image"] for entry in output] == paths
    assert [[c["label"] for c in entry["top"]] for entry in output] == [["blue"], ["red"]]


BAD_LABELS = {  # name: (labels file name, its text, the one line the start must fail with)
    "more-labels-than-classes": ("labels.txt", "red\ngreen\nblue\nviolet",
                                 "has 4 labels but the model {model} outputs 3 classes"),
    "not-one-hot": ("labels.csv", "red,1,1,0\ngreen,0,1,0\nblue,0,0,1\n", "labels file {labels}: row 1 is not one-hot"),
}


@pytest.fixture(scope="module")
def bad_label_starts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.Popen[str]]]:
    """`kubeinfer serve` with each bad labels file, all started at once: (the file, the process) by case."""
    started = {}
    for name, (file_name, text, _) in BAD_LABELS.items():
        path = tmp_path_factory.mktemp(f"bad-labels-{name}") / file_name
        path.write_text(text)
        started[name] = (path, subprocess.Popen(
            [sys.executable, "-m", "kubeinfer", "serve", "--task", "classify", "--model",
             str(colour_models().torchscript), "--labels", str(path), "--grpc-port", str(free_port()),
             "--http-port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env=runtime_env()))
    return started


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_stop_the_start_with_one_clear_line(
        bad_label_starts: dict[str, tuple[Path, subprocess.Popen[str]]], case: str) -> None:
    path, process = bad_label_starts[case]
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    lines = [line for line in stderr.splitlines() if line.startswith("kubeinfer serve:")]
    assert len(lines) == 1, stderr
    assert BAD_LABELS[case][2].format(model=colour_models().torchscript, labels=path) in lines[0]
    assert "Traceback" not in stderr


def wait_for_labels(client: Client, labels: list[str], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while client.model_info().labels != labels:
        assert time.monotonic() < deadline, f"labels never became {labels}: {client.model_info().labels}"
        time.sleep(0.1)


def test_sighup_reloads_the_labels_and_keeps_them_when_the_file_is_broken(onnx_runtime: RuntimeProcess,
                                                                          onnx_labels: Path) -> None:
    original = onnx_labels.read_text()
    renamed = ["crimson", "lime", "navy"]
    with Client(onnx_runtime.grpc_target) as onnx:
        try:
            write_labels(onnx_labels.parent, "csv-onehot", renamed)
            onnx_runtime.process.send_signal(signal.SIGHUP)
            wait_for_labels(onnx, renamed)
            assert onnx.classify([solid("red")])[0].label == "crimson"

            onnx_labels.write_text("a,1,0\nb,0,1\n")  # two classes for a three-class model
            onnx_runtime.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 15
            while "labels not reloaded" not in onnx_runtime.logs():
                assert time.monotonic() < deadline, onnx_runtime.logs()
                time.sleep(0.1)
            assert "has 2 labels but the model" in onnx_runtime.logs()
            assert onnx.model_info().labels == renamed
        finally:
            onnx_labels.write_text(original)
            onnx_runtime.process.send_signal(signal.SIGHUP)
            wait_for_labels(onnx, COLOURS)


@pytest.mark.slow
def test_an_ultralytics_cls_model_serves_with_its_own_class_names(
        runtime_factory: Callable[..., RuntimeProcess]) -> None:
    model = train_colour_cls()
    served = runtime_factory("--task", "classify", "--model", str(model), "--model-name", "colour-cls")
    pictures = [(colour, noisy(colour, 900 + i)) for i, colour in enumerate(COLOURS * 4)]
    try:
        with Client(served.grpc_target) as cls:
            info = cls.model_info()
            results = cls.classify([png_bytes(p) for _, p in pictures], top_k=3)
    finally:
        served.terminate()
    assert (info.model_format, info.labels, info.input_size) == ("pytorch", ["blue", "green", "red"], 32)
    assert [r.label for r in results] == [colour for colour, _ in pictures]
    assert all(sum(c.score for c in r.top) == pytest.approx(1.0, abs=1e-4) for r in results)
