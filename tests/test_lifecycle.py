"""The runtime process as an operator sees it: start-up failures, health, metrics, batching, SIGTERM drain."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import fresh_images, png_bytes
from runtime_support import REPO, RuntimeProcess, free_port, runtime_env, wait_for

from kubeinfer.clients import Client
from kubeinfer.runtime import metrics as names


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubeinfer", *args], capture_output=True, text=True, cwd=REPO,
                          env=env or runtime_env(), timeout=timeout)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.parametrize(("setup", "expected"), [
    ("missing", "--model {path}: no such file or directory"),
    ("corrupt", "kubeinfer serve: cannot load detector {path}:"),
])
def test_a_missing_or_corrupt_model_exits_non_zero_with_one_clear_line(tmp_path: Path, setup: str,
                                                                       expected: str) -> None:
    path = tmp_path / "model.pt"
    if setup == "corrupt":
        path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = run_cli("serve", "--task", "detect", "--model", str(path), "--grpc-port", str(free_port()),
                     "--http-port", str(free_port()))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("kubeinfer serve:")]
    assert len(lines) == 1, result.stderr
    assert expected.format(path=path) in lines[0]
    assert "Traceback" not in result.stderr


def test_a_taken_port_exits_with_one_clear_line(detect_runtime: RuntimeProcess, detector_model: Path) -> None:
    result = run_cli("serve", "--model", str(detector_model), "--grpc-port", str(detect_runtime.grpc_port),
                     "--http-port", str(free_port()))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{detect_runtime.grpc_port} for gRPC" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_fall_back_to_kubeinfer_environment_variables(tmp_path: Path) -> None:
    env = runtime_env(KUBEINFER_MAX_BATCH_SIZE="0")
    result = run_cli("serve", "--model", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "--max-batch-size must be at least 1" in result.stderr
    help_text = run_cli("serve", "--help").stdout
    for flag in ("--max-batch-delay-ms", "--max-message-bytes", "--workers", "--max-image-pixels", "--iou"):
        assert flag in help_text
    assert "KUBEINFER_MAX_BATCH_SIZE" in help_text


def test_concurrent_clients_are_batched_together(detect_runtime: RuntimeProcess) -> None:
    images = [png_bytes(s.pixels) for s in fresh_images(seed=20, count=4)]
    before = scrape(detect_runtime)

    def one_client(_: int) -> int:
        with Client(detect_runtime.grpc_target) as client:
            return sum(len(client.detect([image])) for _ in range(6) for image in images)

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(one_client, range(16))) == 16 * 6 * 4
    after = scrape(detect_runtime)
    batches = after["kubeinfer_batch_size_count"] - before["kubeinfer_batch_size_count"]
    batched_images = after["kubeinfer_batch_size_sum"] - before["kubeinfer_batch_size_sum"]
    singles = after['kubeinfer_batch_size_bucket{le="1.0"}'] - before['kubeinfer_batch_size_bucket{le="1.0"}']
    assert batched_images == 16 * 6 * 4
    assert batches < batched_images, "every image ran alone: no batching across clients"
    assert singles < batches, "the histogram recorded no batch larger than 1"


def scrape(runtime: RuntimeProcess) -> defaultdict[str, float]:
    """Series of the runtime's /metrics, keyed by name plus labels other than model; absent series read 0."""
    values: defaultdict[str, float] = defaultdict(float)
    for line in runtime.metrics().splitlines():
        if line.startswith("#") or not line:
            continue
        series, value = line.rsplit(" ", 1)
        series = re.sub(r'model="[^"]*",?', "", series).replace(",}", "}").replace("{}", "")
        values[series] = float(value)
    return values


def test_metrics_expose_every_runtime_series(detect_runtime: RuntimeProcess) -> None:
    with Client(detect_runtime.grpc_target) as client:
        client.detect([png_bytes(fresh_images(seed=21, count=1)[0].pixels)] * 3)
    text = detect_runtime.metrics()
    for name in (names.REQUESTS, names.REQUEST_DURATION + "_bucket", names.BATCH_SIZE + "_bucket",
                 names.QUEUE_WAIT + "_bucket", names.INFERENCE_DURATION + "_bucket", names.IMAGES,
                 names.MODEL_READY, names.QUEUE_DEPTH, names.IN_FLIGHT):
        assert re.search(rf"^{name}\{{", text, re.MULTILINE), f"{name} missing from /metrics"
    values = scrape(detect_runtime)
    assert values["kubeinfer_model_ready"] == 1
    assert values['kubeinfer_images_processed_total{task="detect"}'] >= 3
    assert 'kubeinfer_build_info{backend="onnx",format="pytorch",model="rects",task="detect"' in text


def test_http_health_and_readiness(detect_runtime: RuntimeProcess) -> None:
    assert http_status(detect_runtime.http_url + "/healthz") == 200
    with urllib.request.urlopen(detect_runtime.http_url + "/readyz", timeout=5) as response:
        assert json.load(response) == {"status": "ready", "model": "rects"}


def test_sigterm_drains_in_flight_requests_and_exits_zero(runtime_factory: Callable[..., RuntimeProcess],
                                                          detector_model: Path) -> None:
    runtime = runtime_factory("--task", "detect", "--model", str(detector_model), "--shutdown-delay", "1.5",
                              "--grace-period", "30", "--max-batch-size", "4")
    images = [s.pixels for s in fresh_images(seed=22, count=4)] * 40  # 160 images: a few seconds of work
    outcome: dict[str, object] = {}
    client = Client(runtime.grpc_target)
    client.model_info()

    def long_request() -> None:
        try:
            outcome["results"] = client.detect(images)
        except grpc.RpcError as error:
            outcome["error"] = error
        outcome["finished"] = time.monotonic()

    def in_flight() -> float:
        return scrape(runtime).get('kubeinfer_requests_in_flight{protocol="grpc"}', 0.0)

    worker = threading.Thread(target=long_request)
    worker.start()
    wait_for(lambda: in_flight() >= 1, "the long request to be in flight")
    signalled = time.monotonic()
    runtime.process.send_signal(signal.SIGTERM)
    wait_for(lambda: http_status(runtime.http_url + "/readyz") == 503, "/readyz to answer 503 after SIGTERM")
    # During the shutdown delay: not ready, NOT_SERVING, yet still answering.
    assert client.health() == "NOT_SERVING"
    assert client.detect([images[0]])[0].height == 128
    worker.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert len(outcome["results"]) == len(images)  # type: ignore[arg-type]
    # it was in flight before the signal (the gauge said so) and finished after it: drained, not refused
    assert outcome["finished"] > signalled  # type: ignore[operator]
    assert runtime.process.wait(30) == 0
    with pytest.raises(grpc.RpcError) as refused:
        client.detect([images[0]], timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()
    assert "stopped" in runtime.logs()


def test_predict_prints_json_results(detect_runtime: RuntimeProcess, tmp_path: Path) -> None:
    sample = fresh_images(seed=23, count=1)[0]
    image = tmp_path / "frame.png"
    image.write_bytes(png_bytes(sample.pixels))
    result = run_cli("predict", "--target", detect_runtime.grpc_target, str(image))
    assert result.returncode == 0, result.stderr
    (output,) = json.loads(result.stdout)
    assert output["image"] == str(image)
    assert output["defects"] == ["rectangle"]
    assert len(output["detections"]) >= 1 and set(output["detections"][0]["box"]) == {"x1", "y1", "x2", "y2"}


def test_predict_reports_an_unreachable_runtime(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(fresh_images(seed=24, count=1)[0].pixels))
    result = run_cli("predict", "--target", f"127.0.0.1:{free_port()}", "--timeout", "2", str(image))
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr


def test_predict_names_an_image_it_cannot_read(tmp_path: Path) -> None:
    result = run_cli("predict", "--target", f"127.0.0.1:{free_port()}", str(tmp_path / "missing.jpg"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"kubeinfer predict: cannot read {tmp_path / 'missing.jpg'}"
    assert "Traceback" not in result.stderr
