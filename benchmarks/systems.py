"""Every system the benchmark serves, as data: how to start it, when it is ready, and how to load it.

A ``ServerPlan`` is one server process; its ``loads`` are the rows measured
against it (kubeinfer's classifier server is measured twice: through its native
API and through the Open Inference Protocol with the same client as the peers).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processes import free_port
from .venvs import SPECS

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
KUBEINFER = Path(sys.executable).parent / "kubeinfer"
MODEL_NAME = "classifier"


@dataclass(frozen=True)
class Settings:
    """What every system is configured with, so they are compared like for like."""

    max_batch_size: int
    max_batch_delay_ms: float
    torch_threads: int


@dataclass
class LoadPlan:
    """One measured row: the load generator's target, address and interpreter."""

    key: str
    system: str
    workload: str  # "classifier" or "detector"
    protocol: str
    batching: str
    target: str
    address: str
    python: Path
    extra_args: list[str] = field(default_factory=list)
    backend: str = ""  # the engine serving the model, as the server reports it (kubeinfer) or known (peers)
    is_kubeinfer: bool = False
    optional: bool = False  # skipped (not failed) when the server does not offer this API yet
    one_process: bool = False  # not kubeinfer, yet its CPU time is its own process's (peers may fork workers)
    frontends: int = 1  # kubeinfer's --frontends: the model's CPU per image is taken at that process's defaults

    def row(self, status: str = "ok", reason: str = "") -> dict[str, Any]:
        """The row of the results this plan measures, before its levels."""
        return {"key": self.key, "system": self.system, "workload": self.workload, "protocol": self.protocol,
                "batching": self.batching, "is_kubeinfer": self.is_kubeinfer, "backend": self.backend,
                "frontends": self.frontends, "status": status, "reason": reason, "levels": []}


@dataclass
class ServerPlan:
    """One server process and the rows measured against it."""

    name: str
    argv: list[str]
    ready_url: str
    loads: list[LoadPlan]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> content, written into its work dir
    venv: str | None = None  # the bench venv it needs (None: the project's)


def kubeinfer_classifier(model: Path, labels: Path, s: Settings, batch: int, with_oip: bool,
                         frontends: int = 1) -> ServerPlan:
    """The classifier served by ``frontends`` frontend processes; rows of one process keep the plain keys."""
    grpc, http = free_port(), free_port()
    batching = _batching(batch, s)
    variant = f"-f{frontends}" if frontends > 1 else ""
    system = "kubeinfer" if frontends == 1 else f"kubeinfer, {frontends} frontends"
    key = f"kubeinfer-classify{variant}-b{batch}"
    loads = [LoadPlan(key, system, "classifier", "kubeinfer gRPC Classify (raw pixels)", batching,
                      "kubeinfer-classify", f"127.0.0.1:{grpc}", Path(sys.executable), is_kubeinfer=True,
                      frontends=frontends)]
    if with_oip:
        loads.append(LoadPlan(f"kubeinfer-oip{variant}-b{batch}", f"{system} (OIP)", "classifier",
                              "OIP v2 gRPC (tritonclient)", batching, "oip-grpc", f"127.0.0.1:{grpc}",
                              SPECS["client"].python, ["--model-name", MODEL_NAME], is_kubeinfer=True,
                              optional=True, frontends=frontends))
    argv = [str(KUBEINFER), "serve", "--task", "classify", "--model", str(model), "--labels", str(labels),
            "--frontends", str(frontends), *_kubeinfer_common(grpc, http, batch, s)]
    return ServerPlan(key, argv, f"http://127.0.0.1:{http}/readyz", loads)


def kubeinfer_detector(model: Path, s: Settings, batch: int, backend: str = "auto", frontends: int = 1) -> ServerPlan:
    """The .pt detector served with ``--backend backend`` by ``frontends`` frontend processes; ``auto`` rows of
    one process keep the plain key."""
    grpc, http = free_port(), free_port()
    key = "kubeinfer-detect" if backend == "auto" else f"kubeinfer-detect-{backend}"
    key += f"-f{frontends}-b{batch}" if frontends > 1 else f"-b{batch}"
    system = "kubeinfer" if frontends == 1 else f"kubeinfer, {frontends} frontends"
    load = LoadPlan(key, system, "detector", "kubeinfer gRPC Detect (JPEG)", _batching(batch, s),
                    "kubeinfer-detect", f"127.0.0.1:{grpc}", Path(sys.executable), is_kubeinfer=True,
                    frontends=frontends)
    argv = [str(KUBEINFER), "serve", "--task", "detect", "--model", str(model), "--backend", backend,
            "--frontends", str(frontends), *_kubeinfer_common(grpc, http, batch, s, name="detector")]
    return ServerPlan(key, argv, f"http://127.0.0.1:{http}/readyz", [load])


def grpc_floor() -> ServerPlan:
    """A bare grpc.aio server answering the detector's Detect messages without any work: the transport's
    own cost per request, the floor under the kubeinfer rows' CPU outside the model."""
    grpc, http = free_port(), free_port()
    load = LoadPlan("grpc-floor", "grpc.aio alone: no model, no decode (the floor)", "detector",
                    "kubeinfer gRPC Detect (JPEG)", "—", "kubeinfer-detect", f"127.0.0.1:{grpc}",
                    Path(sys.executable), ["--answers", "0"], backend="none", one_process=True)  # empty answers
    argv = [sys.executable, str(HERE / "grpc_floor.py"), "--grpc-port", str(grpc), "--http-port", str(http)]
    return ServerPlan("grpc-floor", argv, f"http://127.0.0.1:{http}/ready", [load])


def _kubeinfer_common(grpc: int, http: int, batch: int, s: Settings, name: str = MODEL_NAME) -> list[str]:
    return ["--model-name", name, "--host", "127.0.0.1", "--grpc-port", str(grpc), "--http-port", str(http),
            "--max-batch-size", str(batch), "--max-batch-delay-ms", str(s.max_batch_delay_ms),
            "--shutdown-delay", "0", "--grace-period", "5", "--log-level", "warning"]  # its own thread budget


def kserve(model: Path, s: Settings) -> ServerPlan:
    grpc, http = free_port(), free_port()
    spec = SPECS["kserve"]
    load = LoadPlan("kserve", "KServe ModelServer", "classifier", "OIP v2 gRPC (tritonclient)",
                    "none (no batcher in the Python server)", "oip-grpc", f"127.0.0.1:{grpc}",
                    SPECS["client"].python, ["--model-name", MODEL_NAME, "--input-name", "pixels"], backend="torch")
    argv = [str(spec.python), str(PEERS / "serve_kserve.py"), "--model", str(model), "--name", MODEL_NAME,
            "--http_port", str(http), "--grpc_port", str(grpc), "--enable_latency_logging", "False"]
    return ServerPlan("kserve", argv, f"http://127.0.0.1:{http}/v2/models/{MODEL_NAME}/ready", [load], venv="kserve")


def mlserver(model: Path, s: Settings) -> ServerPlan:
    grpc, http, metrics = free_port(), free_port(), free_port()
    spec = SPECS["mlserver"]
    settings = {
        "host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
        "parallel_workers": 0,  # workers > 0 route requests through a multiprocessing queue: slower here
        "gzip_enabled": False,  # tritonclient does not expect gzip-compressed responses
        "logging_settings": {"version": 1, "disable_existing_loggers": False,
                             "loggers": {"mlserver.grpc": {"level": "WARNING"}}},  # no log line per request
    }
    model_settings = {
        "name": MODEL_NAME, "implementation": "mlserver_runtime.ClassifierRuntime",
        "max_batch_size": s.max_batch_size, "max_batch_time": s.max_batch_delay_ms / 1000.0,
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}],
        "parameters": {"uri": str(model)},
    }
    load = LoadPlan("mlserver", "MLServer", "classifier", "OIP v2 gRPC (tritonclient)",
                    f"adaptive, {_batching(s.max_batch_size, s)}", "oip-grpc", f"127.0.0.1:{grpc}",
                    SPECS["client"].python, ["--model-name", MODEL_NAME, "--input-name", "pixels"], backend="torch")
    return ServerPlan(
        "mlserver", [str(spec.path / "bin" / "mlserver"), "start", "repository"],
        f"http://127.0.0.1:{http}/v2/models/{MODEL_NAME}/ready", [load], env={"PYTHONPATH": str(PEERS)},
        files={"repository/settings.json": json.dumps(settings),
               f"repository/{MODEL_NAME}/model-settings.json": json.dumps(model_settings)},
        venv="mlserver")


def litserve(model: Path, s: Settings) -> ServerPlan:
    port = free_port()
    spec = SPECS["litserve"]
    load = LoadPlan("litserve", "LitServe", "classifier", "HTTP JSON (base64 pixels)",
                    _batching(s.max_batch_size, s), "litserve-http", f"127.0.0.1:{port}", SPECS["client"].python,
                    backend="torch")
    argv = [str(spec.python), str(PEERS / "serve_litserve.py"), "--model", str(model), "--port", str(port),
            "--max-batch-size", str(s.max_batch_size), "--batch-timeout", str(s.max_batch_delay_ms / 1000.0)]
    return ServerPlan("litserve", argv, f"http://127.0.0.1:{port}/health", [load], venv="litserve")


def _batching(batch: int, s: Settings) -> str:
    return "off (max 1)" if batch <= 1 else f"max {batch}, {s.max_batch_delay_ms:g} ms"
