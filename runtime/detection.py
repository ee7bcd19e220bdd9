"""The request side of a detector, shared by the detect task and the video task's ``detect`` operation.

``DetectionRequests`` turns request parameters into an image's ``Selection`` (one builder, the same for every
transport and the video pipeline: defaults filled in, ranges checked), images into the detector engine's items,
and the boxes it answers into results. It knows the model only by its engine's facts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine.detector import DetectorFacts
from kubeinfer.runtime.errors import invalid_argument
from kubeinfer.runtime.images import ImageInput, check_encoded, decode, decode_checked
from kubeinfer.runtime.model_info import Thresholds
from kubeinfer.runtime.models.yolo_io import BatchItem, Detection, EncodedJpeg, Letterboxed, Selection, letterboxed
from kubeinfer.runtime.parameters import Parameters, check_range

MAX_DETECTIONS_LIMIT = 1000
PARAMETERS = ("confidence", "iou", "max_detections", "classes", "return_masks")


@dataclass(slots=True)
class DetectResult:
    detections: list[Detection]
    defects: list[str]
    height: int
    width: int


class DetectionRequests:
    """One detector's requests: parameters to a ``Selection``, images to batch items, boxes to results."""

    def __init__(self, config: ServeConfig, facts: DetectorFacts) -> None:
        self.config = config
        self.facts = facts

    def thresholds(self) -> Thresholds:
        return Thresholds(confidence=self.config.confidence, iou=self.config.iou)

    def selection(self, params: Parameters) -> Selection:
        """A request's box selection from its parameters: defaults filled in, every value range-checked
        (INVALID_ARGUMENT otherwise)."""
        c = self.config
        confidence = params.number("confidence")
        iou = params.number("iou")
        max_det = params.integer("max_detections")
        classes = params.integers("classes")
        masks = bool(params.boolean("return_masks"))
        confidence = check_range("confidence", c.confidence if confidence is None else confidence, 0.0, 1.0)
        iou = check_range("iou", c.iou if iou is None else iou, 0.0, 1.0)
        max_det = c.max_detections if max_det is None else max_det
        check_range("max_detections", max_det, 1, MAX_DETECTIONS_LIMIT)
        names = self.facts.names
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise invalid_argument(f"classes {unknown} are not in the model's classes 0..{len(names) - 1}")
        if masks and not self.facts.segmentation:
            raise invalid_argument("return_masks needs a segmentation model; this detector only predicts boxes")
        return Selection(confidence, iou, int(max_det), tuple(classes), masks)

    def prepare(self, bgr: np.ndarray, selection: Selection) -> Letterboxed:
        """Letterboxed to the model's input, its boxes selected in the batch step (see models.yolo)."""
        return letterboxed(bgr, self.facts.image_size, selection)

    def prepare_input(self, image: ImageInput, index: int, selection: Selection) -> BatchItem:
        """One request image for the engine (worker pool): every size and format guard runs here, so a bad image
        fails alone with its index. With decoding on the device, a plain JPEG stays encoded for the batch step;
        anything else (PNG, WebP, BMP, raw pixels, CMYK or EXIF-rotated JPEGs) is decoded here by OpenCV."""
        max_pixels = self.config.max_image_pixels
        if not (self.facts.decodes_jpegs and image.encoded is not None):
            return self.prepare(decode(image, index, max_pixels), selection)
        header = check_encoded(image.encoded, index, max_pixels, jpeg_layout=True)
        if header.plain_jpeg:
            return EncodedJpeg(image.encoded, index, header.height, header.width, selection)
        return self.prepare(decode_checked(image.encoded, header, index), selection)

    @staticmethod
    def result(boxes: list[Detection], item: BatchItem) -> DetectResult:
        """The engine's boxes for ``item`` (labelled, in its original pixels) with the distinct labels found."""
        return DetectResult(boxes, sorted({d.label for d in boxes}), item.original_height, item.original_width)
