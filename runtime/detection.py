"""The request side of a detector, shared by the detect task and the video task's ``detect`` operation.

``DetectionRequests`` turns request parameters into an image's ``Selection`` (one builder, the same for every
transport and the video pipeline: defaults filled in, ranges checked), images into the detector engine's items,
and the boxes it answers into results. It knows the model only by its engine's facts. The defaults are the
flags both tasks declare (``FLAGS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kubeinfer.runtime.config import Flag, ServeConfig, within
from kubeinfer.runtime.engine.detector import DetectorFacts
from kubeinfer.runtime.errors import invalid_argument
from kubeinfer.runtime.images import ImageInput, check_encoded, decode, decode_checked
from kubeinfer.runtime.model_info import Thresholds
from kubeinfer.runtime.models.yolo_io import BatchItem, Detection, EncodedJpeg, Letterboxed, Selection, letterboxed
from kubeinfer.runtime.parameters import Parameters, check_range
from kubeinfer.v1 import inference_pb2 as pb

MAX_DETECTIONS_LIMIT = 1000
PARAMETERS = ("confidence", "iou", "max_detections", "classes", "return_masks")
GROUP = "detect and video's detect operation"
CONFIDENCE = Flag("confidence", float, 0.25, "default minimum detection score", GROUP,
                  within(0.0, 1.0, "confidence"))
IOU = Flag("iou", float, 0.45, "default NMS IoU threshold", GROUP, within(0.0, 1.0, "iou"))
MAX_DETECTIONS = Flag("max-detections", int, 300, "default most detections per image", GROUP,
                      within(1, MAX_DETECTIONS_LIMIT, "max-detections", f"1..{MAX_DETECTIONS_LIMIT}"))
FLAGS = (CONFIDENCE, IOU, MAX_DETECTIONS)


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
        self.default = Selection(config.flag(CONFIDENCE), config.flag(IOU), config.flag(MAX_DETECTIONS))

    def thresholds(self) -> Thresholds:
        return Thresholds(confidence=self.default.confidence, iou=self.default.iou)

    def selection(self, params: Parameters) -> Selection:
        """A request's box selection from its parameters: defaults filled in, every value range-checked
        (INVALID_ARGUMENT otherwise)."""
        default = self.default
        confidence = params.number("confidence")
        iou = params.number("iou")
        max_det = params.integer("max_detections")
        classes = params.integers("classes")
        masks = bool(params.boolean("return_masks"))
        confidence = check_range("confidence", default.confidence if confidence is None else confidence, 0.0, 1.0)
        iou = check_range("iou", default.iou if iou is None else iou, 0.0, 1.0)
        max_det = default.max_detections if max_det is None else max_det
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


def detection_to_proto(d: Detection) -> pb.Detection:
    return pb.Detection(box=pb.Box(x1=d.x1, y1=d.y1, x2=d.x2, y2=d.y2), score=d.score, class_id=d.class_id,
                        label=d.label, mask=[pb.Polygon(xy=p) for p in d.polygons])
