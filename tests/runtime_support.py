"""Start and stop real `kubeinfer serve` processes on loopback ports for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(CACHE / "models" / ".ultralytics"), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    env.update(extra)
    return env


class RuntimeProcess:
    """One `kubeinfer serve` subprocess; ``args`` are the serve flags (ports and host are added)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.args = ["serve", "--host", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                     "--http-port", str(self.http_port), *args]
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "kubeinfer", *self.args], stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env or runtime_env(), cwd=REPO)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> RuntimeProcess:
        """Poll /readyz until 200; fail with the server's log if it exits or never gets ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.http_url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"runtime not ready after {timeout}s:\n{self.logs()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=5) as response:
            return response.read().decode()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)


class BackgroundTraffic:
    """Calls ``request`` in a loop on a thread (it must raise on a wrong answer); every call must succeed."""

    def __init__(self, request: Callable[[], None]) -> None:
        self.request = request
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

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
        self._thread.join(30)
        assert self.errors == [], self.errors[:3]
        assert self.ok > 0
