"""`kubeinfer fetch` of s3:// and gs:// URLs against real stores on loopback: SeaweedFS's S3 gateway and
fake-gcs-server (tests/object_store_support.py). The command gets nothing but each cloud SDK's standard
environment, as it would outside Kubernetes and as the operator sets it in the init container."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from object_store_support import ADMIN, READER, FakeGcs, SeaweedS3, free_port

from kubeinfer.runtime.digests import sha256_of
from kubeinfer.runtime.fetch_record import RECORD


def run_fetch(into: Path, *items: str, env: dict[str, str], retries: int = 1,
              extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubeinfer", "fetch", "--into", str(into), *extra, *items],
                          capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/bin:/bin", "KUBEINFER_FETCH_RETRIES": str(retries), **env})


def record(into: Path) -> dict[str, Any]:
    return dict(json.loads((into / RECORD).read_text()))


def one_line_failure(done: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line (earlier ones are retries), after checking the command failed with exit status 1."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("kubeinfer fetch: ")
    return line


def unique(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def test_s3_object_with_and_without_a_checksum(s3_store: SeaweedS3, tmp_path: Path) -> None:
    key = unique("yolo") + "/model.onnx"
    data = os.urandom(300_000)
    written = s3_store.put("models", key, data)
    digest = hashlib.sha256(data).hexdigest()
    done = run_fetch(tmp_path, f"model/best.onnx=s3://models/{key}#sha256={digest}", f"s3://models/{key}",
                     env=s3_store.env())
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model" / "best.onnx").read_bytes() == data == (tmp_path / "model.onnx").read_bytes()
    assert f"sha256 {digest}, etag {written['e_tag']}" in done.stdout
    # Without a checksum the object's ETag is what pins it: recorded, and compared on the next run.
    assert record(tmp_path)["model.onnx"] == {"url": f"s3://models/{key}", "size": len(data), "sha256": digest,
                                              "etag": written["e_tag"], "version": None}
    again = run_fetch(tmp_path, f"s3://models/{key}", env=s3_store.env())
    assert again.returncode == 0 and "already present" in again.stdout
    s3_store.put("models", key, b"a new model")
    changed = run_fetch(tmp_path, f"s3://models/{key}", env=s3_store.env())
    assert changed.returncode == 0 and "already present" not in changed.stdout
    assert (tmp_path / "model.onnx").read_bytes() == b"a new model"
    assert not list(tmp_path.rglob("*.part"))


def test_s3_prefix_is_a_model_directory(s3_store: SeaweedS3, tmp_path: Path) -> None:
    prefix = unique("yolo-dir")
    files = {"model.onnx": b"graph", "model.onnx.data": os.urandom(50_000), "extra/notes.txt": b"v1"}
    for name, data in files.items():
        s3_store.put("models", f"{prefix}/{name}", data)
    s3_store.put("models", f"{prefix}-sibling/model.onnx", b"not this one")
    done = run_fetch(tmp_path, f"model/=s3://models/{prefix}/", env=s3_store.env())
    assert done.returncode == 0, done.stderr
    assert "3 files" in done.stdout
    for name, data in files.items():
        assert (tmp_path / "model" / name).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [".kubeinfer-fetched", "extra", "model.onnx",
                                                                     "model.onnx.data"]
    assert run_fetch(tmp_path, f"model/=s3://models/{prefix}/", env=s3_store.env()).stdout.endswith(
        "already present\n")
    s3_store.put("models", f"{prefix}/extra/notes.txt", b"v2")  # one object changed: the folder is fetched again
    done = run_fetch(tmp_path, f"model/=s3://models/{prefix}/", env=s3_store.env())
    assert "already present" not in done.stdout and (tmp_path / "model" / "extra" / "notes.txt").read_bytes() == b"v2"
    empty = one_line_failure(run_fetch(tmp_path, f"x/=s3://models/{prefix}-none/", env=s3_store.env()))
    assert empty == f"kubeinfer fetch: s3://models/{prefix}-none/: no objects under the prefix"


def test_s3_archive_is_unpacked(s3_store: SeaweedS3, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in {"gallery/acme/1.jpg": b"a1", "gallery/globex/1.jpg": b"g1"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    key = unique("gallery") + ".tar.gz"
    s3_store.put("models", key, buffer.getvalue())
    done = run_fetch(tmp_path, f"base-data/=s3://models/{key}", env=s3_store.env())
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "base-data" / "globex" / "1.jpg").read_bytes() == b"g1"


def test_s3_version_id_reads_that_version(s3_store: SeaweedS3, tmp_path: Path) -> None:
    key = unique("versioned") + ".onnx"
    first = s3_store.put("versions", key, b"version one")
    second = s3_store.put("versions", key, b"version two")
    assert first["version"] and first["version"] != second["version"]
    done = run_fetch(tmp_path, f"old.onnx=s3://versions/{key}?versionId={first['version']}", f"new.onnx=s3://versions/{key}",
                     env=s3_store.env())
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "old.onnx").read_bytes() == b"version one"
    assert (tmp_path / "new.onnx").read_bytes() == b"version two"
    assert record(tmp_path)["old.onnx"]["version"] == first["version"]
    missing = one_line_failure(run_fetch(tmp_path, f"s3://versions/{key}?versionId=nonexistent", env=s3_store.env()))
    assert missing.endswith(f"no such version 'nonexistent' of key {key!r}")


@pytest.mark.parametrize(("case", "expected"), [
    ("missing key", "no such key 'absent.onnx'"),
    ("missing bucket", "no such bucket 'no-such-bucket'"),
    ("access denied", "access denied (AccessDenied): the credentials may not read it"),
    ("wrong secret", "bad credentials (SignatureDoesNotMatch): the store does not accept them"),
    ("unknown key id", "bad credentials (InvalidAccessKeyId): the store does not accept them"),
    ("checksum mismatch", "sha256 is "),
    ("endpoint unreachable", "unreachable (gave up after 2 attempts)"),
])
def test_s3_failures_are_one_line_without_secrets(s3_store: SeaweedS3, tmp_path: Path, case: str,
                                                 expected: str) -> None:
    s3_store.put("models", "present.onnx", b"present")
    s3_store.put("private", "secret.onnx", b"secret")
    env, url = s3_store.env(), "s3://models/present.onnx"
    if case == "missing key":
        url = "s3://models/absent.onnx"
    elif case == "missing bucket":
        env, url = s3_store.env(ADMIN), "s3://no-such-bucket/m.onnx"
    elif case == "access denied":
        url = "s3://private/secret.onnx"
    elif case == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret-0123456789"
    elif case == "unknown key id":
        env["AWS_ACCESS_KEY_ID"] = "nobody"
    elif case == "checksum mismatch":
        url += "#sha256=" + "0" * 64
    elif case == "endpoint unreachable":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    done = run_fetch(tmp_path, url, env=env, extra=("--force",))
    line = one_line_failure(done)
    assert expected in line, line
    assert line.startswith(f"kubeinfer fetch: {url.split('#')[0]}: ")
    for secret in (READER[1], ADMIN[1], "not-the-secret-0123456789"):
        assert secret not in done.stdout + done.stderr
    assert not (tmp_path / "present.onnx").exists() and not list(tmp_path.rglob("*.part"))


def test_gcs_object_prefix_and_generation(gcs_store: FakeGcs, tmp_path: Path) -> None:
    name = unique("detector")
    data = os.urandom(100_000)
    gcs_store.put("models", f"{name}/model.onnx", data)
    gcs_store.put("models", f"{name}/labels.txt", b"cat\ndog\n")
    first = gcs_store.put("versions", f"{name}.onnx", b"generation one")
    gcs_store.put("versions", f"{name}.onnx", b"generation two")
    digest = hashlib.sha256(data).hexdigest()
    done = run_fetch(tmp_path, f"model/m.onnx=gs://models/{name}/model.onnx#sha256={digest}",
                     f"dir/=gs://models/{name}/", f"old.onnx=gs://versions/{name}.onnx?generation={first['generation']}",
                     f"new.onnx=gs://versions/{name}.onnx", env=gcs_store.env())
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model" / "m.onnx").read_bytes() == data
    assert (tmp_path / "dir" / "labels.txt").read_bytes() == b"cat\ndog\n"
    assert (tmp_path / "old.onnx").read_bytes() == b"generation one"
    assert (tmp_path / "new.onnx").read_bytes() == b"generation two"
    assert record(tmp_path)["old.onnx"]["version"] == first["generation"]
    assert run_fetch(tmp_path, f"new.onnx=gs://versions/{name}.onnx", env=gcs_store.env()).stdout.endswith(
        "already present\n")


@pytest.mark.parametrize(("url", "expected"), [
    ("gs://models/absent.onnx", "no such key 'absent.onnx'"),
    ("gs://no-such-bucket/m.onnx", "no such bucket 'no-such-bucket'"),
])
def test_gcs_failures_are_one_line(gcs_store: FakeGcs, tmp_path: Path, url: str, expected: str) -> None:
    line = one_line_failure(run_fetch(tmp_path, url, env=gcs_store.env()))
    assert line == f"kubeinfer fetch: {url}: {expected}"


def test_gcs_unreadable_service_account_is_bad_credentials(tmp_path: Path) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS naming a broken key fails before any request (a proxy on a closed loopback
    port would catch one: nothing may leave this machine)."""
    key = tmp_path / "key.json"
    key.write_text('{"type": "service_account", "private_key": "not a key", "client_email": "x@y"}')
    closed = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    done = run_fetch(tmp_path / "into", "gs://models/m.onnx",
                     env={"GOOGLE_APPLICATION_CREDENTIALS": str(key), "HTTPS_PROXY": closed, "HTTP_PROXY": closed})
    line = one_line_failure(done)
    assert line.startswith("kubeinfer fetch: gs://models/m.onnx: bad credentials"), line
    assert "not a key" not in done.stderr


def test_a_store_that_dies_mid_download_is_resumed(tmp_path: Path) -> None:
    """SIGKILL the store while a large object streams, start it again on the same ports and data: the fetch retries
    with backoff and resumes at the byte it had reached (a range read pinned to the ETag), then verifies."""
    store = SeaweedS3(tmp_path / "store").start()
    try:
        store.create_bucket("models")
        data = os.urandom(64 * 1024 * 1024)
        store.put("models", "big.onnx", data)
        digest = hashlib.sha256(data).hexdigest()
        command = [sys.executable, "-m", "kubeinfer", "fetch", "--into", str(tmp_path / "into"), "--progress-every",
                   "0.001", f"s3://models/big.onnx#sha256={digest}"]
        fetch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={"PATH": "/usr/bin:/bin", "KUBEINFER_FETCH_RETRIES": "8", **store.env()})
        assert fetch.stdout is not None
        first = fetch.stdout.readline()  # the first progress line: bytes have arrived
        assert "MiB" in first, first
        os.kill(fetch.pid, 19)  # SIGSTOP: the fetch holds still while its store goes away
        store.kill()
        os.kill(fetch.pid, 18)  # SIGCONT: it drains what the socket held, then finds the store gone
        restart = threading.Timer(3.0, store.start)
        restart.start()
        out, err = fetch.communicate(timeout=180)
        restart.join()
    finally:
        store.stop()
    assert fetch.returncode == 0, err
    assert (tmp_path / "into" / "big.onnx").stat().st_size == len(data)
    assert f"sha256 {digest}" in out
    print(err)
    resumed = [line for line in err.splitlines() if "retrying at byte" in line]
    assert resumed, err
    assert int(resumed[0].split("retrying at byte ")[1].split()[0]) > 0


def test_a_200_mb_object_streams_in_bounded_memory(s3_store: SeaweedS3, tmp_path: Path) -> None:
    """The fetch streams to disk: its peak RSS stays far below the object's size. Prints the time and peak RSS."""
    size = 200 * 1024 * 1024
    source = tmp_path / "big.bin"
    with source.open("wb") as out:
        block = os.urandom(1024 * 1024)
        for index in range(size // len(block)):
            out.write(block[index % 256:] + block[: index % 256])  # 200 distinct MiB without 200 MiB of urandom
    digest = sha256_of(source)
    key = unique("big") + ".onnx"
    s3_store.put("models", key, source)
    source.unlink()
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "kubeinfer", "fetch", "--into", str(tmp_path / "into"),
                                "--progress-every", "0.1", f"s3://models/{key}#sha256={digest}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={"PATH": "/usr/bin:/bin", **s3_store.env()})
    peak_mib = 0.0
    while process.poll() is None:  # VmHWM: this process's own peak (a child's ru_maxrss counts the forking parent)
        peak_mib = max(peak_mib, _high_water_mib(process.pid))
        time.sleep(0.02)
    seconds = time.monotonic() - began
    out, err = process.communicate()
    assert process.returncode == 0, err
    print(f"200 MiB fetched in {seconds:.1f} s, peak RSS {peak_mib:.0f} MiB")
    assert (tmp_path / "into" / f"{key}").stat().st_size == size
    assert f"sha256 {digest}" in out
    assert peak_mib < 100, f"peak RSS {peak_mib:.0f} MiB"
    progress = [line for line in out.splitlines() if " MiB (" in line and " MiB/s" in line]
    assert progress or seconds < 0.2, out  # a download longer than --progress-every reports its progress


def _high_water_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
