"""Box selection in numpy (what an ONNX model is served with, no torch) keeps exactly what torchvision keeps; the
batch step's vectorised selection equals the per-image path, each image keeping its own thresholds, on the host
(numpy) and on the device (torch) alike."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from conftest import fresh_images
from runtime_support import CACHE

from kubeinfer.runtime.models.backend import choose_backend
from kubeinfer.runtime.models.box_selection import (
    MAX_NMS_CANDIDATES,
    nms,
    select_boxes,
    select_boxes_batch,
    select_end2end,
)
from kubeinfer.runtime.models.box_selection_torch import select_boxes_batch_on_device, select_boxes_on_device
from kubeinfer.runtime.models.yolo import YoloDetector
from kubeinfer.runtime.models.yolo_io import Selection
from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

SELECTIONS = [Selection(0.25, 0.45, 300), Selection(0.01, 0.45, 300), Selection(0.05, 0.2, 2, (0,)),
              Selection(0.9, 0.7, 300), Selection(0.01, 0.7, 5), Selection(0.01, 0.2, 300, (0,)), None,
              Selection(0.3, 0.45, 1)]


def _random_boxes(rng: np.random.Generator, count: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Crowded boxes (many overlaps near every threshold), scores with deliberate ties."""
    xy = rng.uniform(0, 60, (count, 2))
    wh = rng.uniform(1, 40, (count, 2))
    boxes = np.concatenate((xy, xy + wh), axis=1).astype(dtype)
    scores = rng.uniform(0, 1, count).astype(dtype)
    scores[rng.integers(0, count, count // 5)] = scores[0]  # ties: the order among equal scores matters too
    return boxes, scores


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("iou", [0.0, 0.2, 0.45, 0.5, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_nms_keeps_exactly_what_torchvision_keeps(dtype: type, iou: float, seed: int) -> None:
    boxes, scores = _random_boxes(np.random.default_rng(seed), 400, dtype)
    want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    got = nms(boxes, scores, iou)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert len(got) > 0 and (len(got) < 400 or iou >= 0.95)  # something was suppressed where it could be


def test_nms_of_nothing_and_of_identical_boxes() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    boxes = np.tile(np.array([[1, 1, 5, 5]], np.float32), (3, 1))
    scores = np.array([0.5, 0.9, 0.5], np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1])
    np.testing.assert_array_equal(nms(boxes, scores, 1.0), [1, 0, 2])  # IoU 1 is not above 1: all stay


def _detectors(which: Path) -> dict[str, YoloDetector | YoloOnnxDetector]:
    onnx = choose_backend(which, "onnx", "cpu", CACHE / "exports", None).path
    return {"onnx": YoloOnnxDetector(onnx, "cpu", None), "torch": YoloDetector(which, "cpu", None)}


@pytest.mark.parametrize("which", ["detector_model", "segmentation_model"])
def test_batch_selection_equals_per_image(request: pytest.FixtureRequest, which: str) -> None:
    """Both engines: the rows the batch step kept are the per-image selection's (numpy) and torchvision's
    per-image selection's; the boxes are the ones ``postprocess`` finds later for the same image."""
    for engine, detector in _detectors(Path(request.getfixturevalue(which))).items():
        samples = fresh_images(seed=61, count=len(SELECTIONS))
        items = [detector.preprocess(cv2.cvtColor(s.pixels, cv2.COLOR_RGB2BGR), selection)
                 for s, selection in zip(samples, SELECTIONS, strict=True)]
        raws = detector.forward(items)
        classes_count = len(detector.names)
        selected = 0
        for raw, item, selection in zip(raws, items, SELECTIONS, strict=True):
            assert raw.predictions is not None and isinstance(raw.predictions, np.ndarray)
            if selection is None:  # a video frame: selected later, per image
                assert raw.kept is None and raw.boxes is None
                continue
            assert raw.kept is not None and raw.boxes is not None
            per_image = select_boxes(raw.predictions, classes_count, selection)
            np.testing.assert_array_equal(raw.kept, per_image, err_msg=engine)
            by_torch = select_boxes_on_device(torch.from_numpy(raw.predictions), classes_count, selection).numpy()
            assert raw.kept.shape == by_torch.shape, engine
            np.testing.assert_allclose(raw.kept, by_torch, rtol=0, atol=1e-5, err_msg=engine)
            later = detector.postprocess(replace(raw, kept=None, boxes=None), item)
            assert raw.boxes == later, engine
            selected += raw.kept.shape[0]
        assert selected >= 10, engine  # real boxes were compared


def _synthetic_predictions(count: int, classes_count: int, anchors: int, seed: int) -> np.ndarray:
    """Overlapping boxes of several classes, scores spread over [0, 1)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 100, (count, 2, anchors))
    sizes = 5 + rng.uniform(0, 30, (count, 2, anchors))
    scores = rng.uniform(0, 1, (count, classes_count, anchors))
    return np.concatenate((centres, sizes, scores), axis=1).astype(np.float32)


def _per_image_torch(predictions: np.ndarray, classes_count: int, selections: list[Selection]) -> list[np.ndarray]:
    return [select_boxes_on_device(torch.from_numpy(p), classes_count, s).numpy()
            for p, s in zip(predictions, selections, strict=True)]


def _batch_torch(predictions: np.ndarray, classes_count: int, selections: list[Selection]) -> list[np.ndarray]:
    return [rows.numpy() for rows in select_boxes_batch_on_device(torch.from_numpy(predictions), classes_count,
                                                                     selections)]


BATCH_PATHS = {"host (numpy)": select_boxes_batch, "device (torch)": _batch_torch}


@pytest.mark.parametrize("path", BATCH_PATHS)
def test_batch_selection_of_many_images_and_several_ious(path: str) -> None:
    """Synthetic predictions with overlapping boxes of several classes: the groups never suppress each other,
    each image keeps its own thresholds, class filter and cap, and both paths keep torchvision's per-image rows."""
    classes_count = 4
    predictions = _synthetic_predictions(6, classes_count, 400, seed=3)
    selections = [Selection(0.5, 0.3, 300), Selection(0.2, 0.6, 50), Selection(0.5, 0.3, 7, (1, 3)),
                  Selection(0.99, 0.5, 300), Selection(0.1, 0.45, 300, (2,)), Selection(0.7, 0.6, 300)]
    got = BATCH_PATHS[path](predictions, classes_count, selections)
    want = _per_image_torch(predictions, classes_count, selections)
    kept = 0
    for i in range(len(selections)):
        assert got[i].shape == want[i].shape, i
        np.testing.assert_allclose(got[i], want[i], rtol=0, atol=1e-5, err_msg=str(i))
        kept += want[i].shape[0]
    assert kept > 100
    if path == "host (numpy)":  # and one image alone is selected as it is in its batch
        for i, s in enumerate(selections):
            np.testing.assert_array_equal(select_boxes(predictions[i], classes_count, s), got[i])


@pytest.mark.parametrize("path", BATCH_PATHS)
def test_batch_selection_with_nothing_above_the_thresholds(path: str) -> None:
    predictions = _synthetic_predictions(3, 2, 50, seed=4)
    got = BATCH_PATHS[path](predictions, 2, [Selection(0.999, 0.45, 300)] * 3)
    assert [rows.shape for rows in got] == [(0, 6)] * 3


@pytest.mark.parametrize("path", BATCH_PATHS)
def test_batch_selection_of_one_image_with_mask_coefficients(path: str) -> None:
    """A segmentation head's extra channels travel with the kept rows."""
    classes_count, extra = 3, 5
    predictions = _synthetic_predictions(1, classes_count + extra, 200, seed=5)
    selection = Selection(0.3, 0.45, 20)
    got = BATCH_PATHS[path](predictions, classes_count, [selection])
    want = _per_image_torch(predictions, classes_count, [selection])
    assert got[0].shape == want[0].shape == (20, 6 + extra)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-5)


def test_too_many_candidates_keep_the_best_scored() -> None:
    """Past MAX_NMS_CANDIDATES an image's best-scored candidates go into NMS, as torch's topk picks them."""
    anchors = MAX_NMS_CANDIDATES + 5_000
    rng = np.random.default_rng(6)
    centres = rng.uniform(0, 20, (1, 2, anchors))
    sizes = np.full((1, 2, anchors), 60.0)  # huge boxes: NMS keeps few, the test stays quick
    scores = rng.uniform(0, 1, (1, 1, anchors))
    predictions = np.concatenate((centres, sizes, scores), axis=1).astype(np.float32)
    selection = Selection(0.0, 0.5, 300)
    got = select_boxes(predictions[0], 1, selection)
    want = select_boxes_on_device(torch.from_numpy(predictions[0]), 1, selection).numpy()
    assert got.shape == want.shape and got.shape[0] >= 1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_end_to_end_rows_are_filtered_in_the_heads_order() -> None:
    rows = np.array([[0, 0, 5, 5, 0.9, 1], [1, 1, 6, 6, 0.2, 0], [2, 2, 7, 7, 0.8, 0], [3, 3, 8, 8, 0.7, 1]],
                    np.float32)
    np.testing.assert_array_equal(select_end2end(rows, Selection(0.5, 0.45, 300)), rows[[0, 2, 3]])
    np.testing.assert_array_equal(select_end2end(rows, Selection(0.5, 0.45, 300, (1,))), rows[[0, 3]])
    np.testing.assert_array_equal(select_end2end(rows, Selection(0.1, 0.45, 2)), rows[[0, 1]])
