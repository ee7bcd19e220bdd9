"""`kubeinfer export`: a .pt detector to ONNX ahead of time (the cpu image's init container), in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fresh_images
from runtime_support import runtime_env

from kubeinfer.runtime.models.yolo import YoloDetector
from kubeinfer.runtime.models.yolo_io import Selection
from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector


def export(*args: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`kubeinfer export ARGS` in a process of its own (``blocked``: packages made impossible to import there)."""
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "from kubeinfer.cli import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "export", *args], capture_output=True, text=True, timeout=300,
                          env=runtime_env())


def test_the_export_serves_the_boxes_the_checkpoint_finds(detector_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported" / "model.onnx"
    done = export(str(detector_model), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"kubeinfer export: detector.pt -> {out} (")
    assert "1 classes, 128 px) in " in done.stdout
    assert not list(out.parent.glob(".*partial"))  # written atomically
    selection = Selection(0.25, 0.45, 300)
    found = []
    for detector in (YoloOnnxDetector(out, "cpu", None), YoloDetector(detector_model, "cpu", None)):
        items = [detector.preprocess(cv2.cvtColor(s.pixels, cv2.COLOR_RGB2BGR), selection)
                 for s in fresh_images(seed=64, count=6)]
        found.append([[(b.x1, b.y1, b.x2, b.y2, b.score) for b in raw.boxes or []] for raw in detector.forward(items)])
    assert sum(map(len, found[1])) >= 6
    for got, want in zip(*found, strict=True):
        assert len(got) == len(want)
        np.testing.assert_allclose(np.asarray(got).reshape(-1, 5), np.asarray(want).reshape(-1, 5), atol=1e-3)


def test_a_cache_folder_keeps_one_export_per_model(detector_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = export(str(detector_model), "--out", str(tmp_path / "a.onnx"), "--cache-dir", str(cache))
    assert first.returncode == 0, first.stderr
    (cached,) = (cache / "onnx").glob("*.onnx")
    stamp = cached.stat().st_mtime_ns
    second = export(str(detector_model), "--out", str(tmp_path / "b.onnx"), "--cache-dir", str(cache))
    assert second.returncode == 0, second.stderr
    assert cached.stat().st_mtime_ns == stamp  # not exported again
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing.pt", "missing.pt: no such file"),
    (lambda tmp: _write(tmp / "model.onnx", b"onnx"), "model.onnx: only ultralytics .pt detectors are exported"),
    (lambda tmp: _write(tmp / "broken.pt", b"not a checkpoint"), "cannot export broken.pt to ONNX: "),
])
def test_bad_input_is_one_line(tmp_path: Path, make: object, message: str) -> None:
    done = export(str(make(tmp_path)), "--out", str(tmp_path / "out.onnx"))  # type: ignore[operator]
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("kubeinfer export: ") and message in line, line
    assert not (tmp_path / "out.onnx").exists()


def test_without_torch_the_export_says_what_is_missing(detector_model: Path, tmp_path: Path) -> None:
    done = export(str(detector_model), "--out", str(tmp_path / "out.onnx"), blocked=("torch", "ultralytics"))
    assert done.returncode == 1
    assert done.stderr.strip() == ("kubeinfer export: exporting needs torch, which this runtime does not have: run "
                                   "`kubeinfer export` from the gpu image")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
