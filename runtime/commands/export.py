"""Export a YOLO .pt detector to ONNX ahead of time, so the cpu runtime image (no torch) can serve it.

The operator runs this as an init container from the gpu image (the one with torch) when an InferenceService
without GPUs names a .pt detector: the export lands in the pod's emptyDir (or a cache volume, by the model's
sha256) and the cpu image's `kubeinfer serve` runs it on ONNX Runtime. The export is loaded and run once
before it is written, so a model that cannot be served fails here, in one line, and not in the runtime.

    kubeinfer export MODEL.pt --out DIR/model.onnx [--image-size N] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the ultralytics .pt detector (detect or segment)")
    parser.add_argument("--out", type=Path, required=True, help="the ONNX file to write (its folder is made)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size to export for (default: the size it was trained at)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep exports here by the model's sha256, so pods sharing the folder export once "
                             "(default: none)")


class ExportError(Exception):
    """One line for the user (and the init container's termination message)."""


def run(args: argparse.Namespace) -> int:
    try:
        print(export(args.model, args.out, args.image_size, args.cache_dir), flush=True)
    except ExportError as exc:
        print(f"kubeinfer export: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def export(model: Path, out: Path, image_size: int | None, cache_dir: Path | None) -> str:
    """Export ``model`` to ``out`` (atomically); the line that reports it."""
    from kubeinfer.runtime.digests import sha256_of
    from kubeinfer.runtime.models.backend import EXPORTABLE_SUFFIXES, onnx_export, torch_available

    started = time.monotonic()
    if not model.is_file():
        raise ExportError(f"{model}: no such file")
    if model.suffix.lower() not in EXPORTABLE_SUFFIXES:
        raise ExportError(f"{model.name}: only ultralytics .pt detectors are exported (ONNX files need no export)")
    if not torch_available():
        raise ExportError("exporting needs torch, which this runtime does not have: run `kubeinfer export` from the "
                          "gpu image")
    with tempfile.TemporaryDirectory(prefix="kubeinfer-export-") as scratch:
        try:
            exported = onnx_export(model, cache_dir or Path(scratch), image_size)
        except Exception as exc:
            raise ExportError(f"cannot export {model.name} to ONNX: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}") from exc
        detector = _serves(exported)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.with_name(f".{out.name}.partial")
        shutil.copyfile(exported, staging)
        os.replace(staging, out)
    return (f"kubeinfer export: {model.name} -> {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 "
            f"{sha256_of(out)[:12]}, {len(detector.names)} classes, {detector.image_size} px"
            f"{', segmentation' if detector.segmentation else ''}) in {time.monotonic() - started:.1f} s")


def _serves(exported: Path) -> object:
    """The export loaded and run as the cpu image will run it (its warm-up is one forward pass)."""
    from kubeinfer.runtime.errors import StartupError
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

    try:
        return YoloOnnxDetector(exported, "cpu", None)
    except StartupError as exc:
        raise ExportError(f"the export does not serve: {exc}") from None

