"""Fixtures shared by the whole suite: models trained on synthetic data (cached), runtimes on loopback."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import pytest_asyncio
from runtime_support import CACHE, RuntimeProcess, free_port

from kubeinfer.runtime.config import ServeConfig, add_arguments
from kubeinfer.runtime.dataplane import DataPlane
from kubeinfer.runtime.demo_models import SyntheticImage, synthetic_image, train_detector
from kubeinfer.runtime.grpc_server import GrpcTransport
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.rest_server import HttpTransport

MODELS = CACHE / "models"

__all__ = ["free_port"]


@pytest.fixture(scope="session")
def detector_model() -> Path:
    """A one-class YOLOv8n detector of filled rectangles, trained on first use (~2 min on 2 cores), then cached."""
    return train_detector(MODELS / "detector.pt")


@pytest.fixture(scope="session")
def segmentation_model() -> Path:
    """The same task as a YOLOv8n-seg model, so masks can be checked."""
    return train_detector(MODELS / "detector-seg.pt", segment=True)


@pytest.fixture(scope="session")
def runtime_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RuntimeProcess]]:
    """Start `kubeinfer serve ARGS...` processes; all are stopped at the end of the session."""
    started: list[RuntimeProcess] = []
    logs = tmp_path_factory.mktemp("runtime-logs")

    def start(*args: str, wait: bool = True, env: dict[str, str] | None = None) -> RuntimeProcess:
        runtime = RuntimeProcess(list(args), logs / f"runtime-{len(started)}.log", env)
        started.append(runtime)
        return runtime.wait_ready() if wait else runtime

    yield start
    for runtime in started:
        runtime.terminate()


@pytest.fixture(scope="session")
def detect_runtime(runtime_factory: Callable[..., RuntimeProcess], detector_model: Path) -> RuntimeProcess:
    """One detection runtime shared by the tests that only send requests."""
    return runtime_factory("--task", "detect", "--model", str(detector_model), "--model-name", "rects",
                           "--max-batch-delay-ms", "5", "--max-image-pixels", "4000000")


@pytest_asyncio.fixture(loop_scope="function")
async def loading_runtime(tmp_path: Path) -> AsyncIterator[ServeConfig]:
    """The real gRPC and HTTP transports with no model attached yet: what clients see while a model loads."""
    model = tmp_path / "model.pt"
    model.write_bytes(b"never loaded in this test")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = ServeConfig.from_args(parser.parse_args([
        "--task", "detect", "--model", str(model), "--grpc-port", str(free_port()), "--http-port", str(free_port()),
        "--model-name", "loading"]))
    metrics = RuntimeMetrics(config.model_name)
    dataplane = DataPlane(config, metrics)
    grpc_transport = GrpcTransport(config, dataplane, metrics)
    http_transport = HttpTransport(config, dataplane, metrics)
    await grpc_transport.start()
    await http_transport.start()
    yield config
    await grpc_transport.drain(0)
    await http_transport.stop()


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def jpeg_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def fresh_images(seed: int, count: int, size: int = 128) -> list[SyntheticImage]:
    """Synthetic images the detector never saw in training (training used seed 0)."""
    rng = np.random.default_rng(1000 + seed)
    return [synthetic_image(rng, size) for _ in range(count)]


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
