"""The runtime's per-image NMS (numpy) selects exactly what ultralytics' non_max_suppression (torch) selects."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import fresh_images
from ultralytics.utils import nms

from kubeinfer.runtime.models.box_selection import select_boxes
from kubeinfer.runtime.models.yolo import YoloDetector
from kubeinfer.runtime.models.yolo_io import Selection


@pytest.mark.parametrize("which", ["detector_model", "segmentation_model"])
@pytest.mark.parametrize(("confidence", "iou", "classes", "max_detections"), [
    (0.01, 0.45, (), 300), (0.25, 0.45, (), 300), (0.05, 0.2, (0,), 2), (0.9, 0.7, (), 300)])
def test_selection_matches_ultralytics(request: pytest.FixtureRequest, which: str, confidence: float, iou: float,
                                       classes: tuple[int, ...], max_detections: int) -> None:
    detector = YoloDetector(Path(request.getfixturevalue(which)), "cpu", None)
    items = [detector.preprocess(cv2.cvtColor(s.pixels, cv2.COLOR_RGB2BGR)) for s in fresh_images(seed=60, count=8)]
    classes_count = len(detector.names)
    selected_any = False
    for raw in detector.forward(items):
        extra = classes_count if raw.prototypes is not None else 0
        assert raw.predictions is not None
        want = nms.non_max_suppression(torch.from_numpy(raw.predictions)[None], confidence, iou,
                                       list(classes) or None, max_det=max_detections, nc=extra)[0].numpy()
        got = select_boxes(raw.predictions, classes_count, Selection(confidence, iou, max_detections, classes))
        assert got.shape == want.shape
        assert np.allclose(got, want, atol=1e-4)
        selected_any |= got.shape[0] > 0
    assert selected_any or confidence >= 0.9
