"""Train the small demo detector (filled rectangles on blurred noise), offline, in about two minutes on two CPU
cores; optionally export it.

    kubeinfer demo --out .cache/models/detector.pt [--segment] [--export onnx]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="where to write the weights (.pt); kept if present")
    parser.add_argument("--segment", action="store_true", help="train a segmentation model (masks)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    parser.add_argument("--export", choices=["onnx", "torchscript"], action="append", default=[],
                        help="also export to this format (repeatable)")


def run(args: argparse.Namespace) -> int:
    from kubeinfer.runtime.demo_models import export_model, train_detector  # ultralytics and torch: only now

    weights = train_detector(args.out, segment=args.segment, epochs=args.epochs)
    print(weights)
    for fmt in args.export:
        print(export_model(weights, fmt))
    return 0
