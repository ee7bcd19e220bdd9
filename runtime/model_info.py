"""What GetModelInfo (and the build-info metric) report: one typed record, turned into protobuf by the codec.

The data plane fills in the runtime's part; each task adds its own (``Task.info``): labels, input size,
windows, gallery, operations, and thresholds only for the tasks that use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Batching:
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_size: int
    instances: int = 1
    threads: int = 0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The defaults a task applies; None for the ones it does not have."""

    confidence: float | None = None
    iou: float | None = None
    similarity: float | None = None


@dataclass(frozen=True, slots=True)
class RevisionTarget:
    revision: str
    target: str  # host:port of the revision's headless Service


@dataclass(frozen=True, slots=True)
class Traffic:
    """A rollout's traffic table (the operator's NAME-traffic ConfigMap): who is stable, who is the candidate,
    and how live calls are split and mirrored."""

    generation: int
    stable: RevisionTarget | None
    candidate: RevisionTarget | None = None
    candidate_weight: int = 0  # percent of live calls for the candidate
    shadow_percent: int = 0  # percent of the stable revision's calls mirrored to the candidate


@dataclass(frozen=True, slots=True)
class ModelInfo:
    task: str
    model_name: str
    model_path: str
    device: str
    version: str
    batching: Batching
    model_format: str = ""
    backend: str = ""  # the engine running the model: torch or onnx (a .pt detector may run as an ONNX export)
    labels: tuple[str, ...] = ()
    input_size: int = 0
    thresholds: Thresholds | None = None
    top_k: int = 0
    segmentation: bool = False
    window: int = 0
    active_streams: int = 0
    max_streams: int = 0
    gallery_size: int = 0
    gallery_dimension: int = 0
    gallery_labels: tuple[str, ...] = ()
    operations: tuple[str, ...] = field(default=())
    revision: str = ""  # this replica's (progressive rollout); empty without one
    traffic: Traffic | None = None
