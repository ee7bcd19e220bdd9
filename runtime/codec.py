"""Conversions between kubeinfer.v1 protobuf messages and the data plane's plain types.

The REST transport reuses these too (through json_format), so both transports
return the same shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.tasks.detect import DetectOverrides, DetectResult
from kubeinfer.v1 import inference_pb2 as pb


def image_from_proto(image: pb.Image) -> ImageInput:
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return ImageInput(encoded=image.encoded)
    if kind == "raw":
        raw = image.raw
        return ImageInput(pixels=raw.pixels, height=raw.height, width=raw.width, channels=raw.channels or 3)
    return ImageInput()


def images_from_proto(images: Iterable[pb.Image]) -> list[ImageInput]:
    return [image_from_proto(image) for image in images]


def detect_overrides_from_proto(params: pb.DetectParameters) -> DetectOverrides:
    return DetectOverrides(
        confidence=params.confidence if params.HasField("confidence") else None,
        iou=params.iou if params.HasField("iou") else None,
        max_detections=params.max_detections if params.HasField("max_detections") else None,
        classes=tuple(params.classes),
        return_masks=params.return_masks,
    )


def detect_result_to_proto(result: DetectResult) -> pb.DetectResult:
    return pb.DetectResult(
        detections=[
            pb.Detection(box=pb.Box(x1=d.x1, y1=d.y1, x2=d.x2, y2=d.y2), score=d.score, class_id=d.class_id,
                         label=d.label, mask=[pb.Polygon(xy=p) for p in d.polygons])
            for d in result.detections
        ],
        defects=result.defects, height=result.height, width=result.width,
    )


def detect_response_to_proto(results: Sequence[DetectResult]) -> pb.DetectResponse:
    return pb.DetectResponse(results=[detect_result_to_proto(r) for r in results])


def model_info_to_proto(info: dict[str, Any]) -> pb.ModelInfo:
    fields = dict(info)
    batching = fields.pop("batching", {})
    thresholds = fields.pop("thresholds", {})
    return pb.ModelInfo(batching=pb.Batching(**batching), thresholds=pb.Thresholds(**thresholds), **fields)
