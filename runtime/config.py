"""The runtime's settings: every `kubeinfer serve` flag, its KUBEINFER_<FLAG> environment default, validation.

The flags every runtime has are declared here; a task (or the kind of model it serves) declares its own as
``Flag``s in its module, and ``ServeConfig.flag`` reads them. Imports nothing of the runtime but ``cpus``
(stdlib only, for the thread defaults): the CLI wiring, with every registered task's flags, is
``kubeinfer.runtime.commands.serve``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from kubeinfer.runtime.cpus import default_instances, thread_budget, usable_cpus

T = TypeVar("T")
BACKENDS = ("auto", "torch", "onnx")
DECODE_DEVICES = ("auto", "cpu", "model")
DEFAULT_TASK = "detect"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # about 6300 x 6300: well above any camera, well below a decompression bomb
DEFAULT_MAX_REQUEST_PIXELS = 200_000_000  # 5 of the largest images, or 200 full-HD frames: 600 MB decoded


class ConfigError(ValueError):
    """A start-up setting is wrong; the runtime prints the message as one line and exits non-zero."""


@dataclass(frozen=True)
class Flag(Generic[T]):
    """A serve flag declared by the module that reads it (a task, or a kind of model): ``--NAME``, its
    KUBEINFER_NAME environment default, its type, and ``check``, which says what is wrong with a value (None: it
    is fine). The same flag declared by two tasks is one ``Flag`` object both list."""

    name: str
    kind: Callable[[str], T]
    default: T | None
    help: str
    group: str  # its section of --help
    check: Callable[[T], str | None] | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def attribute(self) -> str:
        return self.name.replace("-", "_")

    def problem(self, value: Any) -> str | None:
        return None if self.check is None or value is None else self.check(value)


def at_least(low: float, flag: str) -> Callable[[float], str | None]:
    """A check: ``--flag`` must be ``low`` or more."""
    return lambda value: None if value >= low else f"--{flag} must be at least {low:g}"


def within(low: float, high: float, flag: str, span: str = "") -> Callable[[float], str | None]:
    """A check: ``--flag`` must be in [low, high] (``span``: how the message writes the range)."""
    span = span or f"[{low:g}, {high:g}]"
    return lambda value: None if low <= value <= high else f"--{flag} must be in {span}"


def existing(flag: str) -> Callable[[Path], str | None]:
    """A check: the path ``--flag`` names exists."""
    return lambda path: None if path.exists() else f"--{flag} {path}: no such file or directory"


@dataclass(frozen=True)
class ServeConfig:
    """Validated runtime settings, built once at start."""

    task: str
    model: Path | None
    model_name: str
    device: str
    decode_device: str
    host: str
    grpc_port: int
    http_port: int
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_size: int
    max_message_bytes: int
    max_images_per_request: int
    max_request_pixels: int
    max_inflight_bytes: int
    workers: int
    frontends: int
    frontend_queue_size: int
    model_instances: int
    model_threads: int
    model_spinning: str
    backend: str
    torchscript_optimize: bool
    cache_dir: Path
    grace_period: float
    shutdown_delay: float
    http_keepalive_timeout: float
    http_body_timeout: float
    grpc_max_connection_idle: float
    grpc_max_connection_age: float
    grpc_max_connection_age_grace: float
    grpc_min_ping_interval: float
    image_size: int | None
    max_image_pixels: int
    labels: Path | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    channel_order: str | None
    resize_mode: str | None
    log_level: str
    traffic_file: Path | None
    revision: str
    # the declared flags' values by attribute name (``flag`` reads them)
    flags: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, flags: Sequence[Flag[Any]] = ()) -> ServeConfig:
        """The settings from parsed arguments; ``flags``: the declared flags they hold the values of."""
        values: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(cls) if f.name != "flags"}
        values["flags"] = {flag.attribute: getattr(args, flag.attribute) for flag in flags}
        values["model_name"] = values["model_name"] or values["task"]
        cpus = usable_cpus()
        if values["model_instances"] is None:
            engine = expected_engine(values["model"], detector_backend(values["backend"], values["decode_device"]))
            values["model_instances"] = default_instances(values["task"], values["device"], cpus, engine)
        if values["model_threads"] is None:  # the usable CPUs (less the frontends') shared between the instances
            values["model_threads"] = thread_budget(cpus, values["model_instances"], values["frontends"]).model_threads
        config = cls(**values)
        config.validate(flags)
        return config

    def flag(self, flag: Flag[T]) -> T:
        """The value of a flag a task or a kind of model declared."""
        try:
            return self.flags[flag.attribute]  # type: ignore[no-any-return]
        except KeyError:
            raise ConfigError(f"--{flag.name} is no flag of this runtime (no registered task declares it)") from None

    def validate(self, flags: Sequence[Flag[Any]] = ()) -> None:
        """Reject settings that cannot work, with a message naming the flag; ``flags``: the declared ones."""
        checks: list[tuple[bool, str]] = [
            (self.max_batch_size >= 1, "--max-batch-size must be at least 1"),
            (self.max_batch_delay_ms >= 0, "--max-batch-delay-ms must be >= 0"),
            (self.max_queue_size >= self.max_batch_size, "--max-queue-size must be >= --max-batch-size"),
            (self.max_message_bytes >= 1024, "--max-message-bytes must be at least 1024"),
            (self.max_images_per_request >= 1, "--max-images-per-request must be at least 1"),
            (self.max_request_pixels >= 1, "--max-request-pixels must be positive"),
            (self.max_inflight_bytes >= self.max_message_bytes,
             "--max-inflight-bytes must be at least --max-message-bytes"),
            (self.workers >= 1, "--workers must be at least 1"),
            (self.frontends >= 1, "--frontends must be at least 1"),
            (self.frontend_queue_size >= self.max_batch_size, "--frontend-queue-size must be >= --max-batch-size"),
            (self.frontends == 1 or (self.grpc_port > 0 and self.http_port > 0),
             "--frontends > 1 needs fixed --grpc-port and --http-port (the frontends share them; 0 would give "
             "each frontend ports of its own)"),
            (self.model_instances >= 1, "--model-instances must be at least 1"),
            (self.model_threads >= 1, "--model-threads must be at least 1"),
            (self.backend in BACKENDS, f"--backend must be one of {', '.join(BACKENDS)}"),
            (self.decode_device in DECODE_DEVICES, f"--decode-device must be one of {', '.join(DECODE_DEVICES)}"),
            (self.grace_period >= 0 and self.shutdown_delay >= 0, "--grace-period and --shutdown-delay must be >= 0"),
            (self.http_keepalive_timeout > 0 and self.http_body_timeout > 0,
             "--http-keepalive-timeout and --http-body-timeout must be positive"),
            (min(self.grpc_max_connection_idle, self.grpc_max_connection_age, self.grpc_max_connection_age_grace,
                 self.grpc_min_ping_interval) >= 0, "the --grpc-* connection settings must be >= 0"),
            (self.image_size is None or 32 <= self.image_size <= 4096, "--image-size must be in 32..4096"),
            (self.max_image_pixels >= 1, "--max-image-pixels must be positive"),
            (0 <= self.grpc_port <= 65535 and 0 <= self.http_port <= 65535, "ports must be in 0..65535"),
            (self.device == "cpu" or self.device.startswith("cuda"), "--device must be cpu, cuda or cuda:N"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for name, path in (("--model", self.model), ("--labels", self.labels)):
            if path is not None and not path.exists():
                raise ConfigError(f"{name} {path}: no such file or directory")
        for declared in flags:
            problem = declared.problem(self.flags.get(declared.attribute))
            if problem is not None:
                raise ConfigError(problem)


def _env_default(name: str, default: Any, kind: Any) -> Any:
    raw = os.environ.get("KUBEINFER_" + name.upper().replace("-", "_"))
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"kubeinfer: KUBEINFER_{name.upper().replace('-', '_')}={raw!r}: {exc}") from None


def _triple(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.replace(",", " ").split()]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("expected three numbers, e.g. 0.485,0.456,0.406")
    return (parts[0], parts[1], parts[2])


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


SPINNING = ("off", "run", "always")


def detector_backend(backend: str, decode_device: str) -> str:
    """The --backend a detector loads with: JPEGs decoded in the batch step (--decode-device model) need torch on
    the model's device, so ``auto`` means torch then."""
    return "torch" if backend == "auto" and decode_device == "model" else backend


def expected_engine(model: Path | None, backend: str) -> str:
    """The engine a model file will run on, before loading it: onnx for an ONNX file or a ``.pt`` that
    ``--backend auto|onnx`` exports (an ``auto`` export that fails falls back to torch at load, with a log
    line), else torch."""
    if model is None:
        return "none"
    suffix = model.suffix.lower()
    return "onnx" if suffix == ".onnx" or (suffix == ".pt" and backend != "torch") else "torch"


def _spinning(text: str) -> str:
    lowered = text.strip().lower()
    if lowered in SPINNING:
        return lowered
    try:
        return "always" if _boolean(lowered) else "off"
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(SPINNING)}, got {text!r}") from None


def _default_cache_dir() -> Path:
    """Where exported models are kept: $XDG_CACHE_HOME (else ~/.cache)/kubeinfer; in the runtime image and
    the operator's pods HOME is /tmp, an emptyDir under the read-only root filesystem."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubeinfer"


def add_arguments(parser: argparse.ArgumentParser, tasks: Sequence[str] = (DEFAULT_TASK,),
                  flags: Sequence[Flag[Any]] = ()) -> None:
    """Declare every serve flag, each defaulting to its KUBEINFER_<FLAG> environment variable: the common ones,
    ``--task`` (one of ``tasks``) and the ``flags`` tasks declared (each once)."""

    core = parser.add_argument_group("model and task")
    flag_core = _grouped(core)
    flag_core("task", str, DEFAULT_TASK, "what to serve", choices=list(tasks))
    flag_core("model", Path, None, "model file: ultralytics .pt, TorchScript, or ONNX")
    flag_core("model-name", str, None,
              "name reported to clients and metrics; the InferenceService name (default: the task)")
    flag_core("device", str, "cpu", "cpu, cuda or cuda:N")
    flag_core("decode-device", str, "auto",
              "detect: where JPEGs are decoded and letterboxed: model (in the batch step on the model's device, "
              "nvJPEG on CUDA), cpu (OpenCV in the worker pool), or auto (model when --device is CUDA, else cpu); "
              "other formats and raw pixels always take the CPU path", choices=list(DECODE_DEVICES))
    flag_core("backend", str, "auto",
              "how a YOLO .pt detector runs: onnx (exported at start into --cache-dir, once per model hash), "
              "torch, or auto (onnx on CPU when the export works, else torch)", choices=list(BACKENDS))
    flag_core("torchscript-optimize", _boolean, True,
              "classify/recognize: freeze a TorchScript model and optimize it for inference at load (kept only "
              "when it answers a test batch as the model as loaded does); false runs the model as loaded")
    flag_core("cache-dir", Path, _default_cache_dir(), "writable directory for models exported at start")
    flag_core("image-size", int, None, "square model input side in pixels (default: from the model, else 640)")
    flag_core("max-image-pixels", int, DEFAULT_MAX_IMAGE_PIXELS,
              "refuse images with more pixels (decompression-bomb guard)")

    serving = parser.add_argument_group("serving")
    flag_serving = _grouped(serving)
    flag_serving("host", str, "127.0.0.1", "address to listen on (0.0.0.0 in a container)")
    flag_serving("grpc-port", int, 8001, "gRPC port")
    flag_serving("http-port", int, 8080, "HTTP port: REST API, /healthz, /readyz, /metrics")
    flag_serving("max-batch-size", int, 16, "most images the batcher hands the model at once")
    flag_serving("max-batch-delay-ms", float, 2.0, "longest time the first image of a batch waits for company")
    flag_serving("max-queue-size", int, 1024,
                 "images waiting for the model before requests are refused (RESOURCE_EXHAUSTED)")
    flag_serving("max-message-bytes", int, DEFAULT_MAX_MESSAGE_BYTES, "largest gRPC/HTTP message accepted or sent")
    flag_serving("max-images-per-request", int, 256, "most images in one request (more: RESOURCE_EXHAUSTED / 413)")
    flag_serving("max-request-pixels", int, DEFAULT_MAX_REQUEST_PIXELS,
                 "most pixels of all a request's images together, read from their headers before decoding "
                 "(more: RESOURCE_EXHAUSTED / 413)")
    flag_serving("max-inflight-bytes", int, 4 * DEFAULT_MAX_MESSAGE_BYTES,
                 "most request bytes being served at once, over both transports (more: RESOURCE_EXHAUSTED / 429)")
    budget = thread_budget(usable_cpus())
    flag_serving("workers", int, budget.workers,
                 "threads decoding images and doing pre/post-processing (default: from the usable CPUs, which "
                 "the affinity mask and the cgroup CPU quota give)")
    flag_serving("frontends", int, 1,
                 "processes doing transport and each request's own work (decoding, stream windows, video "
                 "pipelines) on the same ports (SO_REUSEPORT), feeding one model process through shared memory; "
                 "1 serves everything in one process")
    flag_serving("frontend-queue-size", int, 64,
                 "with --frontends > 1: images each frontend may have waiting for the model (its shared-memory "
                 "slots, --frontends x this x the model's input in /dev/shm) before it refuses requests "
                 "(RESOURCE_EXHAUSTED)")
    flag_serving("model-instances", int, None,
                 "batches the model runs at once, each in a thread of its own taking them from the one queue "
                 "(Triton's instance count; the weights are loaded once and shared)",
                 shown="2 for detect through ONNX Runtime on 2 or more usable CPUs, else 1")
    flag_serving("model-threads", int, None,
                 "the model's intra-op threads per instance, torch and ONNX Runtime",
                 shown="the usable CPUs divided between the instances; with --frontends > 1 less one per frontend")
    flag_serving("model-spinning", _spinning, "run",
                 "ONNX Runtime's intra-op threads busy-wait for work: run (while a batch runs, stopping when it "
                 "ends), always (between batches too: lower latency on dedicated cores, stolen cycles on shared "
                 "ones) or off (they sleep between parallel sections); true/false mean always/off")
    flag_serving("grace-period", float, 20.0, "seconds in-flight requests get to finish after SIGTERM")
    flag_serving("shutdown-delay", float, 2.0,
                 "seconds after SIGTERM during which health says NOT_SERVING but requests are still accepted, "
                 "so load balancers stop routing here first")
    flag_serving("log-level", str, "info", "debug, info, warning or error")

    rollout = parser.add_argument_group("progressive rollout")
    flag_rollout = _grouped(rollout)
    flag_rollout("traffic-file", Path, None,
                 "the rollout's traffic table (JSON, the operator's NAME-traffic ConfigMap), re-read when it changes: "
                 "GetModelInfo serves it, and a replica of its stable revision mirrors its shadowPercent of calls to "
                 "the candidate")
    flag_rollout("revision", str, "", "this replica's revision (the pod's kubeinfer.io/revision label)")

    connections = parser.add_argument_group("connections")
    flag_conn = _grouped(connections)
    flag_conn("http-keepalive-timeout", float, 75.0,
              "seconds an idle HTTP connection stays open; also the longest a request's headers may take")
    flag_conn("http-body-timeout", float, 60.0,
              "seconds a request body may take to arrive, from its headers on (slower: 408)")
    flag_conn("grpc-max-connection-idle", float, 0.0,
              "seconds without calls after which a gRPC connection is closed (GOAWAY); 0: never")
    flag_conn("grpc-max-connection-age", float, 0.0,
              "seconds after which a gRPC connection is closed, so clients reconnect and rebalance; 0: never")
    flag_conn("grpc-max-connection-age-grace", float, 30.0,
              "seconds calls on a connection past its age get to finish before it is closed")
    flag_conn("grpc-min-ping-interval", float, 10.0,
              "fewest seconds between client keep-alive pings; faster pingers are sent GOAWAY")

    images = parser.add_argument_group("labels and preprocessing (image models)")
    flag_images = _grouped(images)
    flag_images("labels", Path, None, "labels file: .txt, .json, .csv, or one-hot .npy/.csv")
    flag_images("mean", _triple, None, "per-channel mean for normalisation (default from sidecar, else ImageNet)")
    flag_images("std", _triple, None, "per-channel std for normalisation (default from sidecar, else ImageNet)")
    flag_images("channel-order", str, None, "rgb or bgr model input (default from sidecar, else rgb)",
                choices=["rgb", "bgr"])
    flag_images("resize-mode", str, None, "stretch, letterbox or center-crop (default from sidecar, else stretch)",
                choices=["stretch", "letterbox", "center-crop"])

    groups: dict[str, Any] = {}
    for declared in flags:
        if declared.group not in groups:
            groups[declared.group] = _grouped(parser.add_argument_group(declared.group))
        extra = {"choices": list(declared.choices)} if declared.choices is not None else {}
        groups[declared.group](declared.name, declared.kind, declared.default, declared.help, **extra)


def _grouped(group: argparse._ArgumentGroup) -> Any:
    """A flag declarer for one argument group, so --help lists flags by topic."""

    def bound(name: str, kind: Any, default: Any, help_text: str, shown: str | None = None, **extra: Any) -> None:
        """``shown``: how --help names a default that is worked out at start (None: the value, or "unset")."""
        env = "KUBEINFER_" + name.upper().replace("-", "_")
        shown = shown or ("unset" if default is None else default)
        group.add_argument(f"--{name}", type=kind, default=_env_default(name, default, kind),
                           help=f"{help_text} (default {shown}; env {env})", **extra)

    return bound
