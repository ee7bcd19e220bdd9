"""Object detection: boxes, the distinct defect labels, optional segmentation polygons."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.detection import Detector, DetectOverrides, DetectResult
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.models.yolo import Letterboxed
from kubeinfer.runtime.tasks.base import Task, require_images


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

    def info(self, base: ModelInfo) -> ModelInfo:
        model = self.detector.model
        return replace(base, model_format=model.format, backend=model.engine, labels=tuple(model.labels),
                       input_size=model.image_size, segmentation=model.segmentation,
                       thresholds=self.detector.thresholds())

    async def serve_warm_up(self, images: list[ImageInput]) -> None:
        await self.detect(images, DetectOverrides())

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
