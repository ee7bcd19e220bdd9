"""Detect through `kubeinfer serve` and the gRPC client, with a detector trained on synthetic rectangles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from conftest import fresh_images, iou, jpeg_bytes, png_bytes
from PIL import Image
from runtime_support import RuntimeProcess

from kubeinfer.clients import Client
from kubeinfer.clients.types import DetectResult
from kubeinfer.runtime.demo_models import export_model


def boxes_of(result: DetectResult) -> list[tuple[float, float, float, float]]:
    return [(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in result.detections]


def assert_same_boxes(got: DetectResult, want: DetectResult, tolerance: float = 1e-3) -> None:
    assert len(got.detections) == len(want.detections)
    np.testing.assert_allclose(np.asarray(boxes_of(got)).reshape(-1, 4), np.asarray(boxes_of(want)).reshape(-1, 4),
                               atol=tolerance)


def assert_finds_every_rectangle(truth: list[tuple[int, int, int, int]], result: DetectResult) -> None:
    found = boxes_of(result)
    for box in truth:
        best = max((iou(box, f) for f in found), default=0.0)
        assert best >= 0.5, f"rectangle {box} not found (best IoU {best:.2f}) among {found}"


def test_finds_every_rectangle_of_fresh_images(detect_runtime: RuntimeProcess) -> None:
    """Recall at a low threshold (a few rectangles blend into the noise), precision at the default one."""
    samples = fresh_images(seed=1, count=20)
    images = [png_bytes(s.pixels) for s in samples]
    with Client(detect_runtime.grpc_target) as client:
        low = client.detect(images, confidence=0.05)
        default = client.detect(images)
    assert len(low) == len(samples)
    for sample, result, confident in zip(samples, low, default, strict=True):
        assert_finds_every_rectangle(sample.boxes, result)
        assert (result.height, result.width) == (128, 128)
        assert result.defects == ["rectangle"]
        assert all(d.label == "rectangle" and d.class_id == 0 and 0.05 <= d.score <= 1 for d in result.detections)
        for found in boxes_of(confident):
            assert max(iou(found, truth) for truth in sample.boxes) >= 0.5, f"false positive {found}"
    found_at_default = sum(len(r.detections) for r in default)
    assert found_at_default >= 0.9 * sum(len(s.boxes) for s in samples)


def test_every_image_form_gives_the_same_answer(detect_runtime: RuntimeProcess, tmp_path: Path) -> None:
    sample = fresh_images(seed=2, count=1)[0]
    path = tmp_path / "image.png"
    path.write_bytes(png_bytes(sample.pixels))
    forms = [str(path), path, png_bytes(sample.pixels), sample.pixels, Image.fromarray(sample.pixels)]
    with Client(detect_runtime.grpc_target) as client:
        results = client.detect(forms)
        jpeg = client.detect([jpeg_bytes(sample.pixels)])[0]
    reference = boxes_of(results[0])
    assert reference
    for result in results[1:]:
        assert_same_boxes(result, results[0])
    assert_finds_every_rectangle(sample.boxes, jpeg)


def test_boxes_are_in_the_original_images_pixels(detect_runtime: RuntimeProcess) -> None:
    sample = fresh_images(seed=3, count=1)[0]
    wide = cv2.resize(sample.pixels, (384, 256), interpolation=cv2.INTER_NEAREST)  # x3 wide, x2 high
    with Client(detect_runtime.grpc_target) as client:
        (result,) = client.detect([wide])
    assert (result.height, result.width) == (256, 384)
    scaled = [(x1 * 3, y1 * 2, x2 * 3, y2 * 2) for x1, y1, x2, y2 in sample.boxes]
    assert_finds_every_rectangle(scaled, result)


def test_grey_raw_images_are_accepted(detect_runtime: RuntimeProcess) -> None:
    sample = fresh_images(seed=4, count=1)[0]
    grey = cv2.cvtColor(sample.pixels, cv2.COLOR_RGB2GRAY)
    with Client(detect_runtime.grpc_target) as client:
        (result,) = client.detect([grey])
    assert (result.height, result.width) == (128, 128)


def test_request_parameters_override_the_defaults(detect_runtime: RuntimeProcess) -> None:
    samples = [s for s in fresh_images(seed=5, count=12) if len(s.boxes) >= 2][:3]
    images = [png_bytes(s.pixels) for s in samples]
    with Client(detect_runtime.grpc_target) as client:
        default = client.detect(images)
        one_each = client.detect(images, max_detections=1)
        strict = client.detect(images, confidence=0.999)
        loose = client.detect(images, confidence=0.01)
        only_class_0 = client.detect(images, classes=[0])
    for d, one, s, lo, c0 in zip(default, one_each, strict, loose, only_class_0, strict=True):
        assert len(d.detections) >= 2
        assert len(one.detections) == 1
        assert one.detections[0].score == pytest.approx(max(x.score for x in d.detections), abs=1e-4)
        assert len(s.detections) < len(d.detections)
        assert len(lo.detections) >= len(d.detections)
        assert_same_boxes(c0, d)


@pytest.mark.parametrize(("params", "message"), [
    ({"confidence": 1.5}, "confidence must be in"),
    ({"iou": -0.1}, "iou must be in"),
    ({"max_detections": 0}, "max_detections must be in"),
    ({"classes": [3]}, "classes [3] are not in the model"),
    ({"return_masks": True}, "return_masks needs a segmentation model"),
])
def test_out_of_range_parameters_are_invalid_arguments(detect_runtime: RuntimeProcess, params: dict,
                                                       message: str) -> None:
    image = png_bytes(fresh_images(seed=6, count=1)[0].pixels)
    with Client(detect_runtime.grpc_target) as client, pytest.raises(grpc.RpcError) as failure:
        client.detect([image], **params)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in failure.value.details()


def test_model_info_describes_the_served_model(detect_runtime: RuntimeProcess, detector_model: Path) -> None:
    with Client(detect_runtime.grpc_target) as client:
        info = client.model_info()
        assert client.health() == "SERVING"
        assert client.health("kubeinfer.v1.Inference") == "SERVING"
    assert (info.task, info.model_name, info.model_format) == ("detect", "rects", "pytorch")
    assert info.model_path == detector_model.name  # the file's name, not the server's path
    assert info.labels == ["rectangle"] and info.input_size == 128 and info.device == "cpu"
    assert (info.max_batch_size, info.max_batch_delay_ms) == (16, 5.0)
    assert info.confidence == pytest.approx(0.25) and info.iou == pytest.approx(0.45)
    assert info.segmentation is False and info.version


def test_segmentation_model_returns_polygons_around_each_rectangle(
        runtime_factory: Callable[..., RuntimeProcess], segmentation_model: Path) -> None:
    runtime = runtime_factory("--task", "detect", "--model", str(segmentation_model))
    samples = fresh_images(seed=7, count=4)
    with Client(runtime.grpc_target) as client:
        assert client.model_info().segmentation is True
        with_masks = client.detect([s.pixels for s in samples], return_masks=True)
        without = client.detect([s.pixels for s in samples])
    assert all(not d.mask for r in without for d in r.detections)
    matched = 0
    for sample, result in zip(samples, with_masks, strict=True):
        for truth in sample.boxes:
            hits = [d for d in result.detections if iou(truth, (d.box.x1, d.box.y1, d.box.x2, d.box.y2)) >= 0.5]
            if not hits:
                continue
            matched += 1
            polygon = np.asarray(max(hits[0].mask, key=len), dtype=np.float32).reshape(-1, 2)
            area = cv2.contourArea(polygon)
            truth_area = (truth[2] - truth[0]) * (truth[3] - truth[1])
            assert 0.5 * truth_area <= area <= 1.6 * truth_area, (truth, area)
            assert polygon[:, 0].min() >= truth[0] - 6 and polygon[:, 0].max() <= truth[2] + 6
            assert polygon[:, 1].min() >= truth[1] - 6 and polygon[:, 1].max() <= truth[3] + 6
    assert matched >= sum(len(s.boxes) for s in samples) - 1


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "name"), [("onnx", "onnx"), ("torchscript", "torchscript")])
def test_exported_models_serve_the_same_boxes(runtime_factory: Callable[..., RuntimeProcess],
                                              detect_runtime: RuntimeProcess, detector_model: Path,
                                              fmt: str, name: str) -> None:
    exported = export_model(detector_model, fmt)
    runtime = runtime_factory("--task", "detect", "--model", str(exported))
    samples = fresh_images(seed=8, count=6)
    images = [png_bytes(s.pixels) for s in samples]
    with Client(runtime.grpc_target) as client, Client(detect_runtime.grpc_target) as reference:
        assert client.model_info().model_format == name
        got, want = client.detect(images), reference.detect(images)
    for sample, g, w in zip(samples, got, want, strict=True):
        assert_finds_every_rectangle(sample.boxes, g)
        assert len(g.detections) == len(w.detections)
        for a, b in zip(sorted(boxes_of(g)), sorted(boxes_of(w)), strict=True):
            assert iou(a, b) > 0.95
