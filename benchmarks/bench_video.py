"""Frames per second of the video task for 640x480 frames: one and four concurrent streams, `edges` and `detect`.

Starts `kubeinfer serve --task video --model DETECTOR` on loopback (or uses --target),
streams pre-encoded JPEG frames of a moving rectangle through ProcessVideo from one
thread per stream (each with its own connection) and prints a table:

    .venv/bin/python benchmarks/bench_video.py [--frames 120] [--streams 1,4] [--ops edges,detect]

The client runs on the same machine as the server, so on a small machine both share
the cores; the numbers are end to end (gRPC, decode, operations, JPEG encode).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable as a package
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.processes import ManagedProcess, ServerError, free_port
from kubeinfer.clients import Client

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / ".cache" / "models" / "detector.pt"
WIDTH, HEIGHT = 640, 480


@dataclass(frozen=True)
class Row:
    ops: str
    streams: int
    frames: int
    seconds: float
    errors: int
    detections: int

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


def clip(count: int, seed: int) -> list[bytes]:
    """640x480 JPEG frames (quality 90): blurred noise and a rectangle moving across (a third of the frame)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(noise, (0, 0), sigmaX=WIDTH / 32)
    w, h = WIDTH // 4, HEIGHT // 4
    frames = []
    for i in range(count):
        x = round(10 + (i % 60) / 59 * (WIDTH - w - 20))
        y = round(10 + (0.5 + 0.5 * np.sin(i / 9)) * (HEIGHT - h - 20))
        frame = background.copy()
        cv2.rectangle(frame, (x, y), (x + w, y + h), (230, 60, 40), thickness=-1)
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        frames.append(data.tobytes())
    return frames


def run_streams(target: str, ops: list[str], clips: list[list[bytes]]) -> Row:
    """All clips at once, one thread and one connection each; wall time from the first send to the last frame."""
    counts = [0] * len(clips)
    errors = [0] * len(clips)
    found = [0] * len(clips)
    failures: list[BaseException] = []
    start = threading.Barrier(len(clips) + 1)

    def stream(index: int) -> None:
        try:
            with Client(target) as client:
                client.wait_ready(30)
                start.wait()
                for frame in client.process_video(clips[index], ops=ops, stream_id=f"bench-{index}"):
                    counts[index] += 1
                    errors[index] += frame.error is not None
                    found[index] += len(frame.detections)
        except BaseException as exc:
            failures.append(exc)
            start.abort()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    if failures:
        raise failures[0]
    return Row(",".join(ops), len(clips), sum(counts), seconds, sum(errors), sum(found))



@contextmanager
def served(model: Path, extra: list[str]) -> Iterator[str]:
    """A `kubeinfer serve --task video` process on loopback, stopped on exit."""
    grpc_port, http_port = free_port(), free_port()
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(model.parent / ".ultralytics"))
    runtime = ManagedProcess(
        "kubeinfer serve (video)",
        [sys.executable, "-m", "kubeinfer", "serve", "--task", "video", "--model", str(model), "--host", "127.0.0.1",
         "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--model-name", "bench-video", *extra],
        Path(tempfile.gettempdir()) / f"bench-video-{os.getpid()}.log", env=env)
    try:
        try:
            runtime.wait_ready(f"http://127.0.0.1:{http_port}/readyz", timeout=120)
        except ServerError as exc:
            raise SystemExit(str(exc)) from None
        yield f"127.0.0.1:{grpc_port}"
    finally:
        runtime.stop()

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="use this running video runtime instead of starting one")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="detector for the started runtime (trained with `kubeinfer demo` when missing)")
    parser.add_argument("--frames", type=int, default=120, help="frames per stream (default 120)")
    parser.add_argument("--streams", default="1,4", help="concurrent stream counts to measure (default 1,4)")
    parser.add_argument("--ops", default="edges,detect",
                        help="pipelines to measure, comma-separated; use + to chain, e.g. grayscale+edges")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra flag for the started runtime, e.g. --serve-arg=--max-frames-in-flight=8")
    args = parser.parse_args(argv)
    pipelines = [p.split("+") for p in args.ops.split(",") if p]
    stream_counts = [int(n) for n in args.streams.split(",") if n]

    if args.target is None and not args.model.exists():
        from kubeinfer.runtime.demo_models import train_detector

        print(f"training the demo detector into {args.model} (about two minutes)...", file=sys.stderr)
        train_detector(args.model)
    clips = [clip(args.frames, seed=i) for i in range(max(stream_counts))]

    with served(args.model, args.serve_arg) if args.target is None else _given(args.target) as target:
        for ops in pipelines:  # warm-up: first calls, lazy kernels, connection set-up
            run_streams(target, ops, [clips[0][:10]])
        rows = [run_streams(target, ops, clips[:n]) for ops in pipelines for n in stream_counts]

    print(f"\n{WIDTH}x{HEIGHT} JPEG frames, {args.frames} per stream, {os.cpu_count()} CPU cores")
    print(f"{'ops':<16} {'streams':>7} {'frames':>7} {'seconds':>8} {'frames/s':>9} {'per stream':>10} "
          f"{'errors':>6} {'boxes/frame':>11}")
    for r in rows:
        print(f"{r.ops:<16} {r.streams:>7} {r.frames:>7} {r.seconds:>8.2f} {r.fps:>9.1f} {r.fps / r.streams:>10.1f} "
              f"{r.errors:>6} {r.detections / max(r.frames, 1):>11.2f}")
    return 0 if all(r.errors == 0 for r in rows) else 1


@contextmanager
def _given(target: str) -> Iterator[str]:
    yield target


if __name__ == "__main__":
    sys.exit(main())
