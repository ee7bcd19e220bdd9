"""Plain result types returned by the clients (no protobuf in user code)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float
    class_id: int
    label: str
    mask: list[list[float]] = field(default_factory=list)  # polygons: x0, y0, x1, y1, ...


@dataclass(frozen=True)
class DetectResult:
    detections: list[Detection]
    defects: list[str]
    height: int
    width: int


@dataclass(frozen=True)
class ModelInfo:
    task: str
    model_name: str
    model_path: str
    model_format: str
    labels: list[str]
    input_size: int
    device: str
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_size: int
    confidence: float
    iou: float
    similarity: float
    version: str
    segmentation: bool
    top_k: int
    window: int
    active_streams: int
    max_streams: int
    gallery_size: int
    gallery_dimension: int
    gallery_labels: list[str]
    operations: list[str]
    backend: str = ""  # the engine running the model: torch or onnx (detect); empty where not reported
    instances: int = 0  # batches the model runs at once; 0 where not reported
    threads: int = 0  # the model's intra-op threads per instance; 0 where not reported


@dataclass(frozen=True)
class Candidate:
    label: str
    similarity: float


@dataclass(frozen=True)
class Recognition:
    label: str  # the best gallery label, or "unknown" when its similarity is below the threshold
    similarity: float  # cosine similarity of the best gallery label
    known: bool
    candidates: list[Candidate]  # top-k gallery labels, best first


@dataclass(frozen=True)
class FrameError:
    code: str  # gRPC status code name, e.g. INVALID_ARGUMENT
    message: str


@dataclass(frozen=True)
class ProcessedFrame:
    """One frame back from the video task: JPEG bytes (empty when ``error`` is set) and what was detected."""

    stream_id: str
    sequence: int
    jpeg: bytes
    width: int
    height: int
    detections: list[Detection]  # in the processed frame's pixels
    error: FrameError | None = None


@dataclass(frozen=True)
class VideoSummary:
    """Last event of a processed video file: frames decoded, the file's frame rate and frame size."""

    frame_count: int
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class Classification:
    label: str
    class_id: int
    score: float  # probability


@dataclass(frozen=True)
class ClassifyResult:
    """Top-k classes of one image (or one averaged window or clip), best first."""

    top: list[Classification]

    @property
    def label(self) -> str:
        """The best label ("" when the result is empty)."""
        return self.top[0].label if self.top else ""

    @property
    def score(self) -> float:
        return self.top[0].score if self.top else 0.0


@dataclass(frozen=True)
class ClipResult:
    result: ClassifyResult  # from the mean of the frames' class probabilities
    frames: int


@dataclass(frozen=True)
class StreamFrame:
    """A frame for Client.stream_classify with its own stream id, mode, sequence or top_k (None: the call's)."""

    image: object  # anything to_proto_image takes: path, bytes, numpy array, PIL image
    stream_id: str | None = None
    mode: str | None = None
    sequence: int | None = None  # default: the frame's position in the call
    top_k: int | None = None
    resume: bool | None = None  # keep the window by stream id beyond the call (see Client.stream_classify)


@dataclass(frozen=True)
class StreamPrediction:
    """One frame's answer: this frame alone (raw) and the mean over its stream's window (averaged)."""

    stream_id: str
    mode: str
    sequence: int
    raw: ClassifyResult | None
    averaged: ClassifyResult | None
    window_fill: int  # frames in the stream's window now
    error: FrameError | None = None  # set instead of raw/averaged when this frame failed
    window_restarted: bool = False  # resume only: the replica held no window for the id, so one starts here
