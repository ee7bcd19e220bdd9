"""Ultralytics YOLO detectors (.pt, TorchScript, ONNX) behind a batch-friendly interface.

The work is split the way the batcher needs it: ``preprocess`` (one image, worker
pool), ``forward`` (one batch, inference thread), ``postprocess`` (one image, with that
request's own thresholds). Images that carry their request's ``Selection`` get their
boxes selected in ``forward`` right after the model, for the whole batch in one vectorised
step (``box_selection``: one NMS call over every image and class, each image's thresholds still its own), so
the common request needs no second trip through the worker pool; images without one (video
frames) are selected per image in ``postprocess`` as before.

A batch may also carry ``EncodedJpeg`` items: JPEGs whose headers the pool checked, decoded and
letterboxed in ``forward`` for the whole batch on the model's device (``device_images``). With a CUDA
model the selection runs on the device too, and only the selected rows come back to the host.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from kubeinfer.runtime.errors import InferenceError, StartupError, invalid_argument
from kubeinfer.runtime.models.box_selection import select_boxes, select_boxes_batch
from kubeinfer.runtime.models.device_images import decode_jpegs, letterbox_into
from kubeinfer.runtime.models.offline import prepare_offline_ultralytics
from kubeinfer.runtime.models.stacking import stack_holding_gil
from kubeinfer.runtime.models.threads import (
    BatchesInModel,
    lone_batch_threads,
    ort_session_options,
    torch_for_small_work,
)
from kubeinfer.runtime.models.torchscript import scripted
from kubeinfer.runtime.models.yolo_io import (
    LETTERBOX_FILL,
    BatchItem,
    BoxResult,
    EncodedJpeg,
    Letterboxed,
    RawDetections,
    Selection,
    letterbox_geometry,
    letterboxed,
)

log = logging.getLogger(__name__)
FORMATS = {"pt": "pytorch", "torchscript": "torchscript", "onnx": "onnx"}


class YoloDetector:
    """Loads a detector once, on one device, and serves it in three thread-safe steps."""

    def __init__(self, path: Path, device: str, image_size: int | None, exported_from: Path | None = None) -> None:
        """Load ``path``; ``exported_from`` names the .pt file an ONNX export at start was made from, so the
        reported format stays the one the user gave."""
        prepare_offline_ultralytics()
        from ultralytics.nn.autobackend import AutoBackend

        self.path = path
        self.device = torch.device(device)
        self._session: Any = None  # the ONNX Runtime session run directly (``_run_model``), when it can be
        self._lone_session: Any = None  # the same model with every instance's threads, for a batch alone
        self._batches = BatchesInModel()
        try:
            self.backend = AutoBackend(str(path), device=self.device, fp16=False, fuse=True, verbose=False)
        except Exception as exc:
            raise StartupError(f"cannot load detector {path}: {type(exc).__name__}: {exc}") from exc
        self.backend.eval()
        self.format = FORMATS["pt"] if exported_from is not None else FORMATS.get(self.backend.format,
                                                                                  self.backend.format)
        self.engine = "onnx" if self.backend.format == "onnx" else "torch"
        if self.engine == "onnx" and self.device.type == "cpu":
            self._own_ort_session()
        self.stride = int(max(self.backend.stride, 1)) if isinstance(self.backend.stride, int | float) else 32
        self.names: dict[int, str] = {int(k): str(v) for k, v in self.backend.names.items()}
        self.end2end = bool(getattr(self.backend, "end2end", False))
        self.image_size = self._input_size(image_size)
        self.segmentation = False
        self._warm_up()

    def _own_ort_session(self) -> None:
        """Replace ultralytics' ONNX Runtime session (library thread defaults, spinning) with one built with the
        runtime's thread budget; same file, same provider."""
        import onnxruntime as ort

        inner = self.backend.backend
        inner.session = ort.InferenceSession(str(self.path), ort_session_options(), providers=["CPUExecutionProvider"])
        torch_for_small_work()
        metadata = self.backend.metadata or {}
        plain = (metadata.get("dynamic") and not metadata.get("args", {}).get("nms") and not self.backend.nhwc
                 and not inner.fp16)
        if plain:
            self._session = inner.session
            self._input_name = inner.session.get_inputs()[0].name
            self._output_names = [output.name for output in inner.session.get_outputs()]
            if lone := lone_batch_threads():
                # several instances: a batch with the model to itself (a lone request) runs on all their
                # threads, at the cost of the weights held twice; batches that overlap run on their own share
                self._lone_session = ort.InferenceSession(str(self.path), ort_session_options(lone),
                                                          providers=["CPUExecutionProvider"])

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
        blank = np.full((self.image_size, self.image_size, 3), 114, dtype=np.uint8)
        try:
            outputs = self.forward([Letterboxed(blank, self.image_size, self.image_size)])
        except Exception as exc:
            raise StartupError(f"detector {self.path} failed a test inference: {type(exc).__name__}: {exc}") from exc
        self.segmentation = outputs[0].prototypes is not None

    @property
    def labels(self) -> list[str]:
        return [self.names[i] for i in sorted(self.names)]

    def preprocess(self, bgr: np.ndarray, selection: Selection | None = None) -> Letterboxed:
        """Letterbox to the model's square input and convert to RGB (worker pool); ``selection``: see
        ``Letterboxed``."""
        return letterboxed(bgr, self.image_size, selection)

    @torch.inference_mode()
    def forward(self, batch: Sequence[BatchItem]) -> list[RawDetections]:
        """Run the model once for the whole batch (inference thread), ``EncodedJpeg`` items decoded and
        letterboxed here first; the boxes of every image that carries a ``Selection`` are selected in one step
        for the batch, on the model's device, and only the selected rows come back to the CPU."""
        with self._batches.entered() as alone:  # the whole step: overlapping batches share the cores throughout
            return self._forward(batch, alone)

    def _forward(self, batch: Sequence[BatchItem], alone: bool) -> list[RawDetections]:
        images, errors = self._model_input(batch)
        predictions, prototypes = _split_output(self._run_model(_scaled_input()(images), alone))
        if predictions.dtype != torch.float32:  # each tensor call drops the GIL (``stacking``): none for nothing
            predictions = predictions.float()
        if prototypes is not None and prototypes.dtype != torch.float32:
            prototypes = prototypes.float()
        kept: list[torch.Tensor | None] = [None] * len(batch)
        boxes: list[list[BoxResult] | None] = [None] * len(batch)
        chosen = [(i, item.selection) for i, item in enumerate(batch)
                  if item.selection is not None and i not in errors]
        if chosen:
            selections = [selection for _, selection in chosen]
            rows = self._select_many(predictions[[i for i, _ in chosen]], selections, prototypes is not None)
            if predictions.device.type != "cpu":  # one transfer for the batch
                rows = list(torch.cat(rows).cpu().split([r.shape[0] for r in rows]))
            for (i, _), selected in zip(chosen, rows, strict=True):
                kept[i] = selected
            plain = [i for i, selection in chosen if not selection.masks]
            found = boxes_in_originals([kept[i] for i in plain],  # type: ignore[misc]
                                       [(batch[i].original_height, batch[i].original_width) for i in plain],
                                       self.image_size)
            for i, image_boxes in zip(plain, found, strict=True):
                boxes[i] = image_boxes
        later = [i for i, item in enumerate(batch) if item.selection is None or item.selection.masks]
        host_predictions = _rows_on_host(predictions, later)
        host_prototypes = _rows_on_host(prototypes, later) if prototypes is not None else {}
        return [RawDetections(host_predictions.get(i, predictions[i]),
                              None if prototypes is None else host_prototypes.get(i, prototypes[i]),
                              kept[i], boxes[i], errors.get(i)) for i in range(len(batch))]

    def _run_model(self, model_input: torch.Tensor, alone: bool = False) -> object:
        """The model's raw output for a float batch: straight from the ONNX Runtime session of a dynamic-batch
        export on the CPU (what AutoBackend would do, without its device moves and conversions, each of which
        drops the GIL), else through AutoBackend (static-batch padding, NMS exports, other engines). A batch
        ``alone`` in the model runs on every instance's threads where there is a session for that."""
        if self._session is None:
            return self.backend(model_input)
        session = self._lone_session if alone and self._lone_session is not None else self._session
        outputs = session.run(self._output_names, {self._input_name: model_input.numpy()})
        return [torch.from_numpy(output) for output in outputs]

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

    def _select_many(self, predictions: torch.Tensor, selections: Sequence[Selection],
                     with_masks: bool) -> list[torch.Tensor]:
        if self.end2end:
            return [self._select(predictions[i], s, with_masks) for i, s in enumerate(selections)]
        return select_boxes_batch(predictions, len(self.names), selections)

    def _select(self, predictions: torch.Tensor, selection: Selection, with_masks: bool) -> torch.Tensor:
        from ultralytics.utils import nms

        if self.end2end:  # NMS-free heads: ultralytics knows their output layout
            return nms.non_max_suppression(
                predictions[None], selection.confidence, selection.iou, list(selection.classes) or None,
                max_det=selection.max_detections, nc=len(self.names) if with_masks else 0, end2end=True)[0]
        return select_boxes(predictions, len(self.names), selection.confidence, selection.iou, selection.classes,
                            selection.max_detections)

    @torch.inference_mode()
    def postprocess(self, raw: RawDetections, original: tuple[int, int], confidence: float, iou: float,
                    max_detections: int, classes: Sequence[int], masks: bool) -> list[BoxResult]:
        """NMS with these thresholds (unless ``forward`` already selected the rows), boxes back to original
        pixels, optional polygons."""
        if raw.boxes is not None and not masks:
            return raw.boxes
        kept = raw.kept
        if kept is None:
            assert raw.predictions is not None  # only a model process's answers come without them
            kept = self._select(raw.predictions, Selection(confidence, iou, max_detections, tuple(classes), masks),
                                with_masks=raw.prototypes is not None)
        if not masks or raw.prototypes is None:
            return boxes_in_originals([kept], [original], self.image_size)[0]
        return self._boxes_with_masks(kept, raw.prototypes, original)

    def _boxes_with_masks(self, kept: torch.Tensor, prototypes: torch.Tensor,
                          original: tuple[int, int]) -> list[BoxResult]:
        """Selected rows as boxes in original pixels, with their mask polygons."""
        from ultralytics.utils import ops

        if kept.shape[0] == 0:
            return []
        model_shape = (self.image_size, self.image_size)
        mask_bits = ops.process_mask(prototypes, kept[:, 6:], kept[:, :4], model_shape, upsample=True)
        polygons = [_polygons(m, model_shape, original) for m in mask_bits.byte().numpy()]
        boxes = boxes_in_originals([kept], [original], self.image_size)[0]
        return [replace(box, polygons=outline) for box, outline in zip(boxes, polygons, strict=True)]


def boxes_in_originals(kept: Sequence[torch.Tensor], originals: Sequence[tuple[int, int]],
                       size: int) -> list[list[BoxResult]]:
    """Each image's selected rows ([k, 6+], CPU) as boxes in its original pixels: the letterbox undone (padding
    off, then divided by the scale, in float32 as ultralytics' ``scale_boxes`` does it) and clipped to the image,
    for every image of a batch in one vectorised step rather than one ``scale_boxes`` call each (~60 us)."""
    counts = [int(rows.shape[0]) for rows in kept]
    if not sum(counts):
        return [[] for _ in kept]
    rows = torch.cat([r[:, :6] for r in kept]).numpy()
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
    found: list[list[BoxResult]] = []
    start = 0
    for count in counts:
        found.append([BoxResult(b[0], b[1], b[2], b[3], s, c, []) for b, s, c in
                      zip(coordinates[start:start + count], scores[start:start + count],
                          class_ids[start:start + count], strict=True)])
        start += count
    return found


def _rows_on_host(tensor: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
    """``tensor[i]`` on the CPU for each of ``indices``, in one transfer."""
    if not indices:
        return {}
    if tensor.device.type == "cpu":
        return {i: tensor[i] for i in indices}
    return dict(zip(indices, tensor[indices].cpu(), strict=True))


@functools.cache
def _scaled_input() -> Any:
    """uint8 NCHW (a view of the stacked NHWC batch) -> dense float32 NCHW in [0, 1], in one TorchScript call.

    One converting copy to a dense batch: a channels-last one (what ``.float()`` keeps of the permuted view)
    costs ONNX Runtime a copy of its own, ~0.3 ms more per batch of 8 at 128 px here.
    """

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


def _polygons(mask: np.ndarray, model_shape: tuple[int, int], original: tuple[int, int]) -> list[list[float]]:
    """Outlines of a letterboxed binary mask, as flat x,y lists in original-image pixels."""
    from ultralytics.utils import ops

    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outlines = []
    for contour in contours:
        if len(contour) < 3:
            continue
        points = ops.scale_coords(model_shape, contour.reshape(-1, 2).astype(np.float32), original, normalize=False)
        outlines.append([round(float(v), 1) for v in np.asarray(points).reshape(-1)])
    return outlines
