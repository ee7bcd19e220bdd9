"""Which runtime image and engine serve an InferenceService. Pure: from the spec alone, before any pod exists.

The lean cpu image (ONNX Runtime, no torch, ~0.5 GB) wherever ONNX Runtime can run the model; the gpu image
(torch, ~7 GB) where only torch can, or where GPUs are asked for:

| the spec                                                  | image                        | engine         |
| --------------------------------------------------------- | ---------------------------- | -------------- |
| ``gpus > 0``                                              | gpu                          | torch          |
| a model only torch loads: TorchScript, or a ``.pt``       | gpu                          | torch          |
| classifier or encoder (classify, stream, recognize)       |                              |                |
| a ``.pt`` detector (detect, video) without GPUs           | cpu, exported first by an    | onnx           |
|                                                           | init container (gpu image)   |                |
| an ``.onnx`` model                                        | cpu                          | onnx           |
| video without a model (OpenCV operations only)            | cpu                          | none           |
| ``spec.image`` set                                        | that image (``custom``)      | as serve picks |

The engine is what the runtime will run, as ``kubeinfer serve`` decides it from the same file and flags (a ``.pt``
detector in a custom image on the CPU is exported at start, ``--backend auto``). An operator given the same image
for both (one image for everything, as before the cpu image existed) runs that image for every spec, as it would
run a custom one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from kubeinfer.operator.spec import ServiceSpec

DETECTOR_TASKS = ("detect", "video")
EXPORTABLE = (".pt",)  # ultralytics checkpoints `kubeinfer export` turns into ONNX
ONNX = ".onnx"


@dataclass(frozen=True)
class RuntimeChoice:
    """The image a spec's pods run and the engine that will run its model; ``export_image``: the image of the
    init container that exports the model to ONNX first (None: no export)."""

    image: str
    variant: str  # cpu | gpu | custom
    engine: str  # onnx | torch | none
    export_image: str | None = None

    def status(self) -> dict[str, str]:
        """As the InferenceService's status reports it (``status.runtime``)."""
        reported = {"image": self.image, "variant": self.variant, "engine": self.engine}
        if self.export_image:
            reported["exportedBy"] = self.export_image
        return reported


def model_suffix(spec: ServiceSpec) -> str:
    """The model file's suffix, lower case ("" for a spec without a model or a file without one)."""
    if spec.model is None:
        return ""
    name = spec.model.basename if spec.model.is_download else PurePosixPath(spec.model.path).name
    return PurePosixPath(name).suffix.lower()


def choose_runtime(spec: ServiceSpec, cpu_image: str, gpu_image: str) -> RuntimeChoice:
    """The image and engine for ``spec`` (the table in the module docstring)."""
    suffix = model_suffix(spec)
    exportable_detector = spec.task in DETECTOR_TASKS and suffix in EXPORTABLE
    if spec.image or cpu_image == gpu_image:  # one image that decides for itself at start
        engine = "none" if spec.model is None else (
            "onnx" if suffix == ONNX or (exportable_detector and spec.gpus == 0) else "torch")
        return RuntimeChoice(spec.image, "custom", engine) if spec.image else RuntimeChoice(gpu_image, "gpu", engine)
    if spec.model is None:
        return RuntimeChoice(gpu_image, "gpu", "none") if spec.gpus > 0 else RuntimeChoice(cpu_image, "cpu", "none")
    if spec.gpus > 0 or (suffix != ONNX and not exportable_detector):
        return RuntimeChoice(gpu_image, "gpu", "onnx" if suffix == ONNX else "torch")
    if exportable_detector:
        return RuntimeChoice(cpu_image, "cpu", "onnx", export_image=gpu_image)
    return RuntimeChoice(cpu_image, "cpu", "onnx")
