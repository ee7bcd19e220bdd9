"""The runtime's CUDA path, proved and measured in one prepared run of a few minutes on a machine with one GPU.

    python benchmarks/gpu_check.py [--model detector.pt] [--seconds 20] [--out benchmarks/results]
    make gpu-check

Without a GPU the same pipeline runs on the CPU and says so: every figure carries the device it ran on.

1. engines: torch's CUDA device, and ONNX Runtime's providers (the gpu image's onnxruntime is CPU-only: a CUDA
   provider is reported where onnxruntime-gpu is installed);
2. nvJPEG: a batch of JPEGs decoded on the device (torchvision's decode_jpeg, the batch step's decoder with
   ``--decode-device model``) against OpenCV's decode of the same files;
3. boxes: the detector on the device (torch) finds the boxes the CPU path (ONNX Runtime and numpy) finds;
4. the raw forward at batch 32 on the device: the most images a second any server of this model can serve;
5. `kubeinfer serve` on the device at concurrency 1, 16 and 64 (h2load where installed, else the Python load
   generator, for which a GPU machine's cores leave room), against (4);
6. GPU memory and utilisation as the runtime's own NVML metrics report them (/metrics) during the last level.

A GPU machine without the project installed (no network there) needs the wheels `make gpu-check-wheels` saves
into .whl/ (ultralytics and the gRPC packages at the project's pins); the project itself is imported from this
source tree. The figures go to OUT/gpu-check-DEVICE-DATE.json and are printed as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The source tree's packages as installed: pyproject maps these folders to kubeinfer.* names.
PACKAGES = {"runtime": "runtime", "clients": "clients", "operator": "operator", "v1": "protos/kubeinfer/v1",
            "oip": "protos/kubeinfer/oip"}
LEVELS = (1, 16, 64)
BATCH = 32
IMAGES = 64


def source_tree_importable() -> str:
    """Make ``kubeinfer`` importable from this checkout when it is not installed (a bare GPU machine): a folder
    of links laid out as pyproject installs it, put on sys.path and PYTHONPATH; returns it ("" if installed)."""
    if importlib.util.find_spec("kubeinfer") is not None:
        return ""
    root = Path(tempfile.mkdtemp(prefix="kubeinfer-src-"))
    package = root / "kubeinfer"
    shutil.copytree(REPO / "kubeinfer", package)
    for name, folder in PACKAGES.items():
        (package / name).symlink_to(REPO / folder, target_is_directory=True)
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))
    return str(root)


if str(REPO) not in sys.path:
    sys.path.append(str(REPO))


def engines() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": cuda, "cuda_version": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
            "onnxruntime_cuda": "CUDAExecutionProvider" in ort.get_available_providers()}


def sample_images(count: int = IMAGES) -> list[tuple[Any, bytes]]:
    """Synthetic scenes with rectangles the demo detector knows, as RGB and as JPEG."""
    import cv2
    import numpy as np

    from kubeinfer.runtime.demo_models import synthetic_image

    rng = np.random.default_rng(17)
    out = []
    for i in range(count):
        rgb = synthetic_image(rng, 128 + 32 * (i % 5)).pixels
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        out.append((rgb, jpeg.tobytes()))
    return out


def timed(work: Any, repeat: int, sync: Any = None) -> float:
    """Seconds per call of ``work`` (median of ``repeat`` after two warm-ups)."""
    for _ in range(2):
        work()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def nvjpeg(device: str, samples: list[tuple[Any, bytes]]) -> dict[str, Any]:
    """The batch step's decoder on the device against OpenCV: pixel differences and time per image."""
    import cv2
    import numpy as np
    import torch

    from kubeinfer.runtime.models.device_images import decode_jpegs

    jpegs = [jpeg for _, jpeg in samples[:BATCH]]
    target = torch.device(device)
    decoded = decode_jpegs(jpegs, target)
    differences = []
    for image, jpeg in zip(decoded, jpegs, strict=True):
        assert image is not None
        reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        got = image.permute(1, 2, 0).cpu().numpy().astype(np.int16)
        differences.append(np.abs(got - reference.astype(np.int16)))
    sync = torch.cuda.synchronize if target.type == "cuda" else None
    on_device = timed(lambda: decode_jpegs(jpegs, target), 10, sync) / len(jpegs)
    opencv = timed(lambda: [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs], 10)
    return {"device": device, "decoder": "nvJPEG" if target.type == "cuda" else "libjpeg-turbo (torchvision)",
            "max_level_difference": int(max(d.max() for d in differences)),
            "mean_level_difference": float(np.mean([d.mean() for d in differences])),
            "ms_per_image_device": on_device * 1000, "ms_per_image_opencv": opencv / len(jpegs) * 1000}


def boxes(device: str, model: Path, onnx: Path, samples: list[tuple[Any, bytes]]) -> dict[str, Any]:
    """The detector on the device (torch) against the CPU path (ONNX Runtime, numpy): matched boxes."""
    import cv2

    from kubeinfer.runtime.models.yolo import YoloDetector
    from kubeinfer.runtime.models.yolo_io import Selection
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

    selection = Selection(0.25, 0.45, 300)
    on_device, on_cpu = YoloDetector(model, device, None), YoloOnnxDetector(onnx, "cpu", None)
    found = {}
    for name, detector in (("device", on_device), ("cpu", on_cpu)):
        items = [detector.preprocess(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), selection) for rgb, _ in samples]
        found[name] = [raw.boxes or [] for raw in detector.forward(items)]
    ious, score_gaps, unmatched = [], [], 0
    for want, got in zip(found["cpu"], found["device"], strict=True):
        unmatched += abs(len(want) - len(got))
        for w in want:
            best = max(got, key=lambda g: _iou(w, g), default=None)
            if best is None or _iou(w, best) < 0.5:
                unmatched += 1
                continue
            ious.append(_iou(w, best))
            score_gaps.append(abs(w.score - best.score))
    return {"device": device, "boxes_cpu": sum(map(len, found["cpu"])),
            "boxes_device": sum(map(len, found["device"])), "unmatched": unmatched,
            "min_iou": min(ious, default=0.0), "max_score_difference": max(score_gaps, default=0.0),
            "equal_within_tolerance": unmatched == 0 and min(ious, default=0.0) > 0.98
            and max(score_gaps, default=0.0) < 0.02}


def _iou(a: Any, b: Any) -> float:
    width = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    height = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = width * height
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def raw_forward(device: str, model: Path, onnx: Path) -> dict[str, Any]:
    """Images per second of the model alone at batch 32: torch on a GPU, ONNX Runtime on the CPU (the engines
    kubeinfer serves each device with)."""
    import numpy as np

    if device.startswith("cuda"):
        import torch

        from kubeinfer.runtime.models.yolo import YoloDetector

        detector = YoloDetector(model, device, None)
        size = detector.image_size
        batch = torch.rand(BATCH, 3, size, size, device=device)

        def forward() -> None:
            with torch.inference_mode():
                detector.backend(batch)

        seconds = timed(forward, 20, torch.cuda.synchronize)
        engine = "torch"
    else:
        from kubeinfer.runtime.models.onnx_session import open_session

        session = open_session(onnx, "cpu")
        size = int(session.get_inputs()[0].shape[2]) if isinstance(session.get_inputs()[0].shape[2], int) else 128
        batch = np.random.default_rng(3).random((BATCH, 3, size, size), dtype=np.float32)
        name = session.get_inputs()[0].name
        seconds = timed(lambda: session.run(None, {name: batch}), 10)
        engine = "onnx"
    return {"device": device, "engine": engine, "batch": BATCH, "images_per_s": BATCH / seconds}


@contextlib.contextmanager
def runtime(device: str, model: Path) -> Iterator[tuple[str, str, int]]:
    """`kubeinfer serve` of the detector on loopback: (gRPC address, metrics URL, pid)."""
    from benchmarks.processes import free_port

    grpc_port, http_port = free_port(), free_port()
    backend = ["--backend", "torch", "--decode-device", "model"] if device.startswith("cuda") else []
    log = tempfile.NamedTemporaryFile(prefix="gpu-check-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "kubeinfer.cli", "serve", "--task", "detect", "--model", str(model), "--device",
         device, *backend, "--max-batch-size", str(BATCH), "--max-batch-delay-ms", "2", "--host", "127.0.0.1",
         "--grpc-port", str(grpc_port), "--http-port", str(http_port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{http_port}/readyz", timeout=1) as response:
                if response.status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kubeinfer serve did not become ready: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}/metrics", process.pid
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(60)
        if process.poll() is None:
            process.kill()


def gpu_metrics(url: str) -> dict[str, float]:
    """The runtime's NVML gauges now (utilisation 0..1, memory in bytes); empty on the CPU."""
    from prometheus_client.parser import text_string_to_metric_families

    from kubeinfer.runtime.gpu_metrics import GPU_MEMORY_ALLOCATED, GPU_MEMORY_USED, GPU_UTILIZATION

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    wanted = {GPU_UTILIZATION: "utilization", GPU_MEMORY_USED: "memory_used_bytes",
              GPU_MEMORY_ALLOCATED: "memory_allocated_bytes"}
    return {wanted[f.name]: s.value for f in text_string_to_metric_families(text) if f.name in wanted
            for s in f.samples}


def served(device: str, model: Path, samples: list[tuple[Any, bytes]], seconds: float) -> dict[str, Any]:
    """Throughput and latency at each concurrency; the GPU's gauges sampled during the last level."""
    import numpy as np

    from benchmarks import h2load, load

    pixels = np.stack([rgb[:128, :128] for rgb, _ in samples])
    jpegs = [jpeg for _, jpeg in samples]
    generator = "h2load" if h2load.available() else "python"
    readings: list[dict[str, float]] = []
    with runtime(device, model) as (address, metrics_url, pid):
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                with contextlib.suppress(OSError, ValueError):
                    readings.append(gpu_metrics(metrics_url))

        levels = []
        for concurrency in LEVELS:
            if concurrency == LEVELS[-1] and device.startswith("cuda"):
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
            target = load.KubeinferTarget(address, "detect", pixels, jpegs)
            result = asyncio.run(load.run_levels(target, [concurrency], seconds, 3.0, 30.0, generator=generator,
                                                 address=address, server_pid=pid))
            levels.append(result["levels"][0])
        stop.set()
    gauges = {key: max(r.get(key, 0.0) for r in readings) for key in
              ("utilization", "memory_used_bytes", "memory_allocated_bytes")} if readings else {}
    return {"device": device, "generator": generator, "levels": [
        {k: level.get(k) for k in ("concurrency", "throughput_rps", "p50_ms", "p99_ms", "errors")} for level in levels],
        "gpu_peak": gauges, "gpu_samples": len(readings)}


def demo_model(given: Path | None) -> tuple[Path, Path]:
    """The detector (.pt) and its ONNX export."""
    from kubeinfer.runtime.demo_models import train_detector
    from kubeinfer.runtime.models.backend import onnx_export

    model = given or train_detector(REPO / ".cache" / "models" / "detector.pt")
    return model, onnx_export(model, REPO / ".cache" / "exports", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a YOLO .pt detector (default: the demo detector, trained once)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per concurrency level")
    parser.add_argument("--device", default="", help="cuda or cpu (default: cuda where torch sees a GPU)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    shim = source_tree_importable()
    started = time.monotonic()
    found = engines()
    device = args.device or ("cuda" if found["cuda"] else "cpu")
    if device == "cpu":
        print("gpu-check: no GPU here: the same pipeline runs on the CPU; no figure below is a GPU's", flush=True)
    model, onnx = demo_model(args.model)
    samples = sample_images()
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": device,
                               "engines": found, "from_source_tree": bool(shim)}
    for name, step in (("nvjpeg", lambda: nvjpeg(device, samples)),
                       ("boxes", lambda: boxes(device, model, onnx, samples)),
                       ("raw_forward", lambda: raw_forward(device, model, onnx)),
                       ("served", lambda: served(device, model, samples, args.seconds))):
        step_started = time.monotonic()
        results[name] = step()
        results[name]["seconds"] = round(time.monotonic() - step_started, 1)
        print(f"gpu-check: {name}: {json.dumps(results[name])}", flush=True)
    limit = results["raw_forward"]["images_per_s"]
    for level in results["served"]["levels"]:
        level["vs_raw_forward"] = (level["throughput_rps"] or 0) / limit
    results["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-check-{device}-{results['date'][:10]}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"gpu-check: {results['seconds']:.0f} s; figures in {path}")
    return 0 if results["boxes"]["equal_within_tolerance"] else 1


def print_table(results: dict[str, Any]) -> None:
    device = results["device"]
    e, j, b, r = results["engines"], results["nvjpeg"], results["boxes"], results["raw_forward"]
    print(f"\n| what ({device}) | figure |\n| --- | --- |")
    print(f"| engines | torch {e['torch']} (CUDA {e['cuda_version'] or '-'}, {e['gpu'] or 'no GPU'}); onnxruntime "
          f"{e['onnxruntime']} CUDA provider: {'yes' if e['onnxruntime_cuda'] else 'no'} |")
    print(f"| JPEG decode in the batch step ({j['decoder']}) | {j['ms_per_image_device']:.3f} ms/image vs OpenCV "
          f"{j['ms_per_image_opencv']:.3f}; max level difference {j['max_level_difference']} "
          f"(mean {j['mean_level_difference']:.3f}) |")
    print(f"| boxes vs the CPU path | {b['boxes_device']} vs {b['boxes_cpu']}, unmatched {b['unmatched']}, min IoU "
          f"{b['min_iou']:.4f}, max score difference {b['max_score_difference']:.4f} |")
    print(f"| raw forward, batch {r['batch']} ({r['engine']}) | {r['images_per_s']:.0f} images/s |")
    for level in results["served"]["levels"]:
        print(f"| served, C={level['concurrency']} ({results['served']['generator']}) | "
              f"{level['throughput_rps']:.0f} req/s ({level['vs_raw_forward']:.2f}x raw), "
              f"p50 {level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms, {level['errors']} errors |")
    gauges = results["served"]["gpu_peak"]
    if gauges:
        print(f"| GPU at C=64 (runtime's NVML metrics, peak) | utilisation {gauges['utilization']:.2f}, memory used "
              f"{gauges['memory_used_bytes'] / 2**30:.2f} GiB, held by torch "
              f"{gauges['memory_allocated_bytes'] / 2**30:.2f} GiB |")
    else:
        print("| GPU metrics | none: no GPU |")


if __name__ == "__main__":
    sys.exit(main())
