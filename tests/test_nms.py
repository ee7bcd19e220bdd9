"""The batch step's vectorised box selection equals the per-image path, each image keeping its own thresholds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import pytest
import torch
from conftest import fresh_images

from kubeinfer.runtime.models.box_selection import (
    select_boxes,
    select_boxes_batch,
    select_boxes_batch_on_device,
    select_boxes_batch_on_host,
)
from kubeinfer.runtime.models.yolo import Selection, YoloDetector

SELECTIONS = [Selection(0.25, 0.45, 300), Selection(0.01, 0.45, 300), Selection(0.05, 0.2, 2, (0,)),
              Selection(0.9, 0.7, 300), Selection(0.01, 0.7, 5), Selection(0.01, 0.2, 300, (0,)), None,
              Selection(0.3, 0.45, 1)]


@pytest.mark.parametrize("which", ["detector_model", "segmentation_model"])
def test_batch_selection_equals_per_image(request: pytest.FixtureRequest, which: str) -> None:
    detector = YoloDetector(Path(request.getfixturevalue(which)), "cpu", None)
    samples = fresh_images(seed=61, count=len(SELECTIONS))
    items = [detector.preprocess(cv2.cvtColor(s.pixels, cv2.COLOR_RGB2BGR), selection)
             for s, selection in zip(samples, SELECTIONS, strict=True)]
    raws = detector.forward(items)
    classes_count = len(detector.names)
    selected = 0
    for raw, item, selection in zip(raws, items, SELECTIONS, strict=True):
        if selection is None:  # a video frame: selected later, per image
            assert raw.kept is None and raw.boxes is None
            continue
        assert raw.kept is not None and raw.boxes is not None
        want = select_boxes(raw.predictions, classes_count, selection.confidence, selection.iou, selection.classes,
                            selection.max_detections)
        assert raw.kept.shape == want.shape
        assert torch.allclose(raw.kept, want, atol=1e-4)
        shape = (item.original_height, item.original_width)
        per_image = detector.postprocess(replace(raw, kept=None, boxes=None), shape, selection.confidence,
                                         selection.iou, selection.max_detections, selection.classes, False)
        assert raw.boxes == per_image
        selected += raw.kept.shape[0]
    assert selected >= 10  # real boxes were compared


def _synthetic_predictions(count: int, classes_count: int, anchors: int, seed: int) -> torch.Tensor:
    """Overlapping boxes of several classes, scores spread over [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(count, 2, anchors, generator=generator) * 100
    sizes = 5 + torch.rand(count, 2, anchors, generator=generator) * 30
    scores = torch.rand(count, classes_count, anchors, generator=generator)
    return torch.cat((centres, sizes, scores), dim=1)


def _on_host(predictions: torch.Tensor, classes_count: int, selections: list[Selection]) -> list[torch.Tensor]:
    return [torch.from_numpy(rows) for rows in
            select_boxes_batch_on_host(predictions.numpy(), classes_count, selections)]


BATCH_PATHS = {"host (numpy)": _on_host, "device (torch)": select_boxes_batch_on_device,
               "dispatched": select_boxes_batch}


@pytest.mark.parametrize("path", BATCH_PATHS)
def test_batch_selection_of_many_images_and_several_ious(path: str) -> None:
    """Synthetic predictions with overlapping boxes of several classes: the groups never suppress each other,
    each image keeps its own thresholds, class filter and cap, on the host's path and the device's alike."""
    classes_count = 4
    predictions = _synthetic_predictions(6, classes_count, 400, seed=3)
    selections = [Selection(0.5, 0.3, 300), Selection(0.2, 0.6, 50), Selection(0.5, 0.3, 7, (1, 3)),
                  Selection(0.99, 0.5, 300), Selection(0.1, 0.45, 300, (2,)), Selection(0.7, 0.6, 300)]
    got = BATCH_PATHS[path](predictions, classes_count, selections)
    kept = 0
    for i, s in enumerate(selections):
        want = select_boxes(predictions[i], classes_count, s.confidence, s.iou, s.classes, s.max_detections)
        assert got[i].shape == want.shape, i
        assert torch.allclose(got[i], want, atol=1e-5), i
        kept += want.shape[0]
    assert kept > 100


@pytest.mark.parametrize("path", BATCH_PATHS)
def test_batch_selection_with_nothing_above_the_thresholds(path: str) -> None:
    predictions = _synthetic_predictions(3, 2, 50, seed=4)
    got = BATCH_PATHS[path](predictions, 2, [Selection(0.999, 0.45, 300)] * 3)
    assert [rows.shape for rows in got] == [torch.Size([0, 6])] * 3


@pytest.mark.parametrize("path", BATCH_PATHS)
def test_batch_selection_of_one_image_with_mask_coefficients(path: str) -> None:
    """A segmentation head's extra channels travel with the kept rows."""
    classes_count, extra = 3, 5
    predictions = _synthetic_predictions(1, classes_count + extra, 200, seed=5)
    selection = Selection(0.3, 0.45, 20)
    got = BATCH_PATHS[path](predictions, classes_count, [selection])
    want = select_boxes(predictions[0], classes_count, 0.3, 0.45, (), 20)
    assert got[0].shape == want.shape == (20, 6 + extra)
    assert torch.allclose(got[0], want, atol=1e-5)
