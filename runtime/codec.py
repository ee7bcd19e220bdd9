"""Conversions between kubeinfer.v1 protobuf messages and the data plane's plain types.

The REST transport reuses these too (through json_format), so both transports
return the same shapes. Request parameters go through the one parameter parser and
each task's override builder, as they do on every other transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from kubeinfer.runtime.detection import DetectResult
from kubeinfer.runtime.gallery import Recognition
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.models.yolo_io import Detection
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.classify import ClassifyResult, ClipFrameInput, ClipResult, top_k_from_parameters
from kubeinfer.runtime.tasks.stream import StreamFrameInput, StreamPrediction
from kubeinfer.runtime.tasks.video import FrameResult, VideoMessage, VideoSummary
from kubeinfer.runtime.tasks.video.pipeline_spec import OpSpec, PipelineSpec
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


def _present(message: Any, *names: str) -> dict[str, Any]:
    """The fields of ``message`` that were set (scalars with presence), as request parameters."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def detect_parameters_from_proto(params: pb.DetectParameters) -> Parameters:
    values = _present(params, "confidence", "iou", "max_detections")
    values.update(classes=list(params.classes), return_masks=params.return_masks)
    return Parameters(values)


def classify_parameters_from_proto(request: pb.ClassifyRequest) -> int | None:
    return top_k_from_parameters(Parameters(_present(request, "top_k")))


def recognize_parameters_from_proto(request: pb.RecognizeRequest) -> Parameters:
    return Parameters(_present(request, "threshold", "top_k"))


def detection_to_proto(d: Detection) -> pb.Detection:
    return pb.Detection(box=pb.Box(x1=d.x1, y1=d.y1, x2=d.x2, y2=d.y2), score=d.score, class_id=d.class_id,
                        label=d.label, mask=[pb.Polygon(xy=p) for p in d.polygons])


def detect_result_to_proto(result: DetectResult) -> pb.DetectResult:
    return pb.DetectResult(detections=[detection_to_proto(d) for d in result.detections],
                           defects=result.defects, height=result.height, width=result.width)


def detect_response_to_proto(results: Sequence[DetectResult]) -> pb.DetectResponse:
    return pb.DetectResponse(results=[detect_result_to_proto(r) for r in results])


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


async def video_messages_from_proto(requests: AsyncIterator[pb.VideoRequest]) -> AsyncIterator[VideoMessage]:
    async for request in requests:
        yield video_message_from_proto(request)


def processed_frame_to_proto(frame: FrameResult) -> pb.ProcessedFrame:
    message = pb.ProcessedFrame(stream_id=frame.stream_id, sequence=frame.sequence)
    if frame.error is not None:
        message.error.code = frame.error.code.value
        message.error.message = frame.error.message
        return message
    message.jpeg, message.width, message.height = frame.jpeg, frame.width, frame.height
    message.detections.extend(detection_to_proto(d) for d in frame.detections)
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
                               frame.top_k if frame.HasField("top_k") else None, frame.resume)


def stream_prediction_to_proto(prediction: StreamPrediction) -> pb.StreamPrediction:
    message = pb.StreamPrediction(stream_id=prediction.stream_id, mode=prediction.mode,
                                  sequence=prediction.sequence, window_fill=prediction.window_fill,
                                  window_restarted=prediction.window_restarted)
    if prediction.error is not None:
        message.error.code = prediction.error.code.value
        message.error.message = prediction.error.message
    if prediction.raw is not None:
        message.raw.CopyFrom(classify_result_to_proto(prediction.raw))
    if prediction.averaged is not None:
        message.averaged.CopyFrom(classify_result_to_proto(prediction.averaged))
    return message


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
    if info.thresholds is not None:
        t = info.thresholds
        message.thresholds.SetInParent()
        for name, value in (("confidence", t.confidence), ("iou", t.iou), ("similarity", t.similarity)):
            if value is not None:
                setattr(message.thresholds, name, value)
    return message
