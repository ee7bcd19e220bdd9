"""`--backend auto|torch|onnx`: a .pt detector exported to ONNX at start answers like torch, cached by hash."""

from __future__ import annotations

import shutil
import urllib.request
from dataclasses import replace
from pathlib import Path

import cv2
import grpc
import pytest
from conftest import fresh_images, iou
from runtime_support import CACHE, RuntimeProcess

from kubeinfer.clients import Client
from kubeinfer.runtime.cpus import default_instances, thread_budget, usable_cpus
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.models.backend import choose_backend
from kubeinfer.runtime.models.yolo import YoloDetector
from kubeinfer.runtime.models.yolo_io import Selection
from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1.inference_pb2_grpc import InferenceStub

EXPORTS = CACHE / "exports"  # the tests' runtimes use the same cache (runtime_support.runtime_env)


def detect_all(model: YoloDetector | YoloOnnxDetector, count: int) -> list[list[tuple[float, ...]]]:
    """Boxes (x1, y1, x2, y2, score, class) for ``count`` fresh images, in one batch."""
    samples = fresh_images(seed=21, count=count)
    prepared = [model.preprocess(cv2.cvtColor(s.pixels, cv2.COLOR_RGB2BGR)) for s in samples]
    raws = model.forward(prepared)  # no selection in the batch step: postprocess selects each image's boxes
    selection = Selection(0.25, 0.45, 300)
    return [[(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id)
             for b in model.postprocess(raw, replace(item, selection=selection))]
            for raw, item in zip(raws, prepared, strict=True)]


def test_onnx_export_answers_like_torch(detector_model: Path) -> None:
    choice = choose_backend(detector_model, "auto", "cpu", EXPORTS, None)
    assert choice.backend == "onnx" and choice.path.suffix == ".onnx"
    torch_model = YoloDetector(detector_model, "cpu", None)
    onnx_model = YoloOnnxDetector(choice.path, "cpu", None, exported_from=detector_model)
    assert (torch_model.engine, onnx_model.engine) == ("torch", "onnx")
    assert onnx_model.format == torch_model.format == "pytorch"  # the file the user gave
    assert (onnx_model.image_size, onnx_model.names) == (torch_model.image_size, torch_model.names)
    want, got = detect_all(torch_model, 8), detect_all(onnx_model, 8)
    assert sum(len(boxes) for boxes in want) >= 8  # real detections to compare, not empty lists
    for w_boxes, g_boxes in zip(want, got, strict=True):
        assert len(g_boxes) == len(w_boxes)
        for w, g in zip(sorted(w_boxes), sorted(g_boxes), strict=True):
            assert iou(w[:4], g[:4]) > 0.99 and abs(w[4] - g[4]) < 0.01 and w[5] == g[5]


def test_export_is_cached_by_the_model_hash(detector_model: Path, tmp_path: Path) -> None:
    first = choose_backend(detector_model, "onnx", "cpu", EXPORTS, None).path
    stamp = first.stat().st_mtime_ns
    renamed = tmp_path / "renamed.pt"
    shutil.copyfile(detector_model, renamed)
    assert choose_backend(renamed, "onnx", "cpu", EXPORTS, None).path == first  # same bytes, same export
    assert first.stat().st_mtime_ns == stamp  # not exported again
    assert not list(first.parent.glob(".export-*"))  # no work directory left behind


def test_auto_falls_back_to_torch_and_onnx_refuses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    choice = choose_backend(broken, "auto", "cpu", tmp_path / "cache", None)
    assert (choice.path, choice.backend) == (broken, "torch")
    assert "the ONNX export failed" in caplog.text
    with pytest.raises(StartupError, match=r"--backend onnx: cannot export broken\.pt"):
        choose_backend(broken, "onnx", "cpu", tmp_path / "cache", None)


def test_torch_requested_or_gpu_keeps_the_file(detector_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert choose_backend(detector_model, "torch", "cpu", cache, None).backend == "torch"
    assert choose_backend(detector_model, "auto", "cuda:0", cache, None).backend == "torch"
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"")
    assert choose_backend(onnx_file, "auto", "cpu", cache, None).backend == "onnx"
    assert not cache.exists()  # nothing exported


def test_served_backend_in_model_info_and_metrics(detect_runtime: RuntimeProcess) -> None:
    with grpc.insecure_channel(detect_runtime.grpc_target) as channel:
        info = InferenceStub(channel).GetModelInfo(pb.ModelInfoRequest(), timeout=30)
    assert (info.model_format, info.backend) == ("pytorch", "onnx")
    instances = default_instances("detect", "cpu", usable_cpus())  # the runtime's defaults on this machine
    assert (info.batching.instances, info.batching.threads) == (
        instances, thread_budget(usable_cpus(), instances).model_threads)
    with Client(detect_runtime.grpc_target) as client:
        described = client.model_info()
    assert (described.backend, described.instances, described.threads) == (
        "onnx", info.batching.instances, info.batching.threads)
    with urllib.request.urlopen(detect_runtime.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'backend="onnx"' in next(line for line in text.splitlines() if line.startswith("kubeinfer_build_info"))
