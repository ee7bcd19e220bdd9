"""Protobuf responses -> the clients' plain dataclasses."""

from __future__ import annotations

import grpc

from kubeinfer.clients.types import (
    Box,
    Candidate,
    Classification,
    ClassifyResult,
    ClipResult,
    Detection,
    DetectResult,
    FrameError,
    ModelInfo,
    ProcessedFrame,
    Recognition,
    StreamPrediction,
    VideoSummary,
)
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
        gallery_labels=list(info.gallery_labels), operations=list(info.operations), backend=info.backend,
        instances=info.batching.instances, threads=info.batching.threads)


def recognition(result: pb.Recognition) -> Recognition:
    return Recognition(label=result.label, similarity=result.similarity, known=result.known,
                       candidates=[Candidate(c.label, c.similarity) for c in result.candidates])


def _frame_error(error: pb.FrameError) -> FrameError:
    names = {status.value[0]: status.name for status in grpc.StatusCode}
    return FrameError(names.get(error.code, str(error.code)), error.message)


def processed_frame(frame: pb.ProcessedFrame) -> ProcessedFrame:
    return ProcessedFrame(
        stream_id=frame.stream_id, sequence=frame.sequence, jpeg=frame.jpeg, width=frame.width, height=frame.height,
        detections=[Detection(Box(d.box.x1, d.box.y1, d.box.x2, d.box.y2), d.score, d.class_id, d.label,
                              [list(p.xy) for p in d.mask]) for d in frame.detections],
        error=_frame_error(frame.error) if frame.HasField("error") else None)


def video_file_event(event: pb.VideoFileEvent) -> ProcessedFrame | VideoSummary:
    if event.HasField("summary"):
        s = event.summary
        return VideoSummary(frame_count=s.frame_count, fps=s.fps, width=s.width, height=s.height)
    return processed_frame(event.frame)


def classify_result(result: pb.ClassifyResult) -> ClassifyResult:
    return ClassifyResult([Classification(c.label, c.class_id, c.score) for c in result.top])


def clip_result(result: pb.ClipResult) -> ClipResult:
    return ClipResult(classify_result(result.result), result.frames)


def stream_prediction(prediction: pb.StreamPrediction) -> StreamPrediction:
    return StreamPrediction(
        stream_id=prediction.stream_id, mode=prediction.mode, sequence=prediction.sequence,
        raw=classify_result(prediction.raw) if prediction.HasField("raw") else None,
        averaged=classify_result(prediction.averaged) if prediction.HasField("averaged") else None,
        window_fill=prediction.window_fill,
        error=_frame_error(prediction.error) if prediction.HasField("error") else None,
        window_restarted=prediction.window_restarted)
