"""The detector's batch items, results, letterbox and its undoing: plain numpy and OpenCV, no torch.

What crosses between the detect task, the batcher and the model, and what a frontend process
(``--frontends``) or the lean runtime needs to prepare images and read answers without loading torch
(about 800 MB per process for the CUDA build).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from kubeinfer.runtime.errors import InferenceError

LETTERBOX_FILL = 114


@dataclass(frozen=True, slots=True)
class NamedDevice:
    """A model's device by name (``detection.Device``: ``type`` is cpu or cuda), without torch."""

    name: str  # cpu, cuda:0

    @property
    def type(self) -> str:
        return self.name.split(":", 1)[0]

    def __str__(self) -> str:
        return self.name


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
    """One image's slice of the model output, on the host: predictions and, for segmentation models, mask
    prototypes; ``kept`` holds the rows its ``Selection`` kept ([k, 6 + extra]) when the image had one.
    Predictions and prototypes are there where a later step reads them (no selection yet; prototypes for
    masks); a model on a GPU leaves the others on the device (None here). ``error``: this image failed in the
    batch step (an ``EncodedJpeg`` no decoder took) and has no detections; the other images are unaffected."""

    predictions: np.ndarray | None  # None: selected in the batch step on a GPU, or by a model process (frontends)
    prototypes: np.ndarray | None
    kept: np.ndarray | None = None
    boxes: list[Detection] | None = None  # the final boxes, when the selection asked for no masks
    error: InferenceError | None = None


@dataclass(slots=True)
class Detection:
    """One box in original-image pixels with its class's label; ``polygons`` (mask outlines) only when masks were
    asked for. Mutable: a video pipeline's later ``resize`` scales it in place."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    label: str
    polygons: list[list[float]] = field(default_factory=list)


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


def boxes_in_originals(kept: Sequence[np.ndarray], originals: Sequence[tuple[int, int]], size: int,
                       names: Mapping[int, str]) -> list[list[Detection]]:
    """Each image's selected rows ([k, 6+]) as labelled boxes in its original pixels: the letterbox undone (padding
    off, then divided by the scale, in float32 as ultralytics' ``scale_boxes`` does it) and clipped to the image, for
    every image of a batch in one vectorised step rather than one ``scale_boxes`` call each (~60 us)."""
    counts = [int(rows.shape[0]) for rows in kept]
    if not sum(counts):
        return [[] for _ in kept]
    rows = np.concatenate([r[:, :6] for r in kept]).astype(np.float32, copy=False)
    shape = np.empty((len(kept), 6), np.float32)  # pad x, pad y, gain x, gain y, width, height
    for i, (height, width) in enumerate(originals):
        g = letterbox_geometry(height, width, size)
        shape[i] = (g.left, g.top, g.new_width / width, g.new_height / height, width, height)
    per_row = np.repeat(shape, counts, axis=0)
    xy = rows[:, :4] - per_row[:, [0, 1, 0, 1]]
    xy /= per_row[:, [2, 3, 2, 3]]
    np.clip(xy, 0, per_row[:, [4, 5, 4, 5]], out=xy)
    coordinates, scores = xy.tolist(), rows[:, 4].tolist()
    class_ids = rows[:, 5].astype(np.int32).tolist()
    labels = {c: names.get(c, str(c)) for c in set(class_ids)}
    found: list[list[Detection]] = []
    start = 0
    for count in counts:
        found.append([Detection(b[0], b[1], b[2], b[3], s, c, labels[c]) for b, s, c in
                      zip(coordinates[start:start + count], scores[start:start + count],
                          class_ids[start:start + count], strict=True)])
        start += count
    return found
