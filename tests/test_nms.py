"""The batch step's vectorised box selection equals the per-image path, each image keeping its own thresholds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import pytest
import torch
from conftest import fresh_images

from kubeinfer.runtime.models.yolo import Selection, YoloDetector, select_boxes, select_boxes_batch

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


def test_batch_selection_of_many_images_and_several_ious() -> None:
    """Synthetic predictions with overlapping boxes of several classes: the groups never suppress each other."""
    generator = torch.Generator().manual_seed(3)
    count, classes_count, anchors = 6, 4, 400
    centres = torch.rand(count, 2, anchors, generator=generator) * 100
    sizes = 5 + torch.rand(count, 2, anchors, generator=generator) * 30
    scores = torch.rand(count, classes_count, anchors, generator=generator)
    predictions = torch.cat((centres, sizes, scores), dim=1)
    selections = [Selection(0.5, 0.3, 300), Selection(0.2, 0.6, 50), Selection(0.5, 0.3, 7, (1, 3)),
                  Selection(0.99, 0.5, 300), Selection(0.1, 0.45, 300, (2,)), Selection(0.7, 0.6, 300)]
    got = select_boxes_batch(predictions, classes_count, selections)
    for i, s in enumerate(selections):
        want = select_boxes(predictions[i], classes_count, s.confidence, s.iou, s.classes, s.max_detections)
        assert got[i].shape == want.shape, i
        assert torch.allclose(got[i], want, atol=1e-5), i
