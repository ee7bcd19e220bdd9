"""Object detection: boxes, the distinct defect labels, optional segmentation polygons."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.detection import DetectionRequests, DetectResult
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.engine.detector import DetectorFacts
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.models.yolo_io import BatchItem, Detection, Selection
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.base import Task, is_thumbnail, require_images

log = logging.getLogger(__name__)


class DetectTask(Task):
    """Detect: size and format guards (and, unless JPEGs decode on the model's device, decode + letterbox) in
    the pool, one batched forward with the batch's box selection; polygons (masks asked for) in the pool."""

    name = "detect"

    def __init__(self, config: ServeConfig, engine: Engine[BatchItem, list[Detection], DetectorFacts],
                 metrics: RuntimeMetrics, pool: Executor) -> None:
        super().__init__(config, engine, metrics, pool)
        self.engine = engine
        self.requests = DetectionRequests(config, engine.facts)
        facts = engine.facts
        where = f"in the batch step on {facts.device}" if facts.decodes_jpegs else "by OpenCV in the pool"
        log.info("detect: JPEGs are decoded and letterboxed %s (--decode-device %s)", where, config.decode_device)

    def info(self, base: ModelInfo) -> ModelInfo:
        facts = self.engine.facts
        return replace(base, model_format=facts.format, backend=facts.backend, labels=tuple(facts.labels),
                       input_size=facts.image_size, segmentation=facts.segmentation,
                       thresholds=self.requests.thresholds())

    async def serve_warm_up(self, images: list[ImageInput]) -> None:
        await self.detect(images, Parameters({}))

    def _prepare(self, image: ImageInput, index: int, selection: Selection) -> BatchItem:
        return self.requests.prepare_input(image, index, selection)

    async def detect(self, images: Sequence[ImageInput], params: Parameters) -> list[DetectResult]:
        require_images(images)
        selection = self.requests.selection(params)
        with self.engine.reserve(len(images)) as reservation:
            if len(images) == 1 and is_thumbnail(images[0]):
                prepared = [self._prepare(images[0], 0, selection)]  # cheaper than the hop to the pool and back
            else:
                prepared = await self.map_in_pool(self._prepare, images, range(len(images)),
                                                  [selection] * len(images))
            boxes = await self.engine.infer(prepared, reservation)
        results = [self.requests.result(found, item) for found, item in zip(boxes, prepared, strict=True)]
        self.metrics.images.labels(self.metrics.model, self.name).inc(len(images))
        return results
