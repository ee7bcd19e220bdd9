"""The lean runtime's goals, measured: image size, cold start, memory idle and under load, served throughput.

    .venv/bin/python benchmarks/lean.py [--kubeinfer PATH] [--image IMAGE] [--seconds 60] [--out results/lean.json]

Rows, each printed against its goal (the lean-runtime issue's table):

- the cpu image's size, as ``podman image inspect`` reports it (``make images`` builds it);
- exec -> /readyz 200 of `kubeinfer serve` for the demo detector's ONNX export (the median of five starts, and
  the fastest), from this venv and, where the image is built, in it: from the container's start to /readyz;
- its RSS idle (two seconds after ready) and its peak RSS under h2load at concurrency 16 for ``--seconds``;
- its throughput at concurrency 16 (h2load: a C load generator that leaves the server its cores).

``--kubeinfer`` runs another build's `kubeinfer` (a worktree of an earlier commit, say), so a baseline is measured
the same way on the same machine; run them alternately, the host's noise is of the order of 10 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from benchmarks import h2load  # noqa: E402
from benchmarks.processes import free_port  # noqa: E402

DEMO_MODEL = REPO / ".cache" / "models" / "detector.pt"
EXPORTS = REPO / ".cache" / "exports"
PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
GOALS = {"image_mb": 500, "ready_s": 1.0, "idle_rss_mb": 200, "load_rss_mb": 350}
STARTS = 5


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_ready(http_port: int, process: subprocess.Popen[bytes] | None, timeout: float = 60) -> float:
    """Poll /readyz every 5 ms; the monotonic time it first answered 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz",
                                                                  timeout=1) as response:
            if response.status == 200:
                return time.monotonic()
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"kubeinfer serve exited with {process.returncode}")
        time.sleep(0.005)
    raise RuntimeError(f"not ready within {timeout:.0f} s")


@contextlib.contextmanager
def served(kubeinfer: str, model: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int, float]]:
    """`kubeinfer serve` of the detector on loopback: (process, gRPC port, HTTP port, seconds exec -> ready)."""
    grpc_port, http_port = free_port(), free_port()
    started = time.monotonic()
    process = subprocess.Popen([kubeinfer, "serve", "--task", "detect", "--model", str(model), "--host", "127.0.0.1",
                                "--grpc-port", str(grpc_port), "--http-port", str(http_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = wait_ready(http_port, process) - started
        yield process, grpc_port, http_port, ready
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def detect_message() -> bytes:
    """One Detect request of one 128 px JPEG, the benchmark's detector payload."""
    import cv2
    import numpy as np

    from kubeinfer.runtime.demo_models import synthetic_image
    from kubeinfer.v1 import inference_pb2 as pb

    rgb = synthetic_image(np.random.default_rng(11), 128).pixels
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return pb.DetectRequest(images=[pb.Image(encoded=jpeg.tobytes())]).SerializeToString()


def under_load(pid: int, grpc_port: int, seconds: float) -> dict[str, float]:
    """h2load at concurrency 16 for ``seconds`` (after 3 s of warm-up); the peak RSS sampled every 0.2 s."""
    peak = [rss_mb(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            with contextlib.suppress(OSError, RuntimeError):
                peak.append(rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        level = h2load.run_level(f"127.0.0.1:{grpc_port}", "/kubeinfer.v1.Inference/Detect", detect_message(), 16,
                                 seconds, 3.0, 30.0)
    finally:
        stop.set()
        sampler.join()
    return {"throughput_rps": level["throughput_rps"], "p99_ms": level.get("p99_ms", 0.0),
            "errors": level.get("errors", 0), "peak_rss_mb": max(peak)}


def local_rows(kubeinfer: str, model: Path, seconds: float) -> dict[str, Any]:
    starts = []
    for _ in range(STARTS):
        with served(kubeinfer, model) as (_, _, _, ready):
            starts.append(ready)
    with served(kubeinfer, model) as (process, grpc_port, _, _):
        time.sleep(2)
        idle = rss_mb(process.pid)
        load = under_load(process.pid, grpc_port, seconds)
    return {"ready_s_median": statistics.median(starts), "ready_s_best": min(starts), "ready_s_all": starts,
            "idle_rss_mb": idle, **load}


def image_rows(image: str, model: Path, seconds: float) -> dict[str, Any] | None:
    """The same in the cpu image, run as its pod runs it (uid, read-only root, /tmp writable)."""
    inspected = subprocess.run([*PODMAN, "image", "inspect", "--format", "{{.Size}}", image], capture_output=True,
                               text=True)
    if inspected.returncode != 0:
        return None
    size_mb = int(inspected.stdout.strip()) / 1e6
    starts, rows = [], {}
    for attempt in range(STARTS + 1):
        grpc_port, http_port = free_port(), free_port()
        name = f"kubeinfer-lean-bench-{attempt}"
        subprocess.run([*PODMAN, "rm", "--force", name], capture_output=True)
        subprocess.run([*PODMAN, "create", "--name", name, "--network", "host", "--read-only",
                        "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777", "--user", "65532:65532",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
                        "--volume", f"{model.parent}:/models:ro", image, "--task", "detect", "--model",
                        f"/models/{model.name}", "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
                        "--http-port", str(http_port)], check=True, capture_output=True)
        try:
            subprocess.run([*PODMAN, "start", name], check=True, capture_output=True)
            ready = wait_ready(http_port, None)
            ready_at = time.time() - (time.monotonic() - ready)
            state = json.loads(subprocess.run([*PODMAN, "inspect", "--format", "{{json .State}}", name],
                                              capture_output=True, text=True, check=True).stdout)
            started = state["StartedAt"]
            starts.append(ready_at - _epoch(started))
            if attempt == STARTS:  # the last one also serves the load
                time.sleep(2)
                rows = {"idle_rss_mb": rss_mb(state["Pid"]), **under_load(state["Pid"], grpc_port, seconds)}
        finally:
            subprocess.run([*PODMAN, "rm", "--force", name], capture_output=True)
    return {"image_mb": size_mb, "ready_s_median": statistics.median(starts[:STARTS]),
            "ready_s_best": min(starts), "ready_s_all": starts, **rows}


def _epoch(timestamp: str) -> float:
    """podman's StartedAt (RFC 3339 with nanoseconds) as seconds since the epoch."""
    from datetime import datetime

    head, _, rest = timestamp.partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())
    zone = rest[len(fraction):]
    stamp = datetime.fromisoformat(f"{head}{zone.replace('Z', '+00:00')}")
    return stamp.timestamp() + float(f"0.{fraction or '0'}")


def onnx_demo_model() -> Path:
    from kubeinfer.runtime.models.backend import onnx_export

    exported = EXPORTS / "lean-demo" / "detector.onnx"
    if not exported.is_file():
        exported.parent.mkdir(parents=True, exist_ok=True)
        exported.write_bytes(onnx_export(DEMO_MODEL, EXPORTS, None).read_bytes())
    return exported


def report(name: str, rows: dict[str, Any]) -> None:
    def verdict(value: float, goal: float) -> str:
        return "meets" if value <= goal else "MISSES"

    print(f"{name}:")
    if "image_mb" in rows:
        print(f"  image size              {rows['image_mb']:7.0f} MB    goal <= {GOALS['image_mb']} MB  "
              f"{verdict(rows['image_mb'], GOALS['image_mb'])}")
    print(f"  exec -> /readyz (median) {rows['ready_s_median']:6.2f} s     goal <= {GOALS['ready_s']} s   "
          f"{verdict(rows['ready_s_median'], GOALS['ready_s'])} (best {rows['ready_s_best']:.2f} s)")
    if "idle_rss_mb" in rows:
        print(f"  RSS idle                {rows['idle_rss_mb']:7.0f} MB    goal <= {GOALS['idle_rss_mb']} MB  "
              f"{verdict(rows['idle_rss_mb'], GOALS['idle_rss_mb'])}")
        print(f"  RSS peak, h2load C=16   {rows['peak_rss_mb']:7.0f} MB    goal <= {GOALS['load_rss_mb']} MB  "
              f"{verdict(rows['peak_rss_mb'], GOALS['load_rss_mb'])}")
        print(f"  throughput, C=16        {rows['throughput_rps']:7.0f} req/s (p99 {rows['p99_ms']:.1f} ms, "
              f"{rows['errors']} errors)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeinfer", default=str(REPO / ".venv" / "bin" / "kubeinfer"),
                        help="the kubeinfer command to measure (default: this venv's)")
    parser.add_argument("--image", default="localhost/kubeinfer-runtime:cpu", help="the cpu image, if built")
    parser.add_argument("--seconds", type=float, default=60.0, help="h2load's measured span")
    parser.add_argument("--skip-image", action="store_true", help="measure the local process only")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if not h2load.available():
        print("lean: h2load is missing (apt-get install nghttp2-client)", file=sys.stderr)
        return 1
    model = onnx_demo_model()
    results: dict[str, Any] = {"model": str(model), "kubeinfer": args.kubeinfer,
                               "local": local_rows(args.kubeinfer, model, args.seconds)}
    report(f"kubeinfer serve ({args.kubeinfer})", results["local"])
    if not args.skip_image:
        in_image = image_rows(args.image, model, args.seconds)
        if in_image is None:
            print(f"{args.image}: not built (make images)")
        else:
            results["image"] = in_image
            report(f"{args.image}, from the container's start", in_image)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
