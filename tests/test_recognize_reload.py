"""Gallery reloads while serving: file rewritten under concurrent load, a broken rewrite, and SIGHUP."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from recognize_support import ALL_BRANDS, BRANDS, NEW_BRAND, embed, logo_encoders, queries, write_base_data
from runtime_support import RuntimeProcess, wait_for

from kubeinfer.clients import Client
from kubeinfer.clients.types import Recognition
from kubeinfer.runtime.commands.serve import parse
from kubeinfer.runtime.engine.encoder import EncoderEngine, EncoderFacts
from kubeinfer.runtime.gallery import Gallery, save_npz
from kubeinfer.runtime.metrics import RuntimeMetrics

THRESHOLD = 0.7


def write_gallery(path: Path, brands: list[str]) -> None:
    """One centroid-like vector per brand (its clean logo), written atomically like `kubeinfer gallery build`."""
    vectors = embed(logo_encoders().torchscript, [ALL_BRANDS[b]() for b in brands])
    save_npz(Gallery(vectors, brands, "test"), path)


@dataclass
class Load:
    """Clients recognising one query per brand in a loop (old brands and the new one) until stopped."""

    target: str
    clients: int = 3
    results: list[tuple[float, list[str], list[Recognition]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.names = list(ALL_BRANDS)
        self.images = [queries(ALL_BRANDS[name]())["all-at-once"] for name in self.names]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        with Client(self.target, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    results = client.recognize(self.images, top_k=100)
                    with self._lock:
                        self.results.append((time.monotonic(), self.names, results))
                except Exception as exc:  # recorded; the test asserts there are none
                    with self._lock:
                        self.errors.append(repr(exc))

    def wait_for(self, predicate: Callable[[list[Recognition]], bool], timeout: float) -> float:
        """Seconds until a response satisfies ``predicate``."""
        started = time.monotonic()
        seen = 0
        while time.monotonic() - started < timeout:
            with self._lock:
                fresh = self.results[seen:]
                seen = len(self.results)
            if any(predicate(results) for _, _, results in fresh):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"no response satisfied the condition within {timeout}s; errors: {self.errors[:3]}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def new_brand_recognised(results: list[Recognition]) -> bool:
    return results[list(ALL_BRANDS).index(NEW_BRAND)].label == NEW_BRAND


def test_file_rewritten_under_load_swaps_atomically(runtime_factory: Callable[..., RuntimeProcess],
                                                   tmp_path: Path) -> None:
    path = tmp_path / "brands.npz"
    write_gallery(path, list(BRANDS))
    runtime = runtime_factory("--task", "recognize", "--model", str(logo_encoders().torchscript), "--embeddings",
                              str(path), "--similarity-threshold", str(THRESHOLD), "--model-name", "reloading",
                              "--max-batch-delay-ms", "2", "--shutdown-delay", "0")
    load = Load(runtime.grpc_target)
    try:
        load.wait_for(lambda results: True, timeout=30)
        time.sleep(0.5)
        assert not any(new_brand_recognised(r) for _, _, r in load.results)

        write_gallery(path, list(ALL_BRANDS))  # + the new brand
        assert load.wait_for(new_brand_recognised, timeout=20) < 10  # polled every 2 s

        path.write_bytes(b"half-written garbage")  # a broken rewrite: the last good gallery stays
        deadline = time.monotonic() + 15
        while "gallery reload failed" not in runtime.logs():
            assert time.monotonic() < deadline, runtime.logs()
            time.sleep(0.2)
        answered_after_failure = len(load.results)
        wait_for(lambda: len(load.results) > answered_after_failure, "answers after the failed reload", 15)
    finally:
        load.stop()

    assert load.errors == []
    assert len(load.results) > 20
    sizes = set()
    for _, names, results in load.results:
        labels_seen = {c.label for c in results[0].candidates}  # top_k=100: every gallery label, once
        sizes.add(len(labels_seen))
        assert labels_seen in (set(BRANDS), set(ALL_BRANDS)), "a response saw a partial gallery"
        for name, result in zip(names, results, strict=True):
            if name in BRANDS:
                assert result.label == name  # old brands are recognised before, during and after every reload
            else:
                assert result.label == (NEW_BRAND if NEW_BRAND in labels_seen else "unknown")
    assert sizes == {6, 7}
    with Client(runtime.grpc_target) as client:
        info = client.model_info()
    assert (info.gallery_size, info.gallery_labels) == (7, sorted(ALL_BRANDS))
    assert 'kubeinfer_gallery_size{model="reloading"} 7.0' in runtime.metrics()
    assert "gallery reloaded" in runtime.logs()


def test_sighup_rebuilds_a_base_data_gallery(runtime_factory: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    base = write_base_data(tmp_path / "base", BRANDS)
    runtime = runtime_factory("--task", "recognize", "--model", str(logo_encoders().onnx), "--base-data", str(base),
                              "--similarity-threshold", str(THRESHOLD), "--model-name", "hup", "--shutdown-delay", "0")
    query = queries(ALL_BRANDS[NEW_BRAND]())["scaled-up"]
    write_base_data(base, {NEW_BRAND: ALL_BRANDS[NEW_BRAND]})
    with Client(runtime.grpc_target) as client:
        time.sleep(2.5)  # longer than a file poll: folders are not watched, only SIGHUP rebuilds them
        assert client.recognize([query])[0].label == "unknown"
        runtime.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (result := client.recognize([query])[0]).label != NEW_BRAND:
            assert time.monotonic() < deadline, runtime.logs()
            time.sleep(0.2)
        assert result.known and result.similarity >= THRESHOLD
        assert client.model_info().gallery_size == 7
        assert client.recognize([queries(BRANDS["acme"]())["jpeg"]])[0].label == "acme"
    assert runtime.process.poll() is None  # SIGHUP reloads, it does not stop the runtime


@pytest.mark.parametrize("mode", ["centroid", "exemplar"])
def test_rebuild_swaps_a_new_object_and_a_failed_one_keeps_the_old(mode: str, tmp_path: Path) -> None:
    """The encoder engine's reload path in-process: a rebuild yields an equal gallery as a new object (a swap, not
    a patch) and is reported in the engine's facts; a rebuild that fails leaves the served gallery as it was."""
    base = write_base_data(tmp_path / "base", {"acme": BRANDS["acme"], "star": BRANDS["star"]})
    config = parse(["--task", "recognize", "--model", str(logo_encoders().onnx), "--base-data", str(base),
                    "--gallery-mode", mode, "--gallery-batch-size", "2"])
    with ThreadPoolExecutor(2) as pool:
        engine = EncoderEngine.load(config, RuntimeMetrics("t"), pool)
        told: list[EncoderFacts] = []
        engine.listen(told.append)
        engine.start()
        try:
            before = engine.gallery
            assert engine.swap_in_new_gallery() is True
            after = engine.gallery
            (base / "star" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
            assert engine.swap_in_new_gallery() is False
            kept = engine.gallery
        finally:
            engine.stop()
    assert [f.gallery.labels for f in told] == [("acme", "star")]  # the swap was told, the failure was not
    assert after is not before
    assert after.row_labels == before.row_labels
    np.testing.assert_allclose(after.vectors, before.vectors, atol=1e-6)
    assert kept is after  # a failed rebuild leaves the served gallery untouched
