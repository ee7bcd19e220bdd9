"""What every task's protobuf conversions share: images and parameter fields in, model info out.

Each task module converts its own messages (its RPCs' codecs); the REST transport reuses them through
json_format, so both transports return the same shapes. Request parameters go through the one parameter parser
and each task's own reading of them, as they do on every other transport.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.model_info import ModelInfo
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


def present_fields(message: Any, *names: str) -> dict[str, Any]:
    """The fields of ``message`` that were set (scalars with presence), as request parameter values."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def model_info_to_proto(info: ModelInfo) -> pb.ModelInfo:
    message = pb.ModelInfo(
        task=info.task, model_name=info.model_name, model_path=info.model_path, model_format=info.model_format,
        backend=info.backend,
        labels=info.labels, input_size=info.input_size, device=info.device, version=info.version,
        segmentation=info.segmentation, top_k=info.top_k, window=info.window, active_streams=info.active_streams,
        max_streams=info.max_streams, gallery_size=info.gallery_size, gallery_dimension=info.gallery_dimension,
        gallery_labels=info.gallery_labels, operations=info.operations,
        batching=pb.Batching(max_batch_size=info.batching.max_batch_size,
                             max_batch_delay_ms=info.batching.max_batch_delay_ms,
                             max_queue_size=info.batching.max_queue_size,
                             instances=info.batching.instances, threads=info.batching.threads))
    message.revision = info.revision
    if info.traffic is not None:
        traffic = info.traffic
        message.traffic.SetInParent()
        message.traffic.generation = traffic.generation
        message.traffic.candidate_weight = traffic.candidate_weight
        message.traffic.shadow_percent = traffic.shadow_percent
        for name, target in (("stable", traffic.stable), ("candidate", traffic.candidate)):
            if target is not None:
                getattr(message.traffic, name).CopyFrom(pb.RevisionTarget(revision=target.revision,
                                                                          target=target.target))
    if info.thresholds is not None:
        t = info.thresholds
        message.thresholds.SetInParent()
        for name, value in (("confidence", t.confidence), ("iou", t.iou), ("similarity", t.similarity)):
            if value is not None:
                setattr(message.thresholds, name, value)
    return message
