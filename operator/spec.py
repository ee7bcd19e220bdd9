"""The InferenceService spec as typed, validated objects: the one place that knows the CRD's field names.

On a real cluster the API server applies the CRD's defaults and rejects bad specs (OpenAPI + CEL) before the
operator sees them. The operator still parses every spec here with the same defaults and rules, because it must
not trust that (an old CRD, an API server that skipped validation, a test emulator) and because a precise
``SpecError`` message is what ends up in the resource's status. Every check made here is made by the CRD as well, so
`kubectl apply` reports it (tests/test_crd.py walks each ``raise SpecError`` and typed read below against the API
server).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from kubeinfer import __version__

GROUP = "kubeinfer.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"

TASKS = ("detect", "classify", "stream-classify", "recognize", "video")
LABELLED_TASKS = ("classify", "stream-classify")
# The runtime's two images (Dockerfile.runtime): gpu holds torch (.pt, TorchScript, GPUs, exports), cpu does not.
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/kubeinfer/kubeinfer-runtime:{__version__}"
DEFAULT_RUNTIME_CPU_IMAGE = f"ghcr.io/kubeinfer/kubeinfer-runtime:{__version__}-cpu"

# Defaults: the CRD declares the same values (tests/test_crd.py checks that they agree).
DEFAULT_CONFIDENCE = 0.25
DEFAULT_IOU = 0.45
DEFAULT_SIMILARITY = 0.8
DEFAULT_TOP_K = 5
DEFAULT_WINDOW = 8
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_DELAY_MS = 2.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_WORKERS = 4
DEFAULT_GALLERY_BATCH_SIZE = 32
DEFAULT_TARGET_CPU = 80
# Autoscaling signals: cpu (Resource metric), or a runtime metric per replica read through Prometheus.
METRICS = ("cpu", "queue", "inflight", "latency")
ENGINES = ("hpa", "keda")
DEFAULT_METRIC = "cpu"
DEFAULT_ENGINE = "hpa"
MAX_TARGET = 1_000_000.0
DEFAULT_REPLICAS = 1
# Runtime container resources when a spec sets none (`kubeinfer operator --default-resources` overrides).
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {"requests": {"cpu": "500m", "memory": "1Gi"}}

# Bounds shared with the CRD schema.
MAX_NAME_LENGTH = 58  # the headless Service is NAME-pods and a Service name is at most 63 characters
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
PVC_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
# s3://BUCKET/KEY[?versionId=V][#sha256=HEX], gs://BUCKET/KEY[?generation=N][#sha256=HEX], or a folder: a key
# ending in '/' (every object under that prefix). The CRD's pattern is this text.
S3_URI = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([^?#\s]*[^/?#\s]([?]versionId=[^&#\s]+)?(#sha256=[0-9a-fA-F]{64})?|([^?#\s]*/)?)"
GS_URI = r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]/([^?#\s]*[^/?#\s]([?]generation=[0-9]+)?(#sha256=[0-9a-fA-F]{64})?|([^?#\s]*/)?)"
URI_PATTERN = re.compile(rf"^(pvc://{PVC_NAME}/\S+|https?://\S+|{S3_URI}|{GS_URI}|/\S*)$")
OBJECT_SCHEMES = ("s3", "gs")
OBJECT_FOLDER = re.compile(r"^(s3|gs)://[^/]+/([^?#]*/)?$")  # an s3:// or gs:// prefix: a folder of objects
# What spec.*.storage and spec.*.credentials hold (the CRD's patterns are these texts).
ENDPOINT_PATTERN = re.compile(r"^https?://[^/?#\s]+/?$")
REGION_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SECRET_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a DNS subdomain: Secrets, accounts
SECRET_KEY_PATTERN = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
MODEL_FILE_PATTERN = re.compile(r"^[^/\s]([^\s]*[^/\s])?$")  # a relative path inside the folder
DEFAULT_GCS_KEY = "key.json"  # the Secret's key holding a GCP service-account JSON
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
# An ONNX model file (the CRD's rule uses the same expression): kubeinfer's images run those on the CPU only.
ONNX_MODEL = re.compile(r"(?i)[.]onnx([?#].*)?$")
PROMETHEUS_PATTERN = re.compile(r"^https?://[^/?#\s]+(/\S*)?$")

# spec.rollout (issue #34, /work/notes/rollout-design.md): a new revision shadowed, then weighted, step by step.
STEP_KINDS = ("shadow", "weight")
DEFAULT_STEPS = (("shadow", 20), ("weight", 10), ("weight", 50), ("weight", 100))
MAX_STEPS = 10
DEFAULT_INTERVAL = 60
DEFAULT_MAX_ERROR_RATE = 0.01
DEFAULT_MAX_LATENCY_RATIO = 1.5
DEFAULT_MIN_AGREEMENT = 0.9
DEFAULT_MIN_REQUESTS = 20
MAX_PARENT_REFS = 32  # Gateway API's own bound on a route's parentRefs
# A Gateway API ParentReference: each field's pattern and most characters, as Gateway API validates them (name has
# no pattern, only 1..253 characters). The CRD's patterns and maxLengths are these.
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
PARENT_REF_STRINGS: dict[str, tuple[re.Pattern[str] | None, int]] = {
    "group": (re.compile(rf"^$|^{DNS_SUBDOMAIN}$"), 253),
    "kind": (re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"), 63),
    "namespace": (re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), 63),
    "name": (None, 253),
    "sectionName": (re.compile(rf"^{DNS_SUBDOMAIN}$"), 253),
}


class SpecError(ValueError):
    """The spec cannot be served; the message names the field and is shown in status and events."""


@dataclass(frozen=True)
class Storage:
    """How the fetch reaches an s3:// or gs:// object: the store's endpoint and region (None: the cloud's own) and
    the Secret holding credentials (None: the pod's ServiceAccount, IRSA or workload identity, or none at all)."""

    endpoint: str | None = None  # s3: an S3-compatible endpoint; gs: an emulator (STORAGE_EMULATOR_HOST)
    region: str | None = None  # s3 only
    secret_name: str | None = None
    secret_key: str | None = None  # gs: the Secret's key with the service-account JSON (default key.json)


@dataclass(frozen=True)
class Uri:
    """Where a file comes from: a claim (``pvc``), the web (``http``), an object store (``s3``, ``gs``), or a path
    inside the image (``path``)."""

    raw: str
    scheme: str  # "pvc" | "http" | "s3" | "gs" | "path"
    claim: str | None = None
    path: str = ""  # pvc: the path inside the claim, no leading slash; path: the absolute path
    storage: Storage | None = None  # s3 and gs only
    file: str | None = None  # the model file inside a folder of objects (spec.model.file)

    @property
    def is_download(self) -> bool:
        """Fetched by the init container (http(s), s3, gs), not mounted or found in the image."""
        return self.scheme in ("http", *OBJECT_SCHEMES)

    @property
    def is_folder(self) -> bool:
        """An s3:// or gs:// prefix: every object under it, copied into a folder."""
        return self.scheme in OBJECT_SCHEMES and bool(OBJECT_FOLDER.match(self.raw))

    @property
    def basename(self) -> str:
        """The file name a download is stored under: the URL path's last segment, made file-safe (for a folder of
        objects, the model file's name)."""
        path = self.file or urlsplit(self.raw).path
        tail = "" if path.endswith("/") else path.rsplit("/", 1)[-1]
        clean = re.sub(r"[^A-Za-z0-9._-]", "_", tail)
        return "" if clean in ("", ".", "..") else clean

    @property
    def is_archive(self) -> bool:
        return self.basename.lower().endswith(ARCHIVE_SUFFIXES)


def parse_uri(text: str, field_path: str) -> Uri:
    """Split ``pvc://CLAIM/path``, ``http(s)://...``, ``s3://BUCKET/KEY``, ``gs://BUCKET/KEY`` or
    ``/absolute/path`` into a ``Uri``."""
    if not isinstance(text, str) or not URI_PATTERN.match(text):
        raise SpecError(f"{field_path}: {text!r} is not pvc://CLAIM/path, http(s)://..., s3://BUCKET/KEY, "
                        "gs://BUCKET/KEY or an absolute path")
    web = text.startswith(("http://", "https://", "s3://", "gs://"))
    # A '..' segment: in a download's URL before its query and fragment (they may hold anything), else anywhere.
    if ".." in (text.split("#")[0].split("?")[0] if web else text).split("/"):
        raise SpecError(f"{field_path}: {text!r} must not contain '..'")
    if text.startswith("pvc://"):
        claim, _, path = text[len("pvc://"):].partition("/")
        path = path.strip("/")
        if not path:
            raise SpecError(f"{field_path}: {text!r} needs a path inside the claim")
        return Uri(raw=text, scheme="pvc", claim=claim, path=path)
    if text.startswith(("s3://", "gs://")):
        return Uri(raw=text, scheme=text[:2])
    if web:
        uri = Uri(raw=text, scheme="http")
        if not uri.basename:
            raise SpecError(f"{field_path}: {text!r} does not end in a file name")
        return uri
    return Uri(raw=text, scheme="path", path=text)


@dataclass(frozen=True)
class Autoscaling:
    """What to scale on: ``metric`` cpu uses ``target_cpu_utilization``; the others aim at ``target`` per replica
    (images waiting, requests in flight, or p90 queue wait in seconds), served to the HPA by the custom metrics
    API (``engine`` hpa) or by KEDA from ``prometheus_address`` (``engine`` keda)."""

    min_replicas: int
    max_replicas: int
    target_cpu_utilization: int
    metric: str = DEFAULT_METRIC
    target: float | None = None
    engine: str = DEFAULT_ENGINE
    prometheus_address: str | None = None


@dataclass(frozen=True)
class Step:
    """One step of a rollout: ``shadow`` mirrors ``percent`` of the stable revision's live calls to the new one;
    ``weight`` has the new revision serve ``percent`` of the live calls."""

    kind: str  # "shadow" | "weight"
    percent: int  # 1..100


@dataclass(frozen=True)
class Analysis:
    """What a step's figures must show for the rollout to go on (at each step's end, read from Prometheus)."""

    max_error_rate: float = DEFAULT_MAX_ERROR_RATE  # server errors / calls of the new revision
    max_latency_ratio: float = DEFAULT_MAX_LATENCY_RATIO  # p99(new) / p99(stable)
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # the shadow comparison's mean agreement (shadow steps)
    min_requests: int = DEFAULT_MIN_REQUESTS  # fewer calls per revision in a step: figures missing, the step holds


@dataclass(frozen=True)
class Gateway:
    """Also render Gateway API routes NAME (GRPCRoute and HTTPRoute) carrying the weights, attached to these
    parents (Gateway API ParentReferences, as given)."""

    parent_refs: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Rollout:
    """How a new revision replaces the stable one: ``steps`` of ``interval`` seconds, each judged by ``analysis``
    on figures from ``prometheus`` (None: the operator's --prometheus-url)."""

    steps: tuple[Step, ...] = tuple(Step(kind, percent) for kind, percent in DEFAULT_STEPS)  # the CRD's default
    interval: int = DEFAULT_INTERVAL
    prometheus: str | None = None
    analysis: Analysis = Analysis()
    gateway: Gateway | None = None


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the renderer needs, defaults applied, cross-field rules checked."""

    task: str
    model: Uri | None
    labels: Uri | None = None
    embeddings: Uri | None = None
    base_data: Uri | None = None
    gallery_batch_size: int = DEFAULT_GALLERY_BATCH_SIZE
    confidence: float = DEFAULT_CONFIDENCE
    iou: float = DEFAULT_IOU
    similarity: float = DEFAULT_SIMILARITY
    window: int | None = None
    top_k: int = DEFAULT_TOP_K
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    instances: int | None = None  # batches run at once per replica; None: the runtime's default for the task
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    workers: int = DEFAULT_WORKERS
    frontends: int = 1
    gpus: int = 0
    replicas: int = DEFAULT_REPLICAS
    autoscaling: Autoscaling | None = None
    image: str | None = None
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # empty: the operator's default
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    service_account_name: str | None = None  # the pod's ServiceAccount: cloud identity (IRSA, workload identity)
    rollout: Rollout | None = None  # None: a changed spec rolls out as one Deployment rolling update

    def uris(self) -> list[tuple[str, Uri]]:
        """(role, uri) for every file the runtime needs; the role names the flag and the download folder."""
        pairs = [("model", self.model), ("labels", self.labels), ("embeddings", self.embeddings),
                 ("base-data", self.base_data)]
        return [(role, uri) for role, uri in pairs if uri is not None]

    @property
    def min_replicas(self) -> int:
        return self.autoscaling.min_replicas if self.autoscaling else self.replicas

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else self.replicas


def validate_name(name: str) -> None:
    """Children are named after the resource, so its name must also be a valid Service name."""
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.match(name):
        raise SpecError(f"metadata.name {name!r} must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters "
                        "(lowercase letters, digits and '-', starting with a letter)")


def parse_spec(spec: Mapping[str, Any]) -> ServiceSpec:
    """Turn the raw ``spec`` of an InferenceService into a ``ServiceSpec``, or raise ``SpecError``."""
    reader = _Reader(spec)
    task = reader.string("task", required=True)
    if task not in TASKS:
        raise SpecError(f"spec.task: {task!r} is not one of {', '.join(TASKS)}")

    model = reader.uri("model")
    labels = reader.uri("labels")
    embeddings = reader.uri("embeddings")
    base_data = reader.uri("baseData")
    window = reader.integer("window", None, 1, 100_000)
    # The CRD defaults replicas to 1 (the scale subresource needs it), so with autoscaling only another value is wrong.
    replicas_given = spec.get("replicas") is not None and spec["replicas"] != DEFAULT_REPLICAS
    autoscaling = _autoscaling(reader)

    if model is None and task != "video":
        raise SpecError(f"spec.model.uri is required for task {task!r}")
    if task in LABELLED_TASKS and labels is None:
        raise SpecError(f"spec.labels.uri is required for task {task!r}")
    if task == "recognize" and (embeddings is None) == (base_data is None):
        raise SpecError("task 'recognize' needs exactly one gallery: spec.embeddings.uri or spec.baseData.uri")
    if task != "recognize" and (embeddings is not None or base_data is not None):
        raise SpecError("spec.embeddings and spec.baseData are only used by task 'recognize'")
    if window is not None and task != "stream-classify":
        raise SpecError("spec.window is only used by task 'stream-classify'")
    for role, uri in (("labels", labels), ("embeddings", embeddings)):
        if uri is not None and uri.is_folder:
            raise SpecError(f"spec.{role}.uri: {uri.raw!r} is a folder (a prefix ending in '/'); name one object")
    if base_data is not None and base_data.is_download and not (base_data.is_archive or base_data.is_folder):
        raise SpecError(f"spec.baseData.uri: a download must be an archive ({', '.join(ARCHIVE_SUFFIXES)}) or an "
                        "s3:// or gs:// folder ending in '/'")
    if replicas_given and autoscaling is not None:
        raise SpecError("spec.replicas stays at its default 1 when spec.autoscaling is set (the autoscaler sets the "
                        "replica count): drop spec.replicas or spec.autoscaling")
    frontends = reader.integer("grpc.frontends", 1, 1, 64)
    gpus = reader.integer("gpus", 0, 0, 16)
    image = reader.string("image") or None
    if gpus > 0 and model is not None and ONNX_MODEL.search(model.file or model.raw) and image is None:
        raise SpecError("spec.gpus: kubeinfer's runtime images run ONNX models on the CPU (their ONNX Runtime has no "
                        "CUDA provider): set gpus 0, serve a .pt or TorchScript model on GPUs, or name an image with "
                        "onnxruntime-gpu in spec.image")

    return ServiceSpec(
        task=task,
        model=model,
        labels=labels,
        embeddings=embeddings,
        base_data=base_data,
        gallery_batch_size=reader.integer("baseData.batchSize", DEFAULT_GALLERY_BATCH_SIZE, 1, 4096),
        confidence=reader.number("thresholds.confidence", DEFAULT_CONFIDENCE, 0.0, 1.0),
        iou=reader.number("thresholds.iou", DEFAULT_IOU, 0.0, 1.0),
        similarity=reader.number("thresholds.similarity", DEFAULT_SIMILARITY, -1.0, 1.0),
        window=window if window is not None or task != "stream-classify" else DEFAULT_WINDOW,
        top_k=reader.integer("topK", DEFAULT_TOP_K, 1, 1000),
        max_batch_size=reader.integer("batching.maxBatchSize", DEFAULT_MAX_BATCH_SIZE, 1, 1024),
        max_delay_ms=reader.number("batching.maxDelayMs", DEFAULT_MAX_DELAY_MS, 0.0, 10_000.0),
        instances=reader.integer("batching.instances", None, 1, 64),
        max_message_bytes=reader.integer("grpc.maxMessageBytes", DEFAULT_MAX_MESSAGE_BYTES, 1024, 2**31 - 1),
        workers=reader.integer("grpc.workers", DEFAULT_WORKERS, 1, 64),
        frontends=frontends,
        gpus=gpus,
        replicas=reader.integer("replicas", DEFAULT_REPLICAS, 0, 1000),
        autoscaling=autoscaling,
        image=image,
        resources={kind: dict(values) for kind, values in reader.mapping("resources").items() if values},
        node_selector={str(k): str(v) for k, v in reader.mapping("nodeSelector").items()},
        tolerations=[dict(t) for t in reader.sequence("tolerations")],
        env=[dict(e) for e in reader.sequence("env")],
        service_account_name=_service_account(reader.string("serviceAccountName")),
        rollout=_rollout(reader),
    )


def _service_account(name: str) -> str | None:
    if name and not SECRET_NAME_PATTERN.match(name):
        raise SpecError(f"spec.serviceAccountName: {name!r} is not a ServiceAccount name (a DNS subdomain)")
    return name or None


def parse_resources(text: str) -> dict[str, dict[str, Any]]:
    """A resources object given as JSON ({"requests": {...}, "limits": {...}}), e.g. the chart's defaults."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, dict) or not set(value) <= {"requests", "limits"}:
        raise ValueError('expected {"requests": {...}, "limits": {...}}')
    for kind, amounts in value.items():
        if not isinstance(amounts, dict) or not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                                    for v in amounts.values()):
            raise ValueError(f"{kind} must map resource names to quantities")
    return {kind: dict(amounts) for kind, amounts in value.items() if amounts}


def _autoscaling(reader: _Reader) -> Autoscaling | None:
    if not reader.mapping("autoscaling"):
        return None
    low = reader.integer("autoscaling.minReplicas", 1, 1, 1000)
    high = reader.integer("autoscaling.maxReplicas", None, 1, 1000)
    if high is None:
        raise SpecError("spec.autoscaling.maxReplicas is required")
    if low > high:
        raise SpecError(f"spec.autoscaling.minReplicas ({low}) must not exceed maxReplicas ({high})")
    metric = reader.string("autoscaling.metric") or DEFAULT_METRIC
    if metric not in METRICS:
        raise SpecError(f"spec.autoscaling.metric: {metric!r} is not one of {', '.join(METRICS)}")
    engine = reader.string("autoscaling.engine") or DEFAULT_ENGINE
    if engine not in ENGINES:
        raise SpecError(f"spec.autoscaling.engine: {engine!r} is not one of {', '.join(ENGINES)}")
    target = reader.optional_number("autoscaling.target")
    if target is not None and not 0 < target <= MAX_TARGET:
        raise SpecError(f"spec.autoscaling.target must be greater than 0 and at most {MAX_TARGET:g}, got {target}")
    address = reader.string("autoscaling.prometheus.address") or None
    if address is not None and not PROMETHEUS_PATTERN.match(address):
        raise SpecError(f"spec.autoscaling.prometheus.address: {address!r} is not an http(s):// URL")
    if metric == "cpu" and target is not None:
        raise SpecError("spec.autoscaling.target is for metrics queue, inflight and latency; "
                        "metric cpu uses targetCPUUtilization")
    if metric != "cpu" and target is None:
        raise SpecError(f"spec.autoscaling.target is required for metric {metric!r}")
    if engine == "keda" and metric == "cpu":
        raise SpecError("spec.autoscaling.engine keda scales on a Prometheus metric: set autoscaling.metric to "
                        "queue, inflight or latency")
    if engine == "keda" and address is None:
        raise SpecError("spec.autoscaling.prometheus.address is required when autoscaling.engine is keda")
    return Autoscaling(low, high, reader.integer("autoscaling.targetCPUUtilization", DEFAULT_TARGET_CPU, 1, 100),
                       metric=metric, target=target, engine=engine, prometheus_address=address)


def _rollout(reader: _Reader) -> Rollout | None:
    """spec.rollout: absent (or null) is no rollout; ``{}`` is the default rollout."""
    given = reader.mapping("rollout")
    if reader.spec.get("rollout") is None:
        return None
    steps = _steps(reader.sequence("rollout.steps"), given.get("steps") is not None)
    prometheus = reader.string("rollout.prometheus") or None
    if prometheus is not None and not PROMETHEUS_PATTERN.match(prometheus):
        raise SpecError(f"spec.rollout.prometheus: {prometheus!r} is not an http(s):// URL")
    analysis = Analysis(
        max_error_rate=reader.number("rollout.analysis.maxErrorRate", DEFAULT_MAX_ERROR_RATE, 0.0, 1.0),
        max_latency_ratio=reader.number("rollout.analysis.maxLatencyRatio", DEFAULT_MAX_LATENCY_RATIO, 1.0, None),
        min_agreement=reader.number("rollout.analysis.minAgreement", DEFAULT_MIN_AGREEMENT, 0.0, 1.0),
        min_requests=reader.integer("rollout.analysis.minRequests", DEFAULT_MIN_REQUESTS, 1, None),
    )
    gateway = reader.mapping("rollout.gateway")
    parent_refs = reader.sequence("rollout.gateway.parentRefs")
    if given.get("gateway") is not None and not 1 <= len(parent_refs) <= MAX_PARENT_REFS:
        raise SpecError(f"spec.rollout.gateway.parentRefs needs 1 to {MAX_PARENT_REFS} parents when gateway is set, "
                        f"got {len(parent_refs)}")
    return Rollout(
        steps=steps or Rollout().steps,
        interval=reader.integer("rollout.interval", DEFAULT_INTERVAL, 10, 3600),
        prometheus=prometheus,
        analysis=analysis,
        gateway=Gateway(tuple(_parent_ref(ref, i) for i, ref in enumerate(parent_refs))) if gateway else None,
    )


def _steps(raw: list[Mapping[str, Any]], given: bool) -> tuple[Step, ...]:
    """The steps in order: each exactly one of shadow or weight, every shadow before every weight, weights rising."""
    if given and not 1 <= len(raw) <= MAX_STEPS:
        raise SpecError(f"spec.rollout.steps needs 1 to {MAX_STEPS} steps, got {len(raw)}")
    steps: list[Step] = []
    for i, item in enumerate(raw):
        path = f"spec.rollout.steps[{i}]"
        kinds = [kind for kind in STEP_KINDS if item.get(kind) is not None]
        if len(kinds) != 1:
            raise SpecError(f"{path} needs exactly one of shadow and weight")
        (kind,) = kinds
        percent = item[kind]
        if isinstance(percent, bool) or not isinstance(percent, int):
            raise SpecError(f"{path}.{kind} must be an integer")
        if not 1 <= percent <= 100:
            raise SpecError(f"{path}.{kind} must be in 1..100, got {percent}")
        weights = [step.percent for step in steps if step.kind == "weight"]
        if kind == "shadow" and weights:
            raise SpecError(f"{path}: a shadow step must come before every weight step")
        if kind == "weight" and weights and percent <= weights[-1]:
            raise SpecError(f"{path}: weight {percent} must be greater than the step before's {weights[-1]}")
        steps.append(Step(kind, percent))
    return tuple(steps)


def _parent_ref(ref: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A Gateway API ParentReference, checked as Gateway API does; fields it does not have are dropped (the API
    server prunes them too)."""
    path = f"spec.rollout.gateway.parentRefs[{index}]"
    if ref.get("name") is None:
        raise SpecError(f"{path}.name is required")
    for key, (pattern, most) in PARENT_REF_STRINGS.items():
        value = _text(ref.get(key), f"{path}.{key}")
        if value is not None and (len(value) > most or (pattern is None and not value)
                                  or (pattern is not None and not pattern.match(value))):
            raise SpecError(f"{path}.{key}: {value!r} is not a Gateway API {key} (at most {most} characters"
                            + (f", matching {pattern.pattern})" if pattern else ", not empty)"))
    port = ref.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        raise SpecError(f"{path}.port must be an integer in 1..65535, got {port!r}")
    return {key: ref[key] for key in (*PARENT_REF_STRINGS, "port") if ref.get(key) is not None}


def _text(value: Any, path: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SpecError(f"{path} must be a string")
    return value


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if value is not None and not isinstance(value, Mapping):
        raise SpecError(f"{path} must be an object")
    return value or {}


def _storage(holder: Mapping[str, Any], parent: str, uri: Uri) -> Storage | None:
    """spec.PARENT.storage and .credentials: only for s3:// and gs://, each setting only where that store uses it."""
    place = _object(holder.get("storage"), f"spec.{parent}.storage")
    credentials = _object(holder.get("credentials"), f"spec.{parent}.credentials")
    if "storage" in holder or "credentials" in holder:
        if uri.scheme not in OBJECT_SCHEMES:
            raise SpecError(f"spec.{parent}: storage and credentials are for s3:// and gs:// uris")
        if "credentials" in holder and not credentials.get("secretName"):
            raise SpecError(f"spec.{parent}.credentials.secretName is required when credentials are set")
    endpoint = _text(place.get("endpoint"), f"spec.{parent}.storage.endpoint")
    region = _text(place.get("region"), f"spec.{parent}.storage.region")
    secret = _text(credentials.get("secretName"), f"spec.{parent}.credentials.secretName")
    key = _text(credentials.get("key"), f"spec.{parent}.credentials.key")
    for value, pattern, path in ((endpoint, ENDPOINT_PATTERN, "storage.endpoint"),
                                 (region, REGION_PATTERN, "storage.region"),
                                 (secret, SECRET_NAME_PATTERN, "credentials.secretName"),
                                 (key, SECRET_KEY_PATTERN, "credentials.key")):
        if value is not None and not pattern.match(value):
            raise SpecError(f"spec.{parent}.{path}: {value!r} must match {pattern.pattern}")
    if region is not None and uri.scheme != "s3":
        raise SpecError(f"spec.{parent}.storage.region is for s3:// uris")
    if key is not None and uri.scheme != "gs":
        raise SpecError(f"spec.{parent}.credentials.key (a service-account JSON's key) is for gs:// uris")
    if uri.scheme not in OBJECT_SCHEMES:
        return None
    return Storage(endpoint=endpoint, region=region, secret_name=secret, secret_key=key)


class _Reader:
    """Typed, bounds-checked access to dotted paths of the raw spec, with 'spec.' in every error."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if not isinstance(spec, Mapping):
            raise SpecError("spec must be an object")
        self.spec = spec

    def _get(self, path: str) -> Any:
        node: Any = self.spec
        parts = path.split(".")
        for i, part in enumerate(parts):
            if node is None:
                return None
            if not isinstance(node, Mapping):
                raise SpecError(f"spec.{'.'.join(parts[:i])} must be an object")
            node = node.get(part)
        return node

    def string(self, path: str, required: bool = False) -> str:
        value = self._get(path)
        if value is None:
            if required:
                raise SpecError(f"spec.{path} is required")
            return ""
        if not isinstance(value, str):
            raise SpecError(f"spec.{path} must be a string")
        return value

    def uri(self, parent: str) -> Uri | None:
        holder = self._get(parent)
        if holder is None:
            return None
        if not isinstance(holder, Mapping) or not holder.get("uri"):
            raise SpecError(f"spec.{parent}.uri is required when spec.{parent} is set")
        uri = parse_uri(holder["uri"], f"spec.{parent}.uri")
        storage = _storage(holder, parent, uri)
        file = _text(holder.get("file"), f"spec.{parent}.file") if parent == "model" else None
        if parent == "model" and (file is not None) != uri.is_folder:
            raise SpecError("spec.model.file names the model file inside a folder (an s3:// or gs:// uri ending in "
                            "'/'): set both or neither")
        if file is not None and (not MODEL_FILE_PATTERN.match(file) or ".." in file.split("/")):
            raise SpecError(f"spec.model.file: {file!r} is not a relative path inside the folder")
        return replace(uri, storage=storage, file=file)

    def integer(self, path: str, default: int | None, low: int, high: int | None) -> Any:
        """An integer in low..high (no upper bound when high is None)."""
        value = self._get(path)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"spec.{path} must be an integer")
        if high is None and value < low:
            raise SpecError(f"spec.{path} must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise SpecError(f"spec.{path} must be in {low}..{high}, got {value}")
        return value

    def number(self, path: str, default: float, low: float, high: float | None) -> float:
        """A number in [low, high] (no upper bound when high is None)."""
        value = self._get(path)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"spec.{path} must be a number")
        if high is None and value < low:
            raise SpecError(f"spec.{path} must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise SpecError(f"spec.{path} must be in [{low}, {high}], got {value}")
        return float(value)

    def optional_number(self, path: str) -> float | None:
        value = self._get(path)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"spec.{path} must be a number")
        return float(value)

    def mapping(self, path: str) -> dict[str, Any]:
        value = self._get(path)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise SpecError(f"spec.{path} must be an object")
        return dict(value)

    def sequence(self, path: str) -> list[Mapping[str, Any]]:
        value = self._get(path)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            raise SpecError(f"spec.{path} must be a list of objects")
        return value
