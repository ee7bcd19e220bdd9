"""Object detection: boxes, the distinct defect labels, optional segmentation polygons.

One RPC, ``Detect``: native gRPC, ``POST /v1/detect`` and the Open Inference Protocol (outputs ``boxes`` FP32
[N,K,4] in original pixels, ``scores`` FP32 [N,K], ``classes`` INT32 [N,K] (-1 pads), ``labels`` BYTES [N,K]
("" pads), ``counts`` INT32 [N], padded to the request's largest count K).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace

import numpy as np

from kubeinfer.runtime import codec
from kubeinfer.runtime.config import ServeConfig, detector_backend, expected_engine
from kubeinfer.runtime.detection import FLAGS, PARAMETERS, DetectionRequests, DetectResult, detection_to_proto
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.engine.detector import DETECTOR, DetectorFacts
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.models.yolo_io import BatchItem, Detection, Selection
from kubeinfer.runtime.oip.tensors import Tensor, TensorSpec, labels_tensor, padded
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.base import Task, is_thumbnail, require_images
from kubeinfer.runtime.tasks.registry import ImagesRpc, OipOutputs, TaskSpec, register
from kubeinfer.v1 import inference_pb2 as pb

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


# -- the RPC: its codec, and its answers as tensors

def parameters_from_proto(request: pb.DetectRequest) -> Parameters:
    params = request.parameters
    values = codec.present_fields(params, "confidence", "iou", "max_detections")
    values.update(classes=list(params.classes), return_masks=params.return_masks)
    return Parameters(values)


def result_to_proto(result: DetectResult) -> pb.DetectResult:
    return pb.DetectResult(detections=[detection_to_proto(d) for d in result.detections],
                           defects=result.defects, height=result.height, width=result.width)


def response_to_proto(results: list[DetectResult]) -> pb.DetectResponse:
    return pb.DetectResponse(results=[result_to_proto(r) for r in results])


def tensors(results: list[DetectResult]) -> list[Tensor]:
    detections = [r.detections for r in results]
    k = max((len(d) for d in detections), default=0)
    boxes = np.zeros((len(results), k, 4), np.float32)
    for i, found in enumerate(detections):
        if found:
            boxes[i, :len(found)] = [(d.x1, d.y1, d.x2, d.y2) for d in found]
    return [
        Tensor("boxes", "FP32", boxes),
        Tensor("scores", "FP32", padded([[d.score for d in found] for found in detections], k, 0.0, np.float32)),
        Tensor("classes", "INT32", padded([[d.class_id for d in found] for found in detections], k, -1, np.int32)),
        labels_tensor("labels", [[d.label for d in found] for found in detections], k),
        Tensor("counts", "INT32", np.array([len(found) for found in detections], np.int32)),
    ]


DETECT = ImagesRpc(
    "Detect", pb.DetectRequest, pb.DetectResponse, PARAMETERS, parameters_from_proto,
    lambda task, images, params: task.detect(images, params),
    response_to_proto, rest="detect",
    oip=OipOutputs((TensorSpec("boxes", "FP32", (-1, -1, 4)), TensorSpec("scores", "FP32", (-1, -1)),
                    TensorSpec("classes", "INT32", (-1, -1)), TensorSpec("labels", "BYTES", (-1, -1)),
                    TensorSpec("counts", "INT32", (-1,))), tensors))


def decoding_problem(config: ServeConfig) -> str | None:
    """--decode-device model needs torch on the model's device: refused for a model ONNX Runtime runs."""
    if config.decode_device != "model" or expected_engine(
            config.model, detector_backend(config.backend, config.decode_device)) == "torch":
        return None
    return ("--decode-device model decodes JPEGs with torch on the model's device, but this model runs on ONNX "
            "Runtime (an .onnx file, or --backend onnx): use --decode-device cpu, or --backend torch for a .pt")


register(TaskSpec("detect", DetectTask, DETECTOR, (DETECT,), oip=DETECT, flags=FLAGS, check=decoding_problem))
