"""Which engine runs a YOLO ``.pt`` detector: torch as loaded, or ONNX Runtime on an export made at start.

ONNX Runtime runs these detectors 2.6-4x faster than torch on CPU (measured in issue 15), so ``auto`` prefers
it on CPU whenever the export works; no timed comparison at start: it would cost seconds at every start and,
on cores shared with other work, measure the neighbours more than the engines. On a GPU ``auto`` keeps torch
(the ONNX Runtime in the image has no CUDA provider). Any export failure falls back to torch with a log line.

The export is cached in ``cache_dir``, keyed by the model file's sha256 and the requested input size, so it
happens once per model: the file is copied into a private temporary directory (ultralytics writes the export
beside its source, which may be read-only) and the result moved into place atomically.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kubeinfer.runtime.digests import sha256_of
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.models.offline import prepare_offline_ultralytics

log = logging.getLogger(__name__)
EXPORTABLE_SUFFIXES = (".pt",)


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The file to load and the engine that runs it (``torch`` or ``onnx``)."""

    path: Path
    backend: str


def torch_available() -> bool:
    """Whether this runtime has torch: the gpu image and a development install do, the lean cpu image does not."""
    return importlib.util.find_spec("torch") is not None


def require_torch(model: Path) -> None:
    """Fail the start with one line where a model needs torch and this runtime has none."""
    if not torch_available():
        raise StartupError(f"{model.name} needs torch, which this runtime does not have (the cpu image serves ONNX "
                           "models): serve it with the gpu image, or export it first with `kubeinfer export`")


def choose_backend(model: Path, requested: str, device: str, cache_dir: Path, image_size: int | None) -> BackendChoice:
    """The model file and engine for ``--backend requested``; ``onnx`` fails the start when no export is possible,
    ``auto`` falls back to torch."""
    native = "onnx" if model.suffix.lower() == ".onnx" else "torch"
    if requested == "torch" or model.suffix.lower() not in EXPORTABLE_SUFFIXES:
        if native == "torch":
            require_torch(model)
        return BackendChoice(model, native)
    require_torch(model)  # the export needs it too
    if requested == "auto" and device != "cpu":
        return BackendChoice(model, "torch")
    try:
        return BackendChoice(onnx_export(model, cache_dir, image_size), "onnx")
    except Exception as exc:
        if requested == "onnx":
            raise StartupError(f"--backend onnx: cannot export {model.name} to ONNX: {type(exc).__name__}: {exc}") \
                from exc
        log.warning("--backend auto: serving %s with torch; the ONNX export failed: %s: %s", model.name,
                    type(exc).__name__, exc)
        return BackendChoice(model, "torch")


def onnx_export(model: Path, cache_dir: Path, image_size: int | None) -> Path:
    """The cached ONNX export of ``model`` (dynamic batch, the trained input size unless ``image_size``)."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:  # ultralytics would try to pip-install them: never at run time
        raise RuntimeError(f"{' and '.join(missing)} not installed")
    target = cache_dir / "onnx" / f"{sha256_of(model)}-{image_size or 'trained'}.onnx"
    if target.is_file():
        log.info("ONNX export of %s from the cache: %s", model.name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    prepare_offline_ultralytics()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as work:
        source = Path(work) / "model.pt"
        shutil.copyfile(model, source)
        yolo = YOLO(str(source))  # the task (detect, segment) comes from the checkpoint
        size = image_size or int(max(_as_list(yolo.model.args.get("imgsz", 640))))
        simplify = importlib.util.find_spec("onnxslim") is not None  # else ultralytics would try to install it
        exported = Path(yolo.export(format="onnx", imgsz=size, dynamic=True, simplify=simplify, verbose=False))
        exported.replace(target)  # atomic within the cache dir: concurrent starts never see half a file
    log.info("exported %s to ONNX for ONNX Runtime: %s", model.name, target)
    return target




def _as_list(value: object) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]  # type: ignore[call-overload]
