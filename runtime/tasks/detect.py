"""Object detection (seed 004): boxes, the distinct defect labels, optional segmentation polygons."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubeinfer.runtime.batching import DynamicBatcher
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.errors import invalid_argument
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.models.yolo import BoxResult, Letterboxed, RawDetections, YoloDetector
from kubeinfer.runtime.tasks.base import Task, check_range, require_images

MAX_DETECTIONS_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class DetectOverrides:
    """Per-request parameters as sent; None keeps the runtime default."""

    confidence: float | None = None
    iou: float | None = None
    max_detections: int | None = None
    classes: tuple[int, ...] = ()
    return_masks: bool = False


@dataclass(frozen=True, slots=True)
class DetectParams:
    confidence: float
    iou: float
    max_detections: int
    classes: tuple[int, ...]
    return_masks: bool


@dataclass(slots=True)
class Detection:
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    label: str
    polygons: list[list[float]] = field(default_factory=list)


@dataclass(slots=True)
class DetectResult:
    detections: list[Detection]
    defects: list[str]
    height: int
    width: int


class Detector:
    """A YOLO model plus the batcher feeding it: shared by the detect task and the video task's overlay."""

    def __init__(self, config: ServeConfig, metrics: RuntimeMetrics, path: Path) -> None:
        self.config = config
        self.model = YoloDetector(path, config.device, config.image_size)
        self.batcher: DynamicBatcher[Letterboxed, RawDetections] = DynamicBatcher(
            "detect", self.model.forward, max_batch_size=config.max_batch_size,
            max_delay_s=config.max_batch_delay_ms / 1000.0, max_queue_size=config.max_queue_size, metrics=metrics)

    def resolve(self, overrides: DetectOverrides) -> DetectParams:
        """Defaults filled in and every value range-checked (INVALID_ARGUMENT otherwise)."""
        c = self.config
        confidence = check_range("confidence", c.confidence if overrides.confidence is None else overrides.confidence,
                                 0.0, 1.0)
        iou = check_range("iou", c.iou if overrides.iou is None else overrides.iou, 0.0, 1.0)
        max_det = c.max_detections if overrides.max_detections is None else overrides.max_detections
        check_range("max_detections", max_det, 1, MAX_DETECTIONS_LIMIT)
        unknown = sorted(set(overrides.classes) - set(self.model.names))
        if unknown:
            raise invalid_argument(f"classes {unknown} are not in the model's classes 0..{len(self.model.names) - 1}")
        if overrides.return_masks and not self.model.segmentation:
            raise invalid_argument("return_masks needs a segmentation model; this detector only predicts boxes")
        return DetectParams(confidence, iou, int(max_det), tuple(overrides.classes), overrides.return_masks)

    def to_result(self, boxes: list[BoxResult], shape: tuple[int, int]) -> DetectResult:
        names = self.model.names
        detections = [Detection(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id, names.get(b.class_id, str(b.class_id)),
                                b.polygons) for b in boxes]
        return DetectResult(detections, sorted({d.label for d in detections}), shape[0], shape[1])

    def postprocess(self, raw: RawDetections, item: Letterboxed, params: DetectParams) -> DetectResult:
        shape = (item.original_height, item.original_width)
        boxes = self.model.postprocess(raw, shape, params.confidence, params.iou, params.max_detections,
                                       params.classes, params.return_masks)
        return self.to_result(boxes, shape)

    def prepare(self, bgr: np.ndarray) -> Letterboxed:
        return self.model.preprocess(bgr)


class DetectTask(Task):
    """Detect: decode + letterbox in the pool, one batched forward, per-image NMS in the pool."""

    name = "detect"

    def __init__(self, config: ServeConfig, metrics: RuntimeMetrics, pool: ThreadPoolExecutor) -> None:
        super().__init__(config, metrics, pool)
        assert config.model is not None  # ServeConfig.validate requires a model for detect
        self.detector = Detector(config, metrics, config.model)

    def start(self) -> None:
        self.detector.batcher.start()

    def stop(self) -> None:
        self.detector.batcher.stop()

    def info(self) -> dict[str, Any]:
        model = self.detector.model
        return {
            "model_format": model.format, "labels": model.labels, "input_size": model.image_size,
            "segmentation": model.segmentation,
        }

    def _prepare(self, image: ImageInput, index: int) -> Letterboxed:
        return self.detector.prepare(self.decode(image, index))

    async def detect(self, images: Sequence[ImageInput], overrides: DetectOverrides) -> list[DetectResult]:
        require_images(images)
        params = self.detector.resolve(overrides)
        batcher = self.detector.batcher
        with batcher.reserve(len(images)) as reservation:
            prepared = await self.map_in_pool(self._prepare, images, range(len(images)))
            raws = await batcher.submit_many(prepared, reservation)
        results = await self.map_in_pool(self.detector.postprocess, raws, prepared, [params] * len(raws))
        self.metrics.images.labels(self.metrics.model, self.name).inc(len(images))
        return results
