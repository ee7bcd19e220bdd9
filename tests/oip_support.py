"""Open Inference Protocol test support: the real clients' venv, the driver that runs them, tensor helpers.

tritonclient[grpc] and kserve pin protobuf < 7 while kubeinfer's stubs need protobuf 7, and both
register the protobuf package ``inference``: they live in their own venv (``.cache/oip-clients``,
built once from the pins below, rebuilt when the pins change) and run in a subprocess
(``tests/oip_driver.py``), one client library per process.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from runtime_support import CACHE, REPO, metric_sum

VENV = CACHE / "oip-clients"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed"
DRIVER = REPO / "tests" / "oip_driver.py"
# The exact clients the tests prove compatibility with.
REQUIREMENTS = ("tritonclient[grpc,http]==2.73.0", "kserve==0.21.0", "protobuf==6.33.6", "grpcio==1.85.1",
                "numpy==2.4.6")
TRITON_CLIENTS = ("triton-grpc", "triton-grpc-aio", "triton-http", "triton-http-aio")
KSERVE_CLIENTS = ("kserve-grpc", "kserve-rest")
ALL_CLIENTS = TRITON_CLIENTS + KSERVE_CLIENTS


def ensure_client_venv() -> Path:
    """The clients' python, installing the venv first when missing or built from other pins (~1 min)."""
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return PYTHON
    log = CACHE / "oip-clients-install.log"
    CACHE.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", "--clear", str(VENV)],
             [str(PYTHON), "-m", "pip", "install", "-q", "--upgrade", "pip"],
             [str(PYTHON), "-m", "pip", "install", "-q", *REQUIREMENTS]]
    with log.open("w") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                raise RuntimeError(f"installing the OIP clients failed at {' '.join(step)}; see {log}")
    STAMP.write_text(wanted)
    return PYTHON


def drive(client: str, runtime: Any, ops: list[dict[str, Any]], timeout: float = 300) -> list[dict[str, Any]]:
    """Run ``ops`` with one real client against ``runtime`` (a RuntimeProcess); one result per op."""
    spec = {"client": client, "grpc": runtime.grpc_target, "http": runtime.http_url, "ops": ops}
    done = subprocess.run([str(ensure_client_venv()), str(DRIVER)], input=json.dumps(spec), capture_output=True,
                          text=True, timeout=timeout, cwd=CACHE, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {client} driver failed ({done.returncode}):\n{done.stderr[-4000:]}")
    results = json.loads(done.stdout)["results"]
    assert len(results) == len(ops)
    return results


def value(result: dict[str, Any]) -> Any:
    assert "value" in result, f"expected a value, got {result}"
    return result["value"]


def error(result: dict[str, Any]) -> dict[str, str]:
    assert "error" in result, f"expected an error, got {result}"
    return result["error"]


def images_tensor(encoded: list[bytes], name: str = "images") -> dict[str, Any]:
    return {"name": name, "datatype": "BYTES", "shape": [len(encoded)],
            "elements": [base64.b64encode(e).decode() for e in encoded]}


def pixels_tensor(pixels: np.ndarray, name: str = "pixels", datatype: str = "UINT8") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(pixels.shape),
            "raw": base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode()}


def infer_op(model: str, *inputs: dict[str, Any], outputs: list[dict[str, Any]] | None = None,
             parameters: dict[str, Any] | None = None, request_id: str = "", binary_inputs: bool = True) -> dict:
    return {"op": "infer", "request": {"model": model, "inputs": list(inputs), "outputs": outputs,
                                       "parameters": parameters or {}, "id": request_id,
                                       "binary_inputs": binary_inputs}}


def tensor_array(output: dict[str, Any]) -> np.ndarray:
    """An output the driver described, as an array of its shape (BYTES as str)."""
    values = output["values"]
    dtype = object if output["datatype"] == "BYTES" else None
    return np.asarray(values, dtype=dtype).reshape(output["shape"])


def metric(runtime: Any, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples (full sample name, e.g. kubeinfer_requests_total) matching ``labels``."""
    return metric_sum(runtime.metrics(), name, **labels)
