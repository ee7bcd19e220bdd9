"""`kubeinfer fetch --cache DIR`: a second fetch of an unchanged object copies it from the node's disk.

The bytes between the fetch and the store (SeaweedFS on loopback) pass through a counting, throttled TCP relay
(tests/object_store_support.py), so "not downloaded again" is measured on the wire, not taken from the command's
word, and the time saved is that of a store across a network rather than on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from object_store_support import ADMIN, CountingRelay, SeaweedS3

from kubeinfer.runtime.fetch_cache import DATA, NodeCache

MIB = 1024 * 1024
RATE = 25 * MIB  # bytes a second through the relay


@pytest.fixture()
def relay(s3_store: SeaweedS3) -> Iterator[CountingRelay]:
    counting = CountingRelay("127.0.0.1", ("127.0.0.1", s3_store.ports["s3"]), rate=RATE)
    yield counting
    counting.close()


def fetch(into: Path, url: str, env: dict[str, str], cache: Path, max_bytes: int = 1 << 40
          ) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "kubeinfer", "fetch", "--into", str(into), "--cache", str(cache),
                           "--cache-max-bytes", str(max_bytes), url], capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/bin:/bin", "KUBEINFER_FETCH_RETRIES": "1", **env})
    return done, time.monotonic() - began


def test_a_second_fetch_of_an_unchanged_object_comes_from_the_node_cache(s3_store: SeaweedS3, relay: CountingRelay,
                                                                        tmp_path: Path) -> None:
    key = f"cached-{time.monotonic_ns()}.onnx"
    data = os.urandom(32 * MIB)
    s3_store.put("models", key, data)
    env = {**s3_store.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}"}
    cache = tmp_path / "node-cache"
    first, cold = fetch(tmp_path / "pod-1", f"s3://models/{key}", env, cache)
    assert first.returncode == 0, first.stderr
    downloaded = relay.received
    assert downloaded > len(data) and "from the node cache" not in first.stdout
    second, warm = fetch(tmp_path / "pod-2", f"s3://models/{key}", env, cache)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().endswith("from the node cache")
    assert relay.received - downloaded < 64 * 1024  # a HEAD request, not the 32 MiB again
    assert (tmp_path / "pod-2" / key).read_bytes() == data
    record = json.loads((tmp_path / "pod-2" / ".kubeinfer-fetched.json").read_text())[key]
    assert record["etag"] and record["size"] == len(data)
    print(f"32 MiB object at {RATE / MIB:.0f} MiB/s: fetched in {cold:.2f} s, from the node cache in {warm:.2f} s")
    assert warm < cold

    # A new version of the object is a new key: downloaded, and cached beside the old one.
    s3_store.put("models", key, data[::-1])
    before = relay.received
    third, _ = fetch(tmp_path / "pod-3", f"s3://models/{key}", env, cache)
    assert third.returncode == 0 and "from the node cache" not in third.stdout
    assert relay.received - before > len(data)
    assert (tmp_path / "pod-3" / key).read_bytes() == data[::-1]
    assert len(list((cache / "objects").iterdir())) == 2


def test_a_pod_that_may_not_read_the_object_gets_nothing_from_the_cache(s3_store: SeaweedS3,
                                                                       tmp_path: Path) -> None:
    key = f"private-{time.monotonic_ns()}.onnx"
    s3_store.put("private", key, b"secret model")
    cache = tmp_path / "node-cache"
    allowed, _ = fetch(tmp_path / "admin-pod", f"s3://private/{key}", s3_store.env(ADMIN), cache)
    assert allowed.returncode == 0, allowed.stderr
    refused, _ = fetch(tmp_path / "reader-pod", f"s3://private/{key}", s3_store.env(), cache)
    assert refused.returncode == 1 and "access denied" in refused.stderr
    assert not (tmp_path / "reader-pod" / key).exists()


def test_a_damaged_entry_is_downloaded_again(s3_store: SeaweedS3, tmp_path: Path) -> None:
    key = f"damaged-{time.monotonic_ns()}.onnx"
    s3_store.put("models", key, b"the real model" * 1000)
    cache = tmp_path / "node-cache"
    assert fetch(tmp_path / "a", f"s3://models/{key}", s3_store.env(), cache)[0].returncode == 0
    (entry,) = (cache / "objects").iterdir()
    (entry / DATA).write_bytes(b"tampered" * 1000)
    again, _ = fetch(tmp_path / "b", f"s3://models/{key}", s3_store.env(), cache)
    assert again.returncode == 0 and "from the node cache" not in again.stdout
    assert (tmp_path / "b" / key).read_bytes() == b"the real model" * 1000


def test_least_recently_used_entries_go_past_the_bound(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", max_bytes=250)
    sources = {}
    for name in ("a", "b", "c"):
        sources[name] = tmp_path / name
        sources[name].write_bytes(name.encode() * 100)
    cache.store("a", sources["a"], "unused")
    time.sleep(0.02)
    cache.store("b", sources["b"], "unused")
    time.sleep(0.02)
    os.utime(cache.objects / "a")  # a was used after b
    time.sleep(0.02)
    cache.store("c", sources["c"], "unused")  # 300 bytes > 250: the least recently used, b, goes
    assert sorted(p.name for p in cache.objects.iterdir()) == ["a", "c"]


def test_a_folders_objects_come_from_the_node_cache_too(s3_store: SeaweedS3, relay: CountingRelay,
                                                        tmp_path: Path) -> None:
    prefix = f"folder-{time.monotonic_ns()}"
    files = {"model.onnx": os.urandom(MIB), "model.onnx.data": os.urandom(8 * MIB)}
    for name, data in files.items():
        s3_store.put("models", f"{prefix}/{name}", data)
    env = {**s3_store.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}"}
    cache = tmp_path / "node-cache"
    first, _ = fetch(tmp_path / "pod-1", f"model/=s3://models/{prefix}/", env, cache)
    assert first.returncode == 0 and "from the node cache" not in first.stdout, first.stderr
    downloaded = relay.received
    second, _ = fetch(tmp_path / "pod-2", f"model/=s3://models/{prefix}/", env, cache)
    assert second.returncode == 0 and "2 files, 9437184 bytes, 2 from the node cache" in second.stdout
    assert relay.received - downloaded < 64 * 1024  # the listing only
    for name, data in files.items():
        assert (tmp_path / "pod-2" / "model" / name).read_bytes() == data


def test_a_cache_folder_that_cannot_be_made_is_skipped(s3_store: SeaweedS3, tmp_path: Path) -> None:
    """(A hostPath the pod's user may not write is the case in a cluster; here, as root, a file in the way.)"""
    key = f"unusable-{time.monotonic_ns()}.onnx"
    s3_store.put("models", key, b"model")
    (tmp_path / "not-a-folder").write_text("")
    done, _ = fetch(tmp_path / "pod", f"s3://models/{key}", s3_store.env(), tmp_path / "not-a-folder" / "cache")
    assert done.returncode == 0, done.stderr
    assert "not usable" in done.stderr and (tmp_path / "pod" / key).read_bytes() == b"model"
