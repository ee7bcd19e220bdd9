from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("pixels", "height", "width", "channels")
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    pixels: bytes
    height: int
    width: int
    channels: int
    def __init__(self, pixels: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("task", "model_name", "model_path", "model_format", "labels", "input_size", "device", "batching", "thresholds", "version", "segmentation", "top_k", "window", "active_streams", "max_streams", "gallery_size", "gallery_dimension", "gallery_labels", "operations", "backend", "revision", "traffic")
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SIZE_FIELD_NUMBER: _ClassVar[int]
    GALLERY_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    GALLERY_LABELS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    task: str
    model_name: str
    model_path: str
    model_format: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    input_size: int
    device: str
    batching: Batching
    thresholds: Thresholds
    version: str
    segmentation: bool
    top_k: int
    window: int
    active_streams: int
    max_streams: int
    gallery_size: int
    gallery_dimension: int
    gallery_labels: _containers.RepeatedScalarFieldContainer[str]
    operations: _containers.RepeatedScalarFieldContainer[str]
    backend: str
    revision: str
    traffic: Traffic
    def __init__(self, task: _Optional[str] = ..., model_name: _Optional[str] = ..., model_path: _Optional[str] = ..., model_format: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., input_size: _Optional[int] = ..., device: _Optional[str] = ..., batching: _Optional[_Union[Batching, _Mapping]] = ..., thresholds: _Optional[_Union[Thresholds, _Mapping]] = ..., version: _Optional[str] = ..., segmentation: _Optional[bool] = ..., top_k: _Optional[int] = ..., window: _Optional[int] = ..., active_streams: _Optional[int] = ..., max_streams: _Optional[int] = ..., gallery_size: _Optional[int] = ..., gallery_dimension: _Optional[int] = ..., gallery_labels: _Optional[_Iterable[str]] = ..., operations: _Optional[_Iterable[str]] = ..., backend: _Optional[str] = ..., revision: _Optional[str] = ..., traffic: _Optional[_Union[Traffic, _Mapping]] = ...) -> None: ...

class Traffic(_message.Message):
    __slots__ = ("generation", "stable", "candidate", "candidate_weight", "shadow_percent")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_PERCENT_FIELD_NUMBER: _ClassVar[int]
    generation: int
    stable: RevisionTarget
    candidate: RevisionTarget
    candidate_weight: int
    shadow_percent: int
    def __init__(self, generation: _Optional[int] = ..., stable: _Optional[_Union[RevisionTarget, _Mapping]] = ..., candidate: _Optional[_Union[RevisionTarget, _Mapping]] = ..., candidate_weight: _Optional[int] = ..., shadow_percent: _Optional[int] = ...) -> None: ...

class RevisionTarget(_message.Message):
    __slots__ = ("revision", "target")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    revision: str
    target: str
    def __init__(self, revision: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class Batching(_message.Message):
    __slots__ = ("max_batch_size", "max_batch_delay_ms", "max_queue_size", "instances", "threads")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_size: int
    instances: int
    threads: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_batch_delay_ms: _Optional[float] = ..., max_queue_size: _Optional[int] = ..., instances: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class Thresholds(_message.Message):
    __slots__ = ("confidence", "iou", "similarity")
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    confidence: float
    iou: float
    similarity: float
    def __init__(self, confidence: _Optional[float] = ..., iou: _Optional[float] = ..., similarity: _Optional[float] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("images", "parameters")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    parameters: DetectParameters
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., parameters: _Optional[_Union[DetectParameters, _Mapping]] = ...) -> None: ...

class DetectParameters(_message.Message):
    __slots__ = ("confidence", "iou", "max_detections", "classes", "return_masks")
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    RETURN_MASKS_FIELD_NUMBER: _ClassVar[int]
    confidence: float
    iou: float
    max_detections: int
    classes: _containers.RepeatedScalarFieldContainer[int]
    return_masks: bool
    def __init__(self, confidence: _Optional[float] = ..., iou: _Optional[float] = ..., max_detections: _Optional[int] = ..., classes: _Optional[_Iterable[int]] = ..., return_masks: _Optional[bool] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Polygon(_message.Message):
    __slots__ = ("xy",)
    XY_FIELD_NUMBER: _ClassVar[int]
    xy: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, xy: _Optional[_Iterable[float]] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "score", "class_id", "label", "mask")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    box: Box
    score: float
    class_id: int
    label: str
    mask: _containers.RepeatedCompositeFieldContainer[Polygon]
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., class_id: _Optional[int] = ..., label: _Optional[str] = ..., mask: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ...) -> None: ...

class DetectResult(_message.Message):
    __slots__ = ("detections", "defects", "height", "width")
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    DEFECTS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    defects: _containers.RepeatedScalarFieldContainer[str]
    height: int
    width: int
    def __init__(self, detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., defects: _Optional[_Iterable[str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DetectResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DetectResult, _Mapping]]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("images", "top_k")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    top_k: int
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("label", "class_id", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    class_id: int
    score: float
    def __init__(self, label: _Optional[str] = ..., class_id: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class ClassifyResult(_message.Message):
    __slots__ = ("top",)
    TOP_FIELD_NUMBER: _ClassVar[int]
    top: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, top: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ClassifyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ClassifyResult, _Mapping]]] = ...) -> None: ...

class ClipFrame(_message.Message):
    __slots__ = ("image", "top_k")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    image: Image
    top_k: int
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClipResult(_message.Message):
    __slots__ = ("result", "frames")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    result: ClassifyResult
    frames: int
    def __init__(self, result: _Optional[_Union[ClassifyResult, _Mapping]] = ..., frames: _Optional[int] = ...) -> None: ...

class StreamFrame(_message.Message):
    __slots__ = ("stream_id", "mode", "sequence", "image", "top_k", "resume")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    mode: str
    sequence: int
    image: Image
    top_k: int
    resume: bool
    def __init__(self, stream_id: _Optional[str] = ..., mode: _Optional[str] = ..., sequence: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., top_k: _Optional[int] = ..., resume: _Optional[bool] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StreamPrediction(_message.Message):
    __slots__ = ("stream_id", "mode", "sequence", "raw", "averaged", "window_fill", "error", "window_restarted")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    AVERAGED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FILL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WINDOW_RESTARTED_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    mode: str
    sequence: int
    raw: ClassifyResult
    averaged: ClassifyResult
    window_fill: int
    error: FrameError
    window_restarted: bool
    def __init__(self, stream_id: _Optional[str] = ..., mode: _Optional[str] = ..., sequence: _Optional[int] = ..., raw: _Optional[_Union[ClassifyResult, _Mapping]] = ..., averaged: _Optional[_Union[ClassifyResult, _Mapping]] = ..., window_fill: _Optional[int] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ..., window_restarted: _Optional[bool] = ...) -> None: ...

class RecognizeRequest(_message.Message):
    __slots__ = ("images", "threshold", "top_k")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    threshold: float
    top_k: int
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., threshold: _Optional[float] = ..., top_k: _Optional[int] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("label", "similarity")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    similarity: float
    def __init__(self, label: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class Recognition(_message.Message):
    __slots__ = ("label", "similarity", "known", "candidates")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    label: str
    similarity: float
    known: bool
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, label: _Optional[str] = ..., similarity: _Optional[float] = ..., known: _Optional[bool] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Recognition]
    def __init__(self, results: _Optional[_Iterable[_Union[Recognition, _Mapping]]] = ...) -> None: ...

class VideoOperation(_message.Message):
    __slots__ = ("name", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ...) -> None: ...

class VideoPipeline(_message.Message):
    __slots__ = ("operations", "jpeg_quality")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[VideoOperation]
    jpeg_quality: int
    def __init__(self, operations: _Optional[_Iterable[_Union[VideoOperation, _Mapping]]] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class VideoRequest(_message.Message):
    __slots__ = ("pipeline", "stream_id", "sequence", "image")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    pipeline: VideoPipeline
    stream_id: str
    sequence: int
    image: Image
    def __init__(self, pipeline: _Optional[_Union[VideoPipeline, _Mapping]] = ..., stream_id: _Optional[str] = ..., sequence: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class ProcessedFrame(_message.Message):
    __slots__ = ("stream_id", "sequence", "jpeg", "width", "height", "detections", "error")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    sequence: int
    jpeg: bytes
    width: int
    height: int
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    error: FrameError
    def __init__(self, stream_id: _Optional[str] = ..., sequence: _Optional[int] = ..., jpeg: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ...) -> None: ...

class VideoFileRequest(_message.Message):
    __slots__ = ("video", "pipeline")
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    video: bytes
    pipeline: VideoPipeline
    def __init__(self, video: _Optional[bytes] = ..., pipeline: _Optional[_Union[VideoPipeline, _Mapping]] = ...) -> None: ...

class VideoSummary(_message.Message):
    __slots__ = ("frame_count", "fps", "width", "height")
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    frame_count: int
    fps: float
    width: int
    height: int
    def __init__(self, frame_count: _Optional[int] = ..., fps: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class VideoFileEvent(_message.Message):
    __slots__ = ("frame", "summary")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    frame: ProcessedFrame
    summary: VideoSummary
    def __init__(self, frame: _Optional[_Union[ProcessedFrame, _Mapping]] = ..., summary: _Optional[_Union[VideoSummary, _Mapping]] = ...) -> None: ...
