"""Aggregate frames per second of StreamClassify with 1, 8 and 32 concurrent streams against a served model.

Starts `kubeinfer serve --task stream-classify` on loopback with the benchmark CNN
(benchmarks/models.py: three convolutions at 224x224, seeded weights) or the model
you give, or measures a runtime already running (--target). Each stream is its own
StreamClassify call from its own connection, keeping a few frames in flight (like
a camera client that does not wait for each answer). Frames are 320x240 JPEGs,
decoded and resized by the server. All streams share the server's one batcher.

    .venv/bin/python benchmarks/bench_streams.py [--streams 1,8,32] [--seconds 8] [--in-flight 4]

Per stream count: 2 s warm-up, then frames answered inside the measured window are
counted; latency is send-to-answer per frame. Mean batch size comes from the
runtime's /metrics over the same window. The load generator shares the machine
with the server, so on a small machine both compete for the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable as a package
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.processes import ManagedProcess, ServerError, free_port
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

FRAME_WIDTH, FRAME_HEIGHT = 320, 240


@dataclass
class Row:
    streams: int
    frames: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    mean_batch: float | None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


def frames(count: int, seed: int) -> list[bytes]:
    """JPEG frames (quality 90) of blurred noise with a coloured rectangle moving across."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 256, (FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8), (0, 0), 8)
    encoded = []
    for i in range(count):
        frame = background.copy()
        x = 10 + (i * 13) % (FRAME_WIDTH - 100)
        cv2.rectangle(frame, (x, 60), (x + 80, 160), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        encoded.append(data.tobytes())
    return encoded


class Window:
    """The measured interval: frames answered inside it count."""

    def __init__(self, warmup: float, seconds: float) -> None:
        self.start = time.perf_counter() + warmup
        self.end = self.start + seconds

    def counts(self, at: float) -> bool:
        return self.start <= at < self.end


async def one_stream(target: str, index: int, clip: list[bytes], in_flight: int, window: Window,
                     latencies: list[float], errors: list[int]) -> None:
    """One StreamClassify call: keep ``in_flight`` frames outstanding until the window closes."""
    slots = asyncio.Semaphore(in_flight)
    sent: dict[int, float] = {}

    async def requests() -> AsyncIterator[pb.StreamFrame]:
        sequence = 0
        while time.perf_counter() < window.end:
            await slots.acquire()
            sent[sequence] = time.perf_counter()
            yield pb.StreamFrame(stream_id=f"bench-{index}", mode="camera", sequence=sequence,
                                 image=pb.Image(encoded=clip[sequence % len(clip)]))
            sequence += 1

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = pb_grpc.InferenceStub(channel).StreamClassify(requests())
        async for prediction in call:
            now = time.perf_counter()
            began = sent.pop(prediction.sequence)
            slots.release()
            if window.counts(now):
                latencies.append((now - began) * 1000.0)
                errors[0] += prediction.HasField("error")


async def measure(target: str, streams: int, clips: list[list[bytes]], in_flight: int, warmup: float,
                  seconds: float, http_url: str | None) -> Row:
    window = Window(warmup, seconds)
    latencies: list[float] = []
    errors = [0]
    batches_before: tuple[float, float] | None = None

    async def snapshot_at_start() -> None:
        nonlocal batches_before
        await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
        batches_before = await asyncio.to_thread(batch_totals, http_url) if http_url else None

    starter = asyncio.create_task(snapshot_at_start())
    await asyncio.gather(*(one_stream(target, i, clips[i % len(clips)], in_flight, window, latencies, errors)
                           for i in range(streams)))
    await starter
    mean_batch = None
    if http_url and batches_before is not None:
        count, total = batch_totals(http_url)  # the tail after the window adds a few batches: a fair estimate
        mean_batch = (total - batches_before[1]) / max(count - batches_before[0], 1.0)
    return Row(streams, len(latencies), seconds, latencies, errors[0], mean_batch)


def batch_totals(http_url: str) -> tuple[float, float]:
    """(model calls, images) so far, from the runtime's batch size histogram."""
    with urllib.request.urlopen(http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    count = re.search(r"^kubeinfer_batch_size_count\S* (\S+)$", text, re.MULTILINE)
    total = re.search(r"^kubeinfer_batch_size_sum\S* (\S+)$", text, re.MULTILINE)
    return (float(count.group(1)), float(total.group(1))) if count and total else (0.0, 0.0)



@contextmanager
def served(model: Path, labels: Path, torch_threads: int, extra: list[str]) -> Iterator[tuple[str, str]]:
    """A `kubeinfer serve --task stream-classify` process on loopback, stopped on exit."""
    grpc_port, http_port = free_port(), free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(torch_threads))
    runtime = ManagedProcess(
        "kubeinfer serve (stream-classify)",
        [sys.executable, "-m", "kubeinfer", "serve", "--task", "stream-classify", "--model", str(model),
         "--labels", str(labels), "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port",
         str(http_port), "--model-name", "bench-streams", "--log-level", "warning", *extra],
        Path(tempfile.gettempdir()) / f"bench-streams-{os.getpid()}.log", env=env)
    http_url = f"http://127.0.0.1:{http_port}"
    try:
        try:
            runtime.wait_ready(http_url + "/readyz", timeout=120)
        except ServerError as exc:
            raise SystemExit(str(exc)) from None
        yield f"127.0.0.1:{grpc_port}", http_url
    finally:
        runtime.stop()

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="gRPC address of a running stream-classify runtime (default: start one)")
    parser.add_argument("--http", help="its HTTP address, for the mean batch size (with --target)")
    parser.add_argument("--model", type=Path, help="classifier to serve (default: the benchmark CNN)")
    parser.add_argument("--labels", type=Path, help="its labels file (default: the benchmark CNN's)")
    parser.add_argument("--streams", default="1,8,32", help="concurrent stream counts (default 1,8,32)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per stream count (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    parser.add_argument("--in-flight", type=int, default=4, help="frames each stream keeps outstanding (default 4)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the started runtime (default 1: the load generator needs a core)")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra flag for the started runtime, e.g. --serve-arg=--max-batch-size=32")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.streams.split(",") if n]
    clips = [frames(30, seed) for seed in range(8)]

    if args.target:
        context = _given(args.target, args.http)
        model_name = f"runtime at {args.target}"
    else:
        if args.model is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from models import ensure_classifier

            files = ensure_classifier()
            args.model, args.labels = files.model, files.labels
        if args.labels is None:
            parser.error("--labels is needed with --model")
        context = served(args.model, args.labels, args.torch_threads, ["--max-streams", str(max(counts) * 2),
                                                                       *args.serve_arg])
        model_name = str(args.model)

    with context as (target, http_url):
        rows = [asyncio.run(measure(target, n, clips, args.in_flight, args.warmup, args.seconds, http_url))
                for n in counts]

    print(f"\nStreamClassify, {model_name}; {FRAME_WIDTH}x{FRAME_HEIGHT} JPEG frames, {args.in_flight} in flight "
          f"per stream, {args.seconds:.0f} s measured, {os.cpu_count()} CPU cores")
    print(f"{'streams':>7} {'frames':>7} {'frames/s':>9} {'per stream':>10} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'mean batch':>10} {'errors':>6}")
    for r in rows:
        ordered = sorted(r.latencies_ms) or [float("nan")]
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        batch = f"{r.mean_batch:.1f}" if r.mean_batch is not None else "-"
        print(f"{r.streams:>7} {r.frames:>7} {r.fps:>9.1f} {r.fps / r.streams:>10.1f} "
              f"{statistics.median(ordered):>7.1f} {p95:>7.1f} {batch:>10} {r.errors:>6}")
    return 0 if all(r.errors == 0 and r.frames > 0 for r in rows) else 1


@contextmanager
def _given(target: str, http_url: str | None) -> Iterator[tuple[str, str | None]]:
    yield target, http_url


if __name__ == "__main__":
    sys.exit(main())
