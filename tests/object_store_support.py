"""The suite's object stores: real servers built from their Go modules and started on one address of this machine.

``SeaweedS3`` is SeaweedFS (`weed server` with its S3 gateway): an S3-compatible store that signs and checks
requests (SigV4), knows buckets, versions, ranges, ETags and per-identity permissions. ``FakeGcs`` is
fake-gcs-server, a GCS emulator (as Google's SDKs use it: unsigned requests, STORAGE_EMULATOR_HOST). Both are built
once by scripts/storage/build.sh and cached under .cache/storage; without Go the tests that need them skip, and
fail under CI. They listen only on the address given: loopback, or the real node's bridge (10.85.0.1) so that
pods reach them. SeaweedFS's telemetry is turned off (and pointed at a closed loopback port).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "storage" / "build.sh"

# Identities of the S3 store: the admin writes test data; the reader may only read and list bucket "models".
ADMIN = ("kubeinfer-admin", "admin-secret-0123456789")
READER = ("kubeinfer-reader", "reader-secret-0123456789")
READER_BUCKETS = ("models", "versions")


class StoreError(RuntimeError):
    """A test object store could not be built or started."""


def store_binary(name: str) -> Path:
    """The built binary of ``name`` (seaweedfs or fake-gcs-server); skips without Go, except under CI."""
    done = subprocess.run(["bash", str(BUILD), name], stdout=subprocess.PIPE, stderr=None, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            raise StoreError(f"scripts/storage/build.sh {name} failed; see the output above")
        pytest.skip(f"no {name}: scripts/storage/build.sh failed (is Go installed?)")
    return Path(done.stdout.strip().splitlines()[-1])


def free_port(host: str) -> int:
    return free_ports(host, 1)[0]


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct free ports: all held open until each is known (one released at a time may come back)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise StoreError(f"{url}: the server exited ({process.returncode}):\n{tail}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise StoreError(f"{url}: no answer within {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class SeaweedS3:
    """`weed server` (master, volume, filer, S3 gateway) in one process; data kept in ``state`` across restarts."""

    def __init__(self, state: Path, host: str = "127.0.0.1") -> None:
        self.binary = store_binary("seaweedfs")
        self.state, self.host = state, host
        self.data = state / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.log = state / "weed.log"
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
        self.ports = dict(zip(names, free_ports(host, len(names)), strict=True))
        self.process: subprocess.Popen[bytes] | None = None
        identities = [
            {"name": "admin", "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
             "actions": [f"{action}:{bucket}" for bucket in READER_BUCKETS for action in ("Read", "List")]},
        ]
        self.config = state / "s3.json"
        self.config.write_text(json.dumps({"identities": identities}))

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"

    def start(self) -> SeaweedS3:
        p = self.ports
        command = [
            str(self.binary), "server", f"-dir={self.data}", f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            "-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:9/",
            "-master.volumeSizeLimitMB=256", "-volume.max=100",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={self.state / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.config}",
        ]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=self.state,
                                            start_new_session=True)
        _wait_http(f"{self.endpoint}/", self.process, self.log)
        return self

    def kill(self) -> None:
        """Gone at once, as a crashed or unreachable store is: SIGKILL, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        _stop(self.process)

    def shell(self, *commands: str) -> str:
        """Run `weed shell` commands (bucket administration the S3 API of obstore does not offer)."""
        script = "\n".join(commands) + "\n"
        p = self.ports  # SeaweedFS's HOST:PORT.GRPCPORT: the gRPC ports are not the default PORT+10000
        done = subprocess.run([str(self.binary), "shell", f"-master={self.host}:{p['master']}.{p['master.grpc']}",
                               f"-filer={self.host}:{p['filer']}.{p['filer.grpc']}"], input=script, capture_output=True,
                              text=True, timeout=120, cwd=self.state)
        if done.returncode != 0 or "error" in done.stdout.lower():
            raise StoreError(f"weed shell {commands}: {done.stdout}{done.stderr}")
        return done.stdout

    def create_bucket(self, name: str, versioned: bool = False) -> None:
        commands = [f"s3.bucket.create -name {name}"]
        if versioned:
            commands.append(f"s3.bucket.versioning -name {name} -enable")
        self.shell(*commands)

    def store(self, bucket: str) -> Any:
        """An obstore S3Store as the admin (test data is written with the same library the product reads with)."""
        from obstore.store import S3Store

        return S3Store(bucket, endpoint=self.endpoint, access_key_id=ADMIN[0], secret_access_key=ADMIN[1],
                       region="us-east-1", client_options={"allow_http": True})

    def put(self, bucket: str, key: str, data: bytes | Path) -> dict[str, Any]:
        """Write one object; returns its e_tag and version."""
        import obstore

        return dict(obstore.put(self.store(bucket), key, data))

    def env(self, access: tuple[str, str] = READER) -> dict[str, str]:
        """The standard AWS environment `kubeinfer fetch` reads, for one identity."""
        return {"AWS_ACCESS_KEY_ID": access[0], "AWS_SECRET_ACCESS_KEY": access[1], "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}


class FakeGcs:
    """fake-gcs-server, in memory, over http, answering both the JSON API and the XML-style object paths."""

    def __init__(self, state: Path, host: str = "127.0.0.1") -> None:
        self.binary = store_binary("fake-gcs-server")
        self.state, self.host = state, host
        state.mkdir(parents=True, exist_ok=True)
        self.port = free_port(host)
        self.log = state / "fake-gcs-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeGcs:
        command = [str(self.binary), "-scheme", "http", "-host", self.host, "-port", str(self.port),
                   "-public-host", f"{self.host}:{self.port}", "-external-url", self.endpoint,
                   "-backend", "memory", "-log-level", "warn"]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=self.state,
                                            start_new_session=True)
        _wait_http(f"{self.endpoint}/storage/v1/b", self.process, self.log)
        return self

    def stop(self) -> None:
        _stop(self.process)

    def _call(self, method: str, path: str, body: bytes, content_type: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.endpoint}{path}", data=body, method=method,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as response:
            return dict(json.loads(response.read() or b"{}"))

    def create_bucket(self, name: str, versioned: bool = False) -> None:
        body: dict[str, Any] = {"name": name}
        if versioned:
            body["versioning"] = {"enabled": True}
        self._call("POST", "/storage/v1/b", json.dumps(body).encode(), "application/json")

    def put(self, bucket: str, key: str, data: bytes) -> dict[str, Any]:
        """Write one object through the JSON API's media upload; returns its metadata (etag, generation)."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        return self._call("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream")

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}


class CountingRelay:
    """A TCP relay on ``host`` to ``target`` that counts the bytes the store sends back and passes at most
    ``rate`` bytes a second of them: a store across a network rather than on this machine."""

    def __init__(self, host: str, target: tuple[str, int], rate: float) -> None:
        self.target, self.rate = target, rate
        self.received = 0
        self._lock = threading.Lock()
        self.server = socket.create_server((host, 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while block := source.recv(1 << 16):
                if count:
                    with self._lock:
                        self.received += len(block)
                    time.sleep(len(block) / self.rate)
                sink.sendall(block)
        except OSError:
            return
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
