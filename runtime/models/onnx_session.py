"""ONNX Runtime sessions as the runtime opens them: the thread budget, the device's providers, and the metadata
exporters (ultralytics) write into a file. No torch."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.models.threads import ort_session_options

# Metadata values ultralytics writes as Python literals (the rest are plain strings or integers).
LITERAL_KEYS = ("imgsz", "names", "args", "end2end", "kpt_shape")
INTEGER_KEYS = ("stride", "batch", "channels")


def open_session(path: Path, device: str, threads: int | None = None) -> Any:
    """An inference session for ``path`` on ``device`` with this process's thread settings (``threads`` intra-op
    threads instead of the per-instance budget, for a batch that has the model to itself)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), ort_session_options(threads), providers=providers_for(device))


def read_metadata(session: Any, path: Path) -> dict[str, Any]:
    """The ultralytics metadata of an ONNX file, values parsed; empty for a file without any."""
    metadata: dict[str, Any] = dict(session.get_modelmeta().custom_metadata_map)
    for key in metadata.keys() & (set(LITERAL_KEYS) | set(INTEGER_KEYS)):
        try:
            metadata[key] = int(metadata[key]) if key in INTEGER_KEYS else ast.literal_eval(metadata[key])
        except (ValueError, SyntaxError) as exc:
            raise StartupError(f"{path}: metadata {key!r} is not readable: {metadata[key][:80]!r}") from exc
    return metadata


def providers_for(device: str) -> list[Any]:
    """ONNX Runtime's execution providers for ``device`` (cpu, cuda, cuda:N)."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise StartupError(f"--device {device}: this ONNX Runtime has no CUDA provider (onnxruntime-gpu); serve a "
                           ".pt model with --backend torch instead")
    index = int(device.split(":")[1]) if ":" in device else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


