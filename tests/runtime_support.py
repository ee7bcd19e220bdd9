"""Start and stop real `kubeinfer serve` processes on loopback ports for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the runtime is imported lazily: the process helpers here run without it
    from kubeinfer.runtime.config import ServeConfig
    from kubeinfer.runtime.detection import DetectResult
    from kubeinfer.runtime.images import ImageInput
    from kubeinfer.runtime.model_info import ModelInfo
    from kubeinfer.runtime.parameters import Parameters

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # appended: the repo root's `operator/` must not shadow the stdlib module

from benchmarks.processes import ManagedProcess, free_port  # noqa: E402

__all__ = ["CACHE", "REPO", "BackgroundTraffic", "RuntimeProcess", "free_port", "in_process_runtime", "runtime_env",
           "wait_for"]


def runtime_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(CACHE / "models" / ".ultralytics"), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
               KUBEINFER_CACHE_DIR=str(CACHE / "exports"))  # --backend auto exports each .pt model once, here
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def in_process_runtime(folder: Path, *args: str, task: Any = None) -> AsyncIterator[Any]:
    """The real gRPC and HTTP transports in this process on free ports, yielding the ServeConfig.

    Without ``task`` no model is attached: what clients see while a model loads. ``args`` are serve flags
    (default ``--task detect``); the model file exists but is never loaded.
    """
    from kubeinfer.runtime.commands.serve import parse
    from kubeinfer.runtime.dataplane import DataPlane
    from kubeinfer.runtime.metrics import RuntimeMetrics
    from kubeinfer.runtime.transports.grpc import GrpcTransport
    from kubeinfer.runtime.transports.http import HttpTransport

    model = folder / "model.pt"
    model.write_bytes(b"never loaded")
    config = parse(["--task", "detect", "--model", str(model), "--grpc-port", str(free_port()), "--http-port",
                    str(free_port()), *args])
    metrics = RuntimeMetrics(config.model_name)
    dataplane = DataPlane(config, metrics)
    if task is not None:
        dataplane.attach(task(config) if callable(task) else task)
    grpc_transport = GrpcTransport(config, dataplane, metrics)
    http_transport = HttpTransport(config, dataplane, metrics)
    await grpc_transport.start()
    await http_transport.start()
    try:
        yield config
    finally:
        await grpc_transport.drain(0)
        await http_transport.stop()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0, interval: float = 0.02) -> None:
    """Poll ``condition`` until true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(interval)


class RuntimeProcess(ManagedProcess):
    """One `kubeinfer serve` subprocess; ``args`` are the serve flags (ports and host are added).

    Built on the benchmarks' ``ManagedProcess``: one process helper for tests and benchmarks.
    """

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.args = ["serve", "--host", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                     "--http-port", str(self.http_port), *args]
        super().__init__("runtime", [sys.executable, "-m", "kubeinfer", *self.args], log_path, env or runtime_env(),
                         cwd=REPO)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> RuntimeProcess:  # type: ignore[override]
        """Poll /readyz until 200; ServerError with the server's log if it exits or never gets ready."""
        super().wait_ready(self.http_url + "/readyz", timeout)
        return self

    def metrics(self) -> str:
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=5) as response:
            return response.read().decode()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (then SIGKILL whatever is left); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        if not self._log.closed:
            self.stop(grace=5.0)
        return int(self.process.returncode)


def metric_sum(exposition: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples (full sample name, e.g. kubeinfer_requests_total) in a Prometheus exposition
    whose labels include ``labels``; 0 when there are none."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(exposition) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


class BackgroundTraffic:
    """Calls ``request`` in a loop on ``threads`` threads (it must raise on a wrong answer) until ``stop()``, which
    asserts that every call succeeded; ``ok`` counts them as they come."""

    def __init__(self, request: Callable[[], None], threads: int = 1) -> None:
        self.request = request
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.request()
                self.ok += 1
            except Exception as exc:  # recorded; stop() asserts there were none
                self.errors.append(repr(exc))

    def stop(self) -> None:
        deadline = time.monotonic() + 30
        while self.ok == 0 and not self.errors and time.monotonic() < deadline:  # at least one full call
            time.sleep(0.01)
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert self.errors == [], self.errors[:3]
        assert self.ok > 0


class EmptyDetect:
    """A detect task that finds nothing, instantly, after reading its parameters as the real one does (one class,
    no masks): for transport tests that need a serving runtime, not a model."""

    name = "detect"

    def __init__(self, config: ServeConfig) -> None:
        from kubeinfer.runtime.detection import DetectionRequests
        from kubeinfer.runtime.engine.detector import DetectorFacts

        facts = DetectorFacts({0: "thing"}, 64, segmentation=False, device="cpu", format="onnx", backend="onnx",
                              decodes_jpegs=False)
        self.requests = DetectionRequests(config, facts)

    def info(self, base: ModelInfo) -> ModelInfo:
        return base

    async def detect(self, images: Sequence[ImageInput], params: Parameters) -> list[DetectResult]:
        from kubeinfer.runtime.detection import DetectResult

        self.requests.selection(params)
        return [DetectResult([], [], 1, 1) for _ in images]
