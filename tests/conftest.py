"""Fixtures shared by the whole suite: models trained on synthetic data (cached), runtimes on loopback."""

from __future__ import annotations

import inspect
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import pytest_asyncio
from runtime_support import CACHE, RuntimeProcess, free_port, in_process_runtime

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.demo_models import SyntheticImage, synthetic_image, train_detector

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
    # SIGTERM all first: each runtime then sits out its --shutdown-delay alongside the others, not after them
    for runtime in started:
        if runtime.process.poll() is None:
            runtime.process.send_signal(signal.SIGTERM)
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
    async with in_process_runtime(tmp_path, "--model-name", "loading") as config:
        yield config


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


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real control plane (kube-apiserver, controllers, scheduler, etcd, kwok nodes) for the whole run."""
    from cluster_support import start_cluster

    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def api(kube_cluster: Any) -> Any:
    """The control plane's REST API as the admin (tests/cluster_support.py's Api), one per module."""
    from cluster_support import Api

    return Api(kube_cluster)


@pytest.fixture(scope="module")
def kubectl(kube_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Real ``kubectl`` against the control plane with a cache of its own; modules that need CRDs apply them
    in a fixture of theirs (``install_crd``)."""
    from cluster_support import Kubectl

    return Kubectl(kube_cluster.kubeconfig, tmp_path_factory.mktemp("kube-cache"))


@pytest.fixture(scope="module")
def dns(replicas: Any) -> Iterator[Any]:
    """A DNS server on loopback answering REPLICAS_NAME with the module's ``replicas`` (a ReplicaSet), as
    cluster DNS answers a headless Service's name; tests change the answer with ``dns.set``."""
    from dns_support import DnsServer
    from replica_support import REPLICAS_NAME

    with DnsServer({REPLICAS_NAME: replicas.hosts()}) as server:
        yield server


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[Any]:
    """A cluster with a real node real-0 (kubelet, containerd, kube-proxy, CoreDNS, metrics-server) for the tests
    that run pods for real; started only when such a test runs. Its teardown restores the machine."""
    from real_node_support import start_real_cluster

    cluster = start_real_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """SeaweedFS's S3 gateway on loopback (built once from its Go module), with buckets models and versions
    (versioned) that the reader identity may read, and private, which it may not."""
    from object_store_support import SeaweedS3

    store = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        store.create_bucket("models")
        store.create_bucket("versions", versioned=True)
        store.create_bucket("private")
        yield store
    finally:
        store.stop()


@pytest.fixture(scope="session")
def gcs_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """fake-gcs-server on loopback (built once from its Go module), with buckets models and versions (versioned)."""
    from object_store_support import FakeGcs

    store = FakeGcs(tmp_path_factory.mktemp("fake-gcs")).start()
    try:
        store.create_bucket("models")
        store.create_bucket("versions", versioned=True)
        yield store
    finally:
        store.stop()


# Tests whose own code or fixtures train, export or install something (cached after the first run) are `slow`,
# found from the source of the test and of every fixture it uses: `pytest -m "not slow"` runs only fast ones.
HEAVY = re.compile(r"\b(train_detector|train_colour_cls|colour_models|logo_encoders|export_model|ensure_client_venv|"
                   r"classify_runtime|shared_runtime|detector_model|segmentation_model|detect_runtime|install)\b")


def _heavy(function: Any) -> bool:
    try:
        return bool(HEAVY.search(inspect.getsource(function)))
    except (OSError, TypeError):
        return False


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The end-to-end tests' figures (tests/e2e_support.py), where they ran: times, splits, requests and failures."""
    support = sys.modules.get("e2e_support")
    figures = getattr(support, "FIGURES", None)
    if figures:
        terminalreporter.section("end-to-end figures (real node)")
        for line in figures:
            terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: the longer flows on the real node, run only with --e2e (make e2e); "
                                       "tests/conftest.py deselects them otherwise")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--e2e", action="store_true",
                     help="also run the tests marked e2e (the rest of issue #29's flows on the real node: make e2e)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `e2e` tests (rollouts, scaling, autoscaling on the real node: minutes each) run only with --e2e (make e2e)
    if not config.getoption("--e2e"):
        skipped = [item for item in items if item.get_closest_marker("e2e") is not None]
        if skipped:
            config.hook.pytest_deselected(items=skipped)
            items[:] = [item for item in items if item.get_closest_marker("e2e") is None]
    for item in items:
        if item.get_closest_marker("slow") is not None or not isinstance(item, pytest.Function):
            continue
        names = set(item.fixturenames)
        callspec = getattr(item, "callspec", None)
        if callspec is not None:  # fixtures chosen by parameter (request.getfixturevalue)
            names |= {value for value in callspec.params.values() if isinstance(value, str)}
        functions = [item.function]
        for name in names:
            defs = item.session._fixturemanager.getfixturedefs(name, item) or ()
            functions += [d.func for d in defs]
        if HEAVY.search(" ".join(names)) or any(_heavy(f) for f in functions):
            item.add_marker(pytest.mark.slow)
    # `last` tests (the real node's teardown check) stop session fixtures: after everything else (a stable sort)
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
