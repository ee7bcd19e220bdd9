"""Ultralytics YOLO detectors that need torch (.pt checkpoints, TorchScript, any model on a GPU) behind the
batch-friendly interface the ONNX engine (``yolo_onnx``) also offers.

The work is split the way the batcher needs it: ``preprocess`` (one image, worker pool), ``forward`` (one
batch, inference thread), ``postprocess`` (one image, with that request's own thresholds). On the CPU the
model's outputs go straight to the host-side ``YoloHead`` (numpy). On a GPU the boxes of every image that
carries a ``Selection`` are selected there for the whole batch (``box_selection_torch``), and only the kept
rows come back to the host.

A batch may also carry ``EncodedJpeg`` items: JPEGs whose headers the pool checked, decoded and letterboxed in
``forward`` for the whole batch on the model's device (``device_images``: nvJPEG on a GPU).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubeinfer.runtime.errors import InferenceError, StartupError, invalid_argument
from kubeinfer.runtime.models.box_selection_torch import select_boxes_batch_on_device
from kubeinfer.runtime.models.device_images import decode_jpegs, letterbox_into
from kubeinfer.runtime.models.offline import prepare_offline_ultralytics
from kubeinfer.runtime.models.stacking import stack_holding_gil
from kubeinfer.runtime.models.threads import BatchesInModel, apply_to_torch
from kubeinfer.runtime.models.torchscript import scripted
from kubeinfer.runtime.models.yolo_head import YoloHead
from kubeinfer.runtime.models.yolo_io import (
    LETTERBOX_FILL,
    BatchItem,
    Detection,
    EncodedJpeg,
    Letterboxed,
    RawDetections,
    Selection,
    letterboxed,
)

log = logging.getLogger(__name__)
FORMATS = {"pt": "pytorch", "torchscript": "torchscript"}


class YoloDetector:
    """Loads a detector once, on one device, with torch, and serves it in three thread-safe steps."""

    engine = "torch"

    def __init__(self, path: Path, device: str, image_size: int | None) -> None:
        apply_to_torch()
        prepare_offline_ultralytics()
        from ultralytics.nn.autobackend import AutoBackend

        self.path = path
        self.device = torch.device(device)
        self._batches = BatchesInModel()
        try:
            self.backend = AutoBackend(str(path), device=self.device, fp16=False, fuse=True, verbose=False)
        except Exception as exc:
            raise StartupError(f"cannot load detector {path}: {type(exc).__name__}: {exc}") from exc
        self.backend.eval()
        self.format = FORMATS.get(self.backend.format, self.backend.format)
        self.stride = int(max(self.backend.stride, 1)) if isinstance(self.backend.stride, int | float) else 32
        self.names: dict[int, str] = {int(k): str(v) for k, v in self.backend.names.items()}
        self.end2end = bool(getattr(self.backend, "end2end", False))
        self.image_size = self._input_size(image_size)
        self.head = YoloHead(self.names, self.image_size, self.end2end)
        self.segmentation = False
        self._warm_up()

    def _input_size(self, requested: int | None) -> int:
        size = requested
        if size is None:
            meta = self.backend.metadata or {}
            size_meta = meta.get("imgsz")
            if size_meta is None and hasattr(self.backend.model, "args"):
                size_meta = getattr(self.backend.model, "args", {}).get("imgsz")
            if isinstance(size_meta, list | tuple):
                size_meta = max(size_meta)
            size = int(size_meta) if size_meta else 640
        return max(self.stride, int(np.ceil(size / self.stride) * self.stride))

    def _warm_up(self) -> None:
        """One forward pass: compiles lazy kernels and tells whether the model segments."""
        blank = np.full((self.image_size, self.image_size, 3), LETTERBOX_FILL, dtype=np.uint8)
        try:
            outputs = self.forward([Letterboxed(blank, self.image_size, self.image_size)])
        except Exception as exc:
            raise StartupError(f"detector {self.path} failed a test inference: {type(exc).__name__}: {exc}") from exc
        self.segmentation = outputs[0].prototypes is not None

    @property
    def labels(self) -> list[str]:
        return self.head.labels

    def preprocess(self, bgr: np.ndarray, selection: Selection | None = None) -> Letterboxed:
        """Letterbox to the model's square input and convert to RGB (worker pool); ``selection``: see
        ``Letterboxed``."""
        return letterboxed(bgr, self.image_size, selection)

    @torch.inference_mode()
    def forward(self, batch: Sequence[BatchItem]) -> list[RawDetections]:
        """Run the model once for the whole batch (inference thread), ``EncodedJpeg`` items decoded and
        letterboxed here first; the boxes of every image that carries a ``Selection`` are selected in one step
        for the batch."""
        with self._batches.entered():  # the whole step: overlapping batches share the cores throughout
            images, errors = self._model_input(batch)
            predictions, prototypes = _split_output(self.backend(_scaled_input()(images)))
            if predictions.dtype != torch.float32:  # each tensor call drops the GIL (``stacking``): none for nothing
                predictions = predictions.float()
            if prototypes is not None and prototypes.dtype != torch.float32:
                prototypes = prototypes.float()
            if predictions.device.type == "cpu" or self.end2end:  # end-to-end heads' rows are few: select on host
                return self.head.detections(batch, predictions.cpu().numpy(),
                                            None if prototypes is None else prototypes.cpu().numpy(), errors)
            return self._detections_on_device(batch, predictions, prototypes, errors)

    def _detections_on_device(self, batch: Sequence[BatchItem], predictions: torch.Tensor,
                              prototypes: torch.Tensor | None,
                              errors: dict[int, InferenceError]) -> list[RawDetections]:
        """The batch's selection on the model's device, one transfer of the kept rows; predictions and prototypes
        come to the host only for the images a later step reads them for (no selection yet; masks)."""
        kept: list[np.ndarray | None] = [None] * len(batch)
        boxes: list[list[Detection] | None] = [None] * len(batch)
        chosen = [(i, item.selection) for i, item in enumerate(batch)
                  if item.selection is not None and i not in errors]
        if chosen:
            rows = select_boxes_batch_on_device(predictions[[i for i, _ in chosen]], len(self.names),
                                                [s for _, s in chosen])
            on_host = torch.cat(rows).cpu().numpy()
            for (i, _), part in zip(chosen, np.split(on_host, np.cumsum([r.shape[0] for r in rows])[:-1]),
                                    strict=True):
                kept[i] = part
            self.head.fill_boxes(batch, kept, boxes)
        later = [i for i, item in enumerate(batch) if item.selection is None or item.selection.masks]
        host_predictions = _rows_on_host(predictions, later)
        host_prototypes = _rows_on_host(prototypes, later) if prototypes is not None else {}
        return [RawDetections(host_predictions.get(i), host_prototypes.get(i), kept[i], boxes[i], errors.get(i))
                for i in range(len(batch))]

    def _model_input(self, batch: Sequence[BatchItem]) -> tuple[torch.Tensor, dict[int, InferenceError]]:
        """The batch as [B, 3, S, S] uint8 RGB on the model's device, and the errors of the ``EncodedJpeg`` items
        no decoder took (their slots stay blank)."""
        ready = [(i, item) for i, item in enumerate(batch) if isinstance(item, Letterboxed)]
        jpegs = [(i, item) for i, item in enumerate(batch) if isinstance(item, EncodedJpeg)]
        if not jpegs:  # the CPU path's batch: one copy to the device, no blank batch to fill first
            return self._upload([item.pixels for _, item in ready]).permute(0, 3, 1, 2), {}
        size = self.image_size
        images = torch.full((len(batch), 3, size, size), LETTERBOX_FILL, dtype=torch.uint8, device=self.device)
        if ready:
            images[[i for i, _ in ready]] = self._upload([item.pixels for _, item in ready]).permute(0, 3, 1, 2)
        errors: dict[int, InferenceError] = {}
        decoded = decode_jpegs([item.data for _, item in jpegs], self.device)
        for (i, item), image in zip(jpegs, decoded, strict=True):
            if image is None:
                errors[i] = invalid_argument(f"image {item.index}: JPEG data is corrupt or truncated")
            else:
                letterbox_into(images[i], image)
        return images, errors

    def _upload(self, pixels: list[np.ndarray]) -> torch.Tensor:
        """Letterboxed HWC images stacked on the model's device; through pinned memory to a CUDA device, so the
        copy is a DMA that does not wait for the host."""
        if self.device.type != "cuda":
            stacked = torch.from_numpy(stack_holding_gil(pixels))
            return stacked if self.device.type == "cpu" else stacked.to(self.device)  # .to drops the GIL even then
        pinned = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8, pin_memory=True)
        stack_holding_gil(pixels, out=pinned.numpy())
        return pinned.to(self.device, non_blocking=True)

    def postprocess(self, raw: RawDetections, item: BatchItem) -> list[Detection]:
        """NMS with ``item``'s selection (unless ``forward`` already selected the rows), boxes back to original
        pixels, optional polygons: on the host, as for every engine."""
        return self.head.postprocess(raw, item)


def _rows_on_host(tensor: torch.Tensor, indices: list[int]) -> dict[int, np.ndarray]:
    """``tensor[i]`` on the host, as numpy, for each of ``indices``, in one transfer."""
    if not indices:
        return {}
    return dict(zip(indices, tensor[indices].cpu().numpy(), strict=True))


@functools.cache
def _scaled_input() -> Any:
    """uint8 NCHW (a view of the stacked NHWC batch) -> dense float32 NCHW in [0, 1], in one TorchScript call
    (one converting copy to a dense batch, dropping the GIL once)."""

    def scaled(images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)

    return scripted(scaled)


def _split_output(output: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Predictions and (segmentation) prototypes from any backend's output structure."""
    parts = list(output) if isinstance(output, list | tuple) else [output]
    first = parts[0]
    if isinstance(first, list | tuple):  # (predictions, prototypes) nested by some exports
        return first[0], first[1] if len(first) > 1 and _is_prototype(first[1]) else None
    prototypes = parts[1] if len(parts) > 1 and _is_prototype(parts[1]) else None
    return first, prototypes


def _is_prototype(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 4
