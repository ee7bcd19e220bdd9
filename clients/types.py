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
