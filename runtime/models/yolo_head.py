"""What a YOLO model's raw outputs mean to a request, on the host, whichever engine ran the model: numpy and OpenCV.

``YoloHead`` knows the head's layout (class names, input size, whether it selects its own boxes) and turns a
batch's predictions into each image's ``RawDetections``: the boxes of every image that carries a ``Selection``
are selected for the whole batch in one vectorised step right after the model, so the common request needs no
second trip through the worker pool; ``postprocess`` finishes one image from its item's ``Selection``: boxes the
batch step left unselected, and mask outlines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from kubeinfer.runtime.errors import InferenceError
from kubeinfer.runtime.models.box_selection import select_boxes, select_boxes_batch, select_end2end
from kubeinfer.runtime.models.yolo_io import (
    BatchItem,
    Detection,
    RawDetections,
    Selection,
    boxes_in_originals,
)
from kubeinfer.runtime.models.yolo_masks import instance_masks, mask_polygons


class YoloHead:
    """One YOLO head's outputs on the host: ``end2end`` heads (NMS-free, or NMS in the export) give [N, 6 + extra]
    rows per image, the others [4 + classes + extra, anchors] to be selected here."""

    def __init__(self, names: dict[int, str], image_size: int, end2end: bool) -> None:
        self.names = names
        self.image_size = image_size
        self.end2end = end2end

    @property
    def labels(self) -> list[str]:
        return [self.names[i] for i in sorted(self.names)]

    def select(self, predictions: np.ndarray, selection: Selection) -> np.ndarray:
        """One image's kept rows ([k, 6 + extra])."""
        if self.end2end:
            return select_end2end(predictions, selection)
        return select_boxes(predictions, len(self.names), selection)

    def select_batch(self, predictions: np.ndarray, selections: Sequence[Selection]) -> list[np.ndarray]:
        if self.end2end:
            return [select_end2end(p, s) for p, s in zip(predictions, selections, strict=True)]
        return select_boxes_batch(predictions, len(self.names), selections)

    def detections(self, batch: Sequence[BatchItem], predictions: np.ndarray, prototypes: np.ndarray | None,
                   errors: dict[int, InferenceError] | None = None) -> list[RawDetections]:
        """Each image's ``RawDetections`` from the batch's outputs (float32, on the host); the images in
        ``errors`` failed in the batch step and get no boxes."""
        errors = errors or {}
        kept: list[np.ndarray | None] = [None] * len(batch)
        boxes: list[list[Detection] | None] = [None] * len(batch)
        chosen = [(i, item.selection) for i, item in enumerate(batch)
                  if item.selection is not None and i not in errors]
        if chosen:
            rows = self.select_batch(predictions[[i for i, _ in chosen]], [s for _, s in chosen])
            for (i, _), selected in zip(chosen, rows, strict=True):
                kept[i] = selected
            self.fill_boxes(batch, kept, boxes)
        return [RawDetections(predictions[i], None if prototypes is None else prototypes[i], kept[i], boxes[i],
                              errors.get(i)) for i in range(len(batch))]

    def fill_boxes(self, batch: Sequence[BatchItem], kept: Sequence[np.ndarray | None],
                   boxes: list[list[Detection] | None]) -> None:
        """The final boxes of every selected image that asked for no masks, in one vectorised step."""
        plain = [i for i, item in enumerate(batch)
                 if kept[i] is not None and item.selection is not None and not item.selection.masks]
        found = boxes_in_originals([kept[i] for i in plain],  # type: ignore[misc]
                                   [(batch[i].original_height, batch[i].original_width) for i in plain],
                                   self.image_size, self.names)
        for i, image_boxes in zip(plain, found, strict=True):
            boxes[i] = image_boxes

    def postprocess(self, raw: RawDetections, item: BatchItem) -> list[Detection]:
        """``item``'s boxes in its original pixels with its ``Selection`` (unless the batch step selected them
        already), with mask outlines when it asks for them (and the model segments)."""
        selection = item.selection
        if selection is None:
            raise ValueError("an image's boxes are selected with its Selection: this one carries none")
        if raw.boxes is not None and not selection.masks:
            return raw.boxes
        kept = raw.kept
        if kept is None:
            assert raw.predictions is not None  # only a model process's answers come without them
            kept = self.select(raw.predictions, selection)
        original = (item.original_height, item.original_width)
        if not selection.masks or raw.prototypes is None:
            return boxes_in_originals([kept], [original], self.image_size, self.names)[0]
        return self.boxes_with_masks(kept, raw.prototypes, original)

    def boxes_with_masks(self, kept: np.ndarray, prototypes: np.ndarray,
                         original: tuple[int, int]) -> list[Detection]:
        """Selected rows as boxes in original pixels, with their mask polygons."""
        if kept.shape[0] == 0:
            return []
        masks = instance_masks(prototypes, kept, self.image_size)
        boxes = boxes_in_originals([kept], [original], self.image_size, self.names)[0]
        return [replace(box, polygons=mask_polygons(mask, self.image_size, original))
                for box, mask in zip(boxes, masks, strict=True)]
