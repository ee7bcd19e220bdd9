"""Send images to a running runtime and print the results as JSON.

The RPC follows the task the runtime reports (GetModelInfo), e.g.
    kubeinfer predict --target 127.0.0.1:8001 a.jpg b.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, BMP)")
    parser.add_argument("--target", default="127.0.0.1:8001", help="runtime gRPC address (default 127.0.0.1:8001)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds (default 60)")
    parser.add_argument("--confidence", type=float, help="detect: minimum score")
    parser.add_argument("--iou", type=float, help="detect: NMS IoU threshold")
    parser.add_argument("--masks", action="store_true", help="detect: return segmentation polygons")
    parser.add_argument("--threshold", type=float, help="recognize: cosine similarity for a known match, in [-1, 1]")
    parser.add_argument("--top-k", type=int, help="labels returned per image (default: the runtime's --top-k)")


def run(args: argparse.Namespace) -> int:
    import grpc

    from kubeinfer.clients import Client

    unreadable = [path for path in args.images if not os.access(path, os.R_OK) or os.path.isdir(path)]
    if unreadable:
        print(f"kubeinfer predict: cannot read {', '.join(map(str, unreadable))}", file=sys.stderr)
        return 2
    with Client(args.target, timeout=args.timeout) as client:
        try:
            task = client.model_info().task
            if task == "detect":
                results = client.detect(args.images, confidence=args.confidence, iou=args.iou,
                                        return_masks=args.masks)
            elif task in ("classify", "stream-classify"):
                results = client.classify(args.images, top_k=args.top_k)
            elif task == "recognize":
                results = client.recognize(args.images, threshold=args.threshold, top_k=args.top_k)
            else:
                print(f"kubeinfer predict: the runtime serves {task!r}, which predict does not call", file=sys.stderr)
                return 2
        except grpc.RpcError as exc:
            print(f"kubeinfer predict: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    output = [{"image": str(path), **dataclasses.asdict(result)} for path, result in zip(args.images, results,
                                                                                         strict=True)]
    json.dump(output, sys.stdout, indent=2)
    print()
    return 0
