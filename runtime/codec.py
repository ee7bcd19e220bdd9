"""Conversions between kubeinfer.v1 protobuf messages and the data plane's plain types.

The REST transport reuses these too (through json_format), so both transports
return the same shapes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.tasks.classify import ClassifyResult, ClipFrameInput, ClipResult
from kubeinfer.runtime.tasks.detect import DetectOverrides, DetectResult
from kubeinfer.runtime.tasks.recognize import Recognition, RecognizeOverrides
from kubeinfer.runtime.tasks.stream import StreamFrameInput, StreamPrediction
from kubeinfer.runtime.tasks.video import FrameResult, VideoMessage, VideoSummary
from kubeinfer.runtime.video_ops import OpSpec, PipelineSpec
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


def recognize_overrides_from_proto(request: pb.RecognizeRequest) -> RecognizeOverrides:
    return RecognizeOverrides(
        threshold=request.threshold if request.HasField("threshold") else None,
        top_k=request.top_k if request.HasField("top_k") else None,
    )


def recognize_response_to_proto(results: Sequence[Recognition]) -> pb.RecognizeResponse:
    return pb.RecognizeResponse(results=[
        pb.Recognition(label=r.label, similarity=r.similarity, known=r.known,
                       candidates=[pb.Candidate(label=c.label, similarity=c.similarity) for c in r.candidates])
        for r in results
    ])


def video_pipeline_from_proto(pipeline: pb.VideoPipeline) -> PipelineSpec:
    return PipelineSpec(
        operations=tuple(OpSpec.of(op.name, dict(op.params)) for op in pipeline.operations),
        jpeg_quality=pipeline.jpeg_quality if pipeline.HasField("jpeg_quality") else None,
    )


def video_message_from_proto(request: pb.VideoRequest) -> VideoMessage:
    return VideoMessage(
        stream_id=request.stream_id, sequence=request.sequence,
        image=image_from_proto(request.image) if request.HasField("image") else None,
        pipeline=video_pipeline_from_proto(request.pipeline) if request.HasField("pipeline") else None,
    )


def processed_frame_to_proto(frame: FrameResult) -> pb.ProcessedFrame:
    message = pb.ProcessedFrame(stream_id=frame.stream_id, sequence=frame.sequence)
    if frame.error is not None:
        message.error.code = frame.error.code.value
        message.error.message = frame.error.message
        return message
    message.jpeg, message.width, message.height = frame.jpeg, frame.width, frame.height
    message.detections.extend(
        pb.Detection(box=pb.Box(x1=d.x1, y1=d.y1, x2=d.x2, y2=d.y2), score=d.score, class_id=d.class_id,
                     label=d.label, mask=[pb.Polygon(xy=p) for p in d.polygons])
        for d in frame.detections)
    return message


def video_file_event_to_proto(event: FrameResult | VideoSummary) -> pb.VideoFileEvent:
    if isinstance(event, VideoSummary):
        return pb.VideoFileEvent(summary=pb.VideoSummary(frame_count=event.frame_count, fps=event.fps,
                                                         width=event.width, height=event.height))
    return pb.VideoFileEvent(frame=processed_frame_to_proto(event))


def classify_result_to_proto(result: ClassifyResult) -> pb.ClassifyResult:
    return pb.ClassifyResult(top=[pb.Classification(label=c.label, class_id=c.class_id, score=c.score)
                                  for c in result.top])


def classify_response_to_proto(results: Sequence[ClassifyResult]) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(results=[classify_result_to_proto(r) for r in results])


async def clip_frames_from_proto(frames: AsyncIterator[pb.ClipFrame]) -> AsyncIterator[ClipFrameInput]:
    async for frame in frames:
        yield ClipFrameInput(image_from_proto(frame.image), frame.top_k if frame.HasField("top_k") else None)


def clip_result_to_proto(result: ClipResult) -> pb.ClipResult:
    return pb.ClipResult(result=classify_result_to_proto(result.result), frames=result.frames)


async def stream_frames_from_proto(frames: AsyncIterator[pb.StreamFrame]) -> AsyncIterator[StreamFrameInput]:
    async for frame in frames:
        yield StreamFrameInput(frame.stream_id, frame.mode, frame.sequence, image_from_proto(frame.image),
                               frame.top_k if frame.HasField("top_k") else None)


def stream_prediction_to_proto(prediction: StreamPrediction) -> pb.StreamPrediction:
    message = pb.StreamPrediction(stream_id=prediction.stream_id, mode=prediction.mode,
                                  sequence=prediction.sequence, window_fill=prediction.window_fill)
    if prediction.error is not None:
        message.error.code = prediction.error.code.value
        message.error.message = prediction.error.message
    if prediction.raw is not None:
        message.raw.CopyFrom(classify_result_to_proto(prediction.raw))
    if prediction.averaged is not None:
        message.averaged.CopyFrom(classify_result_to_proto(prediction.averaged))
    return message


def model_info_to_proto(info: dict[str, Any]) -> pb.ModelInfo:
    fields = dict(info)
    batching = fields.pop("batching", {})
    thresholds = fields.pop("thresholds", {})
    return pb.ModelInfo(batching=pb.Batching(**batching), thresholds=pb.Thresholds(**thresholds), **fields)
