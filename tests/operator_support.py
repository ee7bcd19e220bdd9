"""Helpers for the operator tests: the CRD and examples, the operator as a process, API paths, waiting."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = ROOT / "crds" / "inferenceservices.kubeinfer.io.yaml"
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))

T = TypeVar("T")


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@functools.cache
def _crd_text() -> str:
    return CRD_PATH.read_text()


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(_crd_text())


@functools.cache
def _schema_json() -> str:
    return json.dumps(load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def crd_schema() -> dict[str, Any]:
    return json.loads(_schema_json())


def eventually(check: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05,
               what: str = "condition",
               tolerate: tuple[type[BaseException], ...] = (AssertionError,)) -> T:
    """Poll until ``check`` returns something truthy; fail with the last value (or ``tolerate``d error) seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except tolerate as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class OperatorProcess:
    """`kubeinfer operator` in a subprocess, with its log kept for failure messages."""

    def __init__(self, args: list[str], kubeconfig: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        full_env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("KUBERNETES_SERVICE_HOST", None)  # never mistake the test host for a pod
        self.process = subprocess.Popen([sys.executable, "-m", "kubeinfer", "operator", *args],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return int(self.process.returncode)


def is_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/apis/kubeinfer.io/v1alpha1/namespaces/{namespace}/inferenceservices"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


def deployment_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


def service_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def pod_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/api/v1/namespaces/{namespace}/pods"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")
