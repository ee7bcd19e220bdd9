"""YOLO detectors exported to ONNX, run by ONNX Runtime with numpy around them: what the lean CPU image serves.

Nothing here imports torch, torchvision or ultralytics (~800 MB of a process and 3 s of its start). The head's
layout comes from the metadata ultralytics' export writes into the file (class names, stride, input size,
task, whether the head selects its boxes itself), or from the graph's shapes where a file has none. Inputs are
scaled exactly as ultralytics scales them (uint8 / 255 in float32), so the boxes equal the torch path's.
A static-batch export (ultralytics' default) runs a batch in pieces of its batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.models.onnx_session import open_session, read_metadata
from kubeinfer.runtime.models.stacking import stack_holding_gil
from kubeinfer.runtime.models.threads import BatchesInModel, lone_batch_threads
from kubeinfer.runtime.models.yolo_head import YoloHead
from kubeinfer.runtime.models.yolo_io import (
    LETTERBOX_FILL,
    BatchItem,
    Detection,
    Letterboxed,
    NamedDevice,
    RawDetections,
    Selection,
    letterboxed,
)

log = logging.getLogger(__name__)
DETECTION_TASKS = ("detect", "segment")
DEFAULT_SIZE = 640
DEFAULT_STRIDE = 32


class YoloOnnxDetector:
    """An ONNX YOLO detector in three thread-safe steps: ``preprocess`` (one image, worker pool), ``forward``
    (one batch, inference thread; the boxes of images carrying a ``Selection`` selected in it), ``postprocess``
    (one image: boxes left for later, mask outlines)."""

    engine = "onnx"

    def __init__(self, path: Path, device: str, image_size: int | None, exported_from: Path | None = None) -> None:
        """Load ``path``; ``exported_from`` names the .pt file it was exported from, so the reported format stays
        the one the user gave."""
        self.path = path
        self.device = NamedDevice("cuda:0" if device == "cuda" else device)
        self.format = "pytorch" if exported_from is not None else "onnx"
        self._batches = BatchesInModel()
        try:
            self._session = open_session(path, device)
        except StartupError:
            raise
        except Exception as exc:
            raise StartupError(f"cannot load detector {path}: {type(exc).__name__}: {exc}") from exc
        self._lone_session = None  # several instances: a lone batch runs on all their threads (its own session)
        if lone := lone_batch_threads():
            self._lone_session = open_session(path, device, lone)
        metadata = read_metadata(self._session, path)
        task = metadata.get("task", "detect")
        if task not in DETECTION_TASKS:
            raise StartupError(f"{path} is an ultralytics {task} model; this task needs a detector (detect or "
                               "segment)")
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        self._input_type = np.float16 if "float16" in model_input.type else np.float32
        batch, _, height, width = (list(model_input.shape) + [None] * 4)[:4]
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        stride = int(metadata.get("stride", DEFAULT_STRIDE))
        self.image_size = _input_size(path, image_size, metadata.get("imgsz"), height, width, stride)
        self.end2end = bool(metadata.get("end2end") or (metadata.get("args") or {}).get("nms"))
        self.names: dict[int, str] = {int(k): str(v) for k, v in (metadata.get("names") or {}).items()}
        self.segmentation = False
        self._warm_up()

    def _warm_up(self) -> None:
        """One forward pass: compiles lazy kernels, tells whether the model segments and, for a file without
        metadata, its layout."""
        blank = np.full((1, self.image_size, self.image_size, 3), LETTERBOX_FILL, dtype=np.uint8)
        try:
            predictions, prototypes = self._run(blank, alone=True)
        except Exception as exc:
            raise StartupError(f"detector {self.path} failed a test inference: {type(exc).__name__}: {exc}") from exc
        self.segmentation = prototypes is not None
        if predictions.ndim != 3:
            raise StartupError(f"detector {self.path} gives predictions of shape {predictions.shape}; a YOLO head "
                               "gives [batch, channels, anchors] or [batch, boxes, 6 + extra]")
        if not self.names:  # no metadata: the head's shape tells what it can
            if not self.end2end and predictions.shape[1] > predictions.shape[2]:
                self.end2end = True  # [batch, boxes, 6 + extra]: boxes are many, channels few
            if self.end2end:
                raise StartupError(f"detector {self.path} selects its own boxes but names no classes (no "
                                   "ultralytics metadata); export it with ultralytics")
            masks = 0 if prototypes is None else prototypes.shape[1]
            self.names = {i: f"class{i}" for i in range(predictions.shape[1] - 4 - masks)}
            log.warning("%s has no ultralytics metadata: %d classes named class0.., input %d px", self.path.name,
                        len(self.names), self.image_size)
        self.head = YoloHead(self.names, self.image_size, self.end2end)

    @property
    def labels(self) -> list[str]:
        return self.head.labels

    def preprocess(self, bgr: np.ndarray, selection: Selection | None = None) -> Letterboxed:
        """Letterbox to the model's square input and convert to RGB (worker pool)."""
        return letterboxed(bgr, self.image_size, selection)

    def forward(self, batch: Sequence[BatchItem]) -> list[RawDetections]:
        """Run the model once for the whole batch (inference thread); the boxes of every image that carries a
        ``Selection`` are selected in one step for the batch."""
        if any(not isinstance(item, Letterboxed) for item in batch):
            raise TypeError("the ONNX detector takes letterboxed images only (JPEGs decode in the worker pool)")
        with self._batches.entered() as alone:
            pixels = stack_holding_gil([item.pixels for item in batch])  # type: ignore[union-attr]
            predictions, prototypes = self._run(pixels, alone)
            return self.head.detections(batch, predictions, prototypes)

    def _run(self, pixels: np.ndarray, alone: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and (segmentation) prototypes, float32, for a [B, S, S, 3] uint8 RGB batch."""
        images = np.divide(pixels.transpose(0, 3, 1, 2), 255.0, dtype=np.float32, order="C")
        if self._input_type is not np.float32:
            images = images.astype(self._input_type)
        session = self._lone_session if alone and self._lone_session is not None else self._session
        fixed = self._fixed_batch
        if fixed is None or fixed == len(images):
            outputs = session.run(None, {self._input_name: images})
        else:  # a static-batch export: the batch in pieces of its size, the last one padded
            pieces = []
            for start in range(0, len(images), fixed):
                piece = images[start:start + fixed]
                if len(piece) < fixed:
                    piece = np.concatenate((piece, np.zeros((fixed - len(piece), *piece.shape[1:]), piece.dtype)))
                pieces.append(session.run(None, {self._input_name: piece}))
            outputs = [np.concatenate([p[k] for p in pieces])[:len(images)] for k in range(len(pieces[0]))]
        predictions = outputs[0].astype(np.float32, copy=False)
        prototypes = next((o for o in outputs[1:] if o.ndim == 4), None)
        return predictions, None if prototypes is None else prototypes.astype(np.float32, copy=False)

    def postprocess(self, raw: RawDetections, item: BatchItem) -> list[Detection]:
        """``item``'s boxes in original pixels with its selection (unless ``forward`` selected them), optional
        polygons."""
        return self.head.postprocess(raw, item)


def _input_size(path: Path, requested: int | None, trained: Any, height: Any, width: Any, stride: int) -> int:
    """The square input side: a static-shape export's own, else ``requested`` or the trained size, rounded up to a
    multiple of the stride."""
    if isinstance(height, int) and isinstance(width, int):
        if height != width:
            raise StartupError(f"detector {path} takes {height}x{width} images; kubeinfer letterboxes to squares")
        if requested is not None and requested != height:
            raise StartupError(f"--image-size {requested}: detector {path} was exported for {height} px only "
                               "(export it with dynamic=True to serve other sizes)")
        return height
    size = requested
    if size is None:
        size = max(trained) if isinstance(trained, list | tuple) else trained
    size = int(size) if size else DEFAULT_SIZE
    return max(stride, int(np.ceil(size / stride) * stride))
