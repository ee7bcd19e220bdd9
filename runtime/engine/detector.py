"""The detector kind: a YOLO model, on ONNX Runtime with numpy alone or on torch (``--backend``), whose batch step
selects every image's boxes with the image's own ``Selection``; mask outlines follow in the worker pool.

A frontend letterboxes images into its ring (or, with JPEGs decoded on the model's device, sends them encoded);
the model process answers with the labelled boxes in original pixels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kubeinfer.runtime.config import ServeConfig, detector_backend
from kubeinfer.runtime.engine.base import EngineKind
from kubeinfer.runtime.engine.link import LinkItem
from kubeinfer.runtime.engine.local import LocalEngine
from kubeinfer.runtime.engine.ring import SlotRing
from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.images import warm_up_pixels
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.models.yolo_io import (
    BatchItem,
    Detection,
    EncodedJpeg,
    Letterboxed,
    RawDetections,
    Selection,
    letterboxed,
)

if TYPE_CHECKING:
    from kubeinfer.runtime.models.yolo import YoloDetector
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

log = logging.getLogger(__name__)
WARM_UP_SELECTION = Selection(confidence=0.25, iou=0.45, max_detections=300)  # ultralytics' defaults


@dataclass(frozen=True, slots=True)
class DetectorFacts:
    """What the request side needs of a detector: its classes, input size and whether it segments; where and on
    what it runs; and whether plain JPEGs go to its batch step still encoded (``--decode-device``)."""

    names: dict[int, str]
    image_size: int
    segmentation: bool
    device: str  # cpu, cuda:0
    format: str  # the file as given: pytorch, torchscript, onnx
    backend: str  # what runs it: torch or onnx (a .pt may run as its ONNX export)
    decodes_jpegs: bool

    @property
    def labels(self) -> list[str]:
        return [self.names[i] for i in sorted(self.names)]


class DetectorEngine(LocalEngine[BatchItem, list[Detection], DetectorFacts]):
    """A YOLO model and its batcher; an image's failure in the batch step (a JPEG no decoder took) fails its
    request."""

    def __init__(self, model: YoloDetector | YoloOnnxDetector, config: ServeConfig, metrics: RuntimeMetrics,
                 pool: Executor) -> None:
        device = str(model.device)
        facts = DetectorFacts(dict(model.names), model.image_size, model.segmentation, device, model.format,
                              model.engine, decodes_on_device(config.decode_device, model.device.type, model.engine))
        super().__init__("detect", facts, model.forward, config, metrics, pool)
        self.model = model

    @classmethod
    def load(cls, config: ServeConfig, metrics: RuntimeMetrics, pool: Executor) -> DetectorEngine:
        """--model on the engine --backend chooses (blocking: the model loads)."""
        from kubeinfer.runtime.models.backend import choose_backend  # the model libraries: only here

        path = config.model
        assert path is not None  # the tasks that need a detector have one (ServeConfig.validate)
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
        return cls(model, config, metrics, pool)

    async def finish(self, outputs: list[RawDetections], items: Sequence[BatchItem],
                     options: object | None) -> list[list[Detection]]:
        """The boxes the batch step selected and labelled; mask outlines drawn in the pool, in parallel."""
        failed = next((raw.error for raw in outputs if raw.error is not None), None)
        if failed is not None:  # a JPEG no decoder took in the batch step: this request fails, the batch did not
            raise failed
        results: list[list[Detection]] = [raw.boxes or [] for raw in outputs]
        later = [i for i, raw in enumerate(outputs) if raw.boxes is None]
        if later:
            loop = asyncio.get_running_loop()
            drawn = await asyncio.gather(*(loop.run_in_executor(self.pool, self.model.postprocess, outputs[i],
                                                                items[i]) for i in later))
            for i, boxes in zip(later, drawn, strict=True):
                results[i] = boxes
        return results

    def warm_up_request(self) -> tuple[BatchItem, object | None]:
        return letterboxed(warm_up_pixels(), self.facts.image_size, WARM_UP_SELECTION), None


class DetectorItems:
    """Letterboxed images in a slot each; JPEGs for the model's device as their bytes; the selection alongside."""

    def slot_shape(self, facts: DetectorFacts) -> tuple[int, int, int]:
        return (facts.image_size, facts.image_size, 3)

    def to_link(self, item: BatchItem, into_slot: Callable[[np.ndarray], int]) -> LinkItem:
        if item.selection is None:
            raise InferenceError(Code.INTERNAL, "internal error: a frontend's image carries no box selection")
        if isinstance(item, EncodedJpeg):
            return LinkItem(None, item.data, item.index, item.original_height, item.original_width, item.selection)
        return LinkItem(into_slot(item.pixels), None, 0, item.original_height, item.original_width, item.selection)

    def from_link(self, item: LinkItem, ring: SlotRing) -> BatchItem:
        if item.slot is not None:
            return Letterboxed(ring.images[item.slot], item.original_height, item.original_width, item.selection)
        return EncodedJpeg(item.jpeg or b"", item.index, item.original_height, item.original_width, item.selection)


DETECTOR: EngineKind[BatchItem] = EngineKind("detector", DetectorEngine.load, DetectorItems())


def decodes_on_device(decode_device: str, model_device: str, engine: str = "torch") -> bool:
    """--decode-device: "model" always, "auto" when the model is on CUDA (nvJPEG), "cpu" never; only torch decodes
    in the batch step (ServeConfig refuses "model" for ONNX Runtime, and "auto" leaves its JPEGs to OpenCV)."""
    if engine != "torch":
        return False
    return decode_device == "model" or (decode_device == "auto" and model_device == "cuda")
