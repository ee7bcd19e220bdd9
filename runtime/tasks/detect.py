"""Object detection: boxes, the distinct defect labels, optional segmentation polygons."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.detection import Detector, DetectResult
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.models.yolo_io import BatchItem, Selection
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.base import Task, is_thumbnail, require_images

log = logging.getLogger(__name__)


class DetectTask(Task):
    """Detect: size and format guards (and, unless JPEGs decode on the model's device, decode + letterbox) in
    the pool, one batched forward with the batch's box selection; polygons (masks asked for) in the pool."""

    name = "detect"

    def __init__(self, config: ServeConfig, metrics: RuntimeMetrics, pool: ThreadPoolExecutor,
                 detector: Detector | None = None) -> None:
        """``detector``: one made elsewhere (a frontend's, whose model runs in the model process); by default
        --model is loaded here."""
        super().__init__(config, metrics, pool)
        assert config.model is not None  # ServeConfig.validate requires a model for detect
        self.detector = detector or Detector.load(config, metrics, config.model)
        device = self.detector.model.device
        where = f"in the batch step on {device}" if self.detector.decode_on_device else "by OpenCV in the pool"
        log.info("detect: JPEGs are decoded and letterboxed %s (--decode-device %s)", where, config.decode_device)

    def start(self) -> None:
        self.detector.batcher.start()

    def stop(self) -> None:
        self.detector.batcher.stop()

    def info(self, base: ModelInfo) -> ModelInfo:
        model = self.detector.model
        return replace(base, model_format=model.format, backend=model.engine, labels=tuple(model.labels),
                       input_size=model.image_size, segmentation=model.segmentation,
                       thresholds=self.detector.thresholds())

    async def serve_warm_up(self, images: list[ImageInput]) -> None:
        await self.detect(images, Parameters({}))

    def _prepare(self, image: ImageInput, index: int, selection: Selection) -> BatchItem:
        return self.detector.prepare_input(image, index, selection)

    async def detect(self, images: Sequence[ImageInput], params: Parameters) -> list[DetectResult]:
        require_images(images)
        selection = self.detector.selection(params)
        batcher = self.detector.batcher
        with batcher.reserve(len(images)) as reservation:
            if len(images) == 1 and is_thumbnail(images[0]):
                prepared = [self._prepare(images[0], 0, selection)]  # cheaper than the hop to the pool and back
            else:
                prepared = await self.map_in_pool(self._prepare, images, range(len(images)),
                                                  [selection] * len(images))
            raws = await batcher.submit_many(prepared, reservation)
        failed = next((raw.error for raw in raws if raw.error is not None), None)
        if failed is not None:  # a JPEG no decoder took in the batch step: this request fails, the batch did not
            raise failed
        if selection.masks:  # polygons: real work, in the pool
            results = await self.map_in_pool(self.detector.postprocess, raws, prepared)
        else:  # the batch step selected, scaled and labelled the boxes
            results = [self.detector.postprocess(raw, item) for raw, item in zip(raws, prepared, strict=True)]
        self.metrics.images.labels(self.metrics.model, self.name).inc(len(images))
        return results
