"""Detection primitives shared by the detect task and the video task's ``detect`` operation.

The result type, and ``Detector``: a YOLO model plus the dynamic batcher feeding it, which turns request
parameters into an image's ``Selection`` (one builder, the same for every transport and the video pipeline:
defaults filled in, ranges checked) and raw outputs into labelled boxes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kubeinfer.runtime.batching import DynamicBatcher
from kubeinfer.runtime.config import ServeConfig, detector_backend
from kubeinfer.runtime.errors import invalid_argument
from kubeinfer.runtime.images import ImageInput, check_encoded, decode, decode_checked
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import Thresholds
from kubeinfer.runtime.models.yolo_io import (
    BatchItem,
    Detection,
    EncodedJpeg,
    Letterboxed,
    RawDetections,
    Selection,
)
from kubeinfer.runtime.parameters import Parameters, check_range

if TYPE_CHECKING:
    from kubeinfer.runtime.models.yolo import YoloDetector
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

log = logging.getLogger(__name__)

MAX_DETECTIONS_LIMIT = 1000
PARAMETERS = ("confidence", "iou", "max_detections", "classes", "return_masks")


@dataclass(slots=True)
class DetectResult:
    detections: list[Detection]
    defects: list[str]
    height: int
    width: int


class Device(Protocol):
    """A model's device as torch names it (``torch.device``): ``type`` is cpu or cuda."""

    @property
    def type(self) -> str: ...


class DetectorModel(Protocol):
    """What the detect task needs of a detector: ``YoloDetector`` in this process, or a frontend's view of the
    model process's (``frontends.remote``)."""

    names: dict[int, str]
    image_size: int
    segmentation: bool
    device: Device
    format: str
    engine: str

    @property
    def labels(self) -> list[str]: ...

    def preprocess(self, bgr: np.ndarray, selection: Selection | None = None) -> Letterboxed: ...

    def postprocess(self, raw: RawDetections, item: BatchItem) -> list[Detection]: ...


class DetectBatcher(Protocol):
    """The detect task's batcher: ``DynamicBatcher`` in this process, or a frontend's link to the model process."""

    def start(self) -> None: ...

    def stop(self, timeout: float | None = None) -> None: ...

    def reserve(self, count: int) -> AbstractContextManager[Any]: ...

    async def submit_many(self, items: Sequence[BatchItem], reservation: Any = None) -> list[RawDetections]: ...


class Detector:
    """A YOLO model plus the batcher feeding it: shared by the detect task and the video task's overlay."""

    def __init__(self, config: ServeConfig, model: DetectorModel, batcher: DetectBatcher) -> None:
        self.config = config
        self.model = model
        self.batcher = batcher
        self.decode_on_device = decodes_on_device(config.decode_device, model.device.type, model.engine)

    @classmethod
    def load(cls, config: ServeConfig, metrics: RuntimeMetrics, path: Path) -> Detector:
        """Load ``path`` on the engine --backend chooses (ONNX Runtime with numpy alone, or torch) with a dynamic
        batcher of its own."""
        from kubeinfer.runtime.models.backend import choose_backend  # the model libraries: only here

        backend = detector_backend(config.backend, config.decode_device)
        choice = choose_backend(path, backend, config.device, config.cache_dir, config.image_size)
        model: YoloOnnxDetector | YoloDetector
        if choice.backend == "onnx":
            from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

            model = YoloOnnxDetector(choice.path, config.device, config.image_size,
                                     exported_from=path if choice.path != path else None)
        else:
            from kubeinfer.runtime.models.yolo import YoloDetector

            model = YoloDetector(choice.path, config.device, config.image_size)
            if config.model_instances > 1 and config.device == "cpu":
                log.warning("the detector runs on torch with %d batches at once at %d thread%s each; torch's "
                            "threads are process-wide, so a lone request cannot take them all: --model-instances 1 "
                            "serves it faster below high concurrency", config.model_instances, config.model_threads,
                            "" if config.model_threads == 1 else "s")
        batcher: DynamicBatcher[BatchItem, RawDetections] = DynamicBatcher.from_config(
            "detect", model.forward, config, metrics)
        return cls(config, model, batcher)

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
        unknown = sorted(set(classes) - set(self.model.names))
        if unknown:
            raise invalid_argument(f"classes {unknown} are not in the model's classes 0..{len(self.model.names) - 1}")
        if masks and not self.model.segmentation:
            raise invalid_argument("return_masks needs a segmentation model; this detector only predicts boxes")
        return Selection(confidence, iou, int(max_det), tuple(classes), masks)

    @staticmethod
    def to_result(boxes: list[Detection], shape: tuple[int, int]) -> DetectResult:
        return DetectResult(boxes, sorted({d.label for d in boxes}), shape[0], shape[1])

    def postprocess(self, raw: RawDetections, item: BatchItem) -> DetectResult:
        """``item``'s labelled boxes (selected in the batch step unless it left them), polygons when asked for."""
        return self.to_result(self.model.postprocess(raw, item), (item.original_height, item.original_width))

    def prepare(self, bgr: np.ndarray, selection: Selection) -> Letterboxed:
        """Letterboxed, its boxes selected in the model's batch step (see models.yolo)."""
        return self.model.preprocess(bgr, selection)

    def prepare_input(self, image: ImageInput, index: int, selection: Selection) -> BatchItem:
        """One request image for the batcher (worker pool): every size and format guard runs here, so a bad image
        fails alone with its index. With decoding on the device, a plain JPEG stays encoded for the batch step;
        anything else (PNG, WebP, BMP, raw pixels, CMYK or EXIF-rotated JPEGs) is decoded here by OpenCV."""
        max_pixels = self.config.max_image_pixels
        if not (self.decode_on_device and image.encoded is not None):
            return self.prepare(decode(image, index, max_pixels), selection)
        header = check_encoded(image.encoded, index, max_pixels, jpeg_layout=True)
        if header.plain_jpeg:
            return EncodedJpeg(image.encoded, index, header.height, header.width, selection)
        return self.prepare(decode_checked(image.encoded, header, index), selection)


def decodes_on_device(decode_device: str, model_device: str, engine: str = "torch") -> bool:
    """--decode-device: "model" always, "auto" when the model is on CUDA (nvJPEG), "cpu" never; only torch decodes
    in the batch step (ServeConfig refuses "model" for ONNX Runtime, and "auto" leaves its JPEGs to OpenCV)."""
    if engine != "torch":
        return False
    return decode_device == "model" or (decode_device == "auto" and model_device == "cuda")
