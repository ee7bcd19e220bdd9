"""Protobuf responses -> the clients' plain dataclasses."""

from __future__ import annotations

from kubeinfer.clients.types import Box, Detection, DetectResult, ModelInfo
from kubeinfer.v1 import inference_pb2 as pb


def detect_result(result: pb.DetectResult) -> DetectResult:
    return DetectResult(
        detections=[Detection(Box(d.box.x1, d.box.y1, d.box.x2, d.box.y2), d.score, d.class_id, d.label,
                              [list(p.xy) for p in d.mask]) for d in result.detections],
        defects=list(result.defects), height=result.height, width=result.width)


def model_info(info: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        task=info.task, model_name=info.model_name, model_path=info.model_path, model_format=info.model_format,
        labels=list(info.labels), input_size=info.input_size, device=info.device,
        max_batch_size=info.batching.max_batch_size, max_batch_delay_ms=info.batching.max_batch_delay_ms,
        max_queue_size=info.batching.max_queue_size, confidence=info.thresholds.confidence,
        iou=info.thresholds.iou, similarity=info.thresholds.similarity, version=info.version,
        segmentation=info.segmentation, top_k=info.top_k, window=info.window, active_streams=info.active_streams,
        max_streams=info.max_streams, gallery_size=info.gallery_size, gallery_dimension=info.gallery_dimension,
        gallery_labels=list(info.gallery_labels), operations=list(info.operations))
