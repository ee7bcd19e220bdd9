"""The detector's batch items, results and letterbox: plain numpy and OpenCV, no torch.

What crosses between the detect task, the batcher and the model, and what a frontend process
(``--frontends``) needs to prepare images and read answers without loading torch (about 800 MB per
process for the CUDA build).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from kubeinfer.runtime.errors import InferenceError

if TYPE_CHECKING:
    import torch

LETTERBOX_FILL = 114


@dataclass(frozen=True, slots=True)
class Selection:
    """One request's box selection: score threshold, NMS IoU, most boxes, class filter (empty: all), masks."""

    confidence: float
    iou: float
    max_detections: int
    classes: tuple[int, ...] = ()
    masks: bool = False


@dataclass(frozen=True, slots=True)
class Letterboxed:
    """A model-ready image (RGB, HWC, uint8, square) and the shape of the original it came from; with a
    ``selection``, ``forward`` selects its boxes in the batch step."""

    pixels: np.ndarray
    original_height: int
    original_width: int
    selection: Selection | None = None


@dataclass(frozen=True, slots=True)
class EncodedJpeg:
    """A JPEG the worker pool checked (header, format, pixel limit) and left encoded: ``forward`` decodes and
    letterboxes it with the rest of the batch on the model's device. ``index`` is its place in its request,
    so a file the decoders refuse fails alone, named like the CPU path names it."""

    data: bytes
    index: int
    original_height: int
    original_width: int
    selection: Selection | None = None


BatchItem = Letterboxed | EncodedJpeg


@dataclass(frozen=True, slots=True)
class RawDetections:
    """One image's slice of the model output: predictions and, for segmentation models, mask prototypes;
    ``kept`` holds the rows its ``Selection`` kept ([k, 6 + extra], on the CPU) when the image had one.
    Predictions and prototypes are on the CPU where a later step reads them (no selection yet; prototypes
    for masks) and stay on the model's device otherwise. ``error``: this image failed in the batch step
    (an ``EncodedJpeg`` no decoder took) and has no detections; the other images are unaffected."""

    predictions: torch.Tensor | None  # None: the boxes came from a model process (``frontends``)
    prototypes: torch.Tensor | None
    kept: torch.Tensor | None = None
    boxes: list[BoxResult] | None = None  # the final boxes, when the selection asked for no masks
    error: InferenceError | None = None


@dataclass(frozen=True, slots=True)
class BoxResult:
    """One detection in original-image pixels; ``polygons`` only when masks were asked for."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    polygons: list[list[float]]


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where an image lands in the square model input: its resized size and the padding before it."""

    new_height: int
    new_width: int
    top: int
    left: int


def letterbox_geometry(height: int, width: int, size: int) -> Geometry:
    """Scale to fit ``size`` keeping the aspect ratio and centre, ultralytics' rounding (an odd padding's extra
    pixel goes below / to the right)."""
    scale = min(size / height, size / width)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    top = round((size - new_height) / 2 - 0.1)
    left = round((size - new_width) / 2 - 0.1)
    return Geometry(new_height, new_width, top, left)


def letterbox(bgr: np.ndarray, size: int) -> np.ndarray:
    """``bgr`` scaled to fit a ``size`` square, padded with ``LETTERBOX_FILL``, as RGB (HWC, uint8)."""
    height, width = bgr.shape[:2]
    g = letterbox_geometry(height, width, size)
    resized = bgr if (g.new_width, g.new_height) == (width, height) else cv2.resize(
        bgr, (g.new_width, g.new_height), interpolation=cv2.INTER_LINEAR)
    bottom, right = size - g.new_height - g.top, size - g.new_width - g.left
    boxed = cv2.copyMakeBorder(resized, g.top, bottom, g.left, right, cv2.BORDER_CONSTANT,
                               value=(LETTERBOX_FILL,) * 3)
    cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB, dst=boxed)
    return boxed


def letterboxed(bgr: np.ndarray, size: int, selection: Selection | None = None) -> Letterboxed:
    """``bgr`` letterboxed for a model of input ``size``, with its original shape (and ``selection``)."""
    height, width = bgr.shape[:2]
    return Letterboxed(letterbox(bgr, size), height, width, selection)
