"""The limit: each model's own in-process throughput at its best batch size, with no serving at all.

Run as a separate process (with the same torch thread settings as the servers)
before any server starts, so nothing else of the benchmark competes with it.
The classifier is the TorchScript file, frozen and optimized for inference as
the runtime loads it (--torchscript-optimize), called directly on float tensors; the
detector is kubeinfer's ``YoloDetector.forward`` on letterboxed images, the exact
call the runtime's batcher makes. Pre/post-processing is timed separately: a
served request must do it too, but it is not the model. The detector's batch step
is also timed with its boxes selected in it, as a served request's are: the most
a server of that configuration can reach, before any transport or decoding.

    python benchmarks/limits.py --classifier M.pt --detector D.pt --payloads P.npz --seconds 1.5

prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
ANSWERS = 8
IDLE_GAP_S = 0.005  # between the batch-1 forwards timed "after idle": about a lone request's round trip
# the detector's box selection wherever it is timed or compared: `kubeinfer serve`'s defaults
# (--confidence, --iou, --max-detections)
CONFIDENCE, IOU, MAX_DETECTIONS = 0.25, 0.45, 300


def sweep(forward: Callable[[int], object], seconds: float, batch_sizes: tuple[int, ...] = BATCH_SIZES,
          rounds: int = 3, instances: int = 1) -> dict:
    """Images/s and median batch latency per batch size; ``forward(n)`` runs one batch of n, from ``instances``
    threads at once as ``kubeinfer serve --model-instances`` runs them.

    Each size is timed in ``rounds`` short rounds and the best round counts: a
    limit is what the model can do, so a round slowed by another process on the
    machine should not lower it.
    """
    rows = []
    for size in batch_sizes:
        for _ in range(3):  # warm-up: lazy kernels, allocator, TorchScript profiling runs
            forward(size)
        times: list[float] = []
        best = 0.0
        cpu_started, images = time.process_time(), 0
        for _ in range(rounds):
            count, elapsed = _timed_round(forward, size, seconds / rounds, instances, times)
            best = max(best, size * count / elapsed)
            images += size * count
        rows.append({"batch_size": size, "images_per_s": best,
                     "batch_ms_p50": 1000 * statistics.median(times), "batches": len(times),
                     "cpu_ms_per_image": 1000 * (time.process_time() - cpu_started) / images})
    best = max(rows, key=lambda r: r["images_per_s"])
    return {"by_batch_size": rows, "best_batch_size": best["batch_size"], "images_per_s": best["images_per_s"],
            "instances": instances,
            "latency_ms_batch1": lone_batch1_ms(forward, seconds, rows[0], instances) if 1 in batch_sizes else None,
            "latency_ms_batch1_after_idle": after_idle_ms(forward, seconds) if 1 in batch_sizes else None}


def lone_batch1_ms(forward: Callable[[int], object], seconds: float, batch1: dict, instances: int) -> float:
    """Median batch-1 forward with nothing else in the model, as at concurrency 1: the sweep's own timing with
    one instance; timed again from one thread with several, whose sweep had their batches overlap."""
    if instances == 1:
        return float(batch1["batch_ms_p50"])
    return median_ms(lambda: forward(1), seconds / 3)


def _timed_round(forward: Callable[[int], object], size: int, seconds: float, instances: int,
                 times: list[float]) -> tuple[int, float]:
    """Batches of ``size`` from ``instances`` threads for ``seconds`` (at least 2 each): how many, in how long;
    each batch's duration is appended to ``times``."""
    counts = [0] * instances
    started = time.perf_counter()

    def loop(index: int) -> None:
        while time.perf_counter() - started < seconds or counts[index] < 2:
            t0 = time.perf_counter()
            forward(size)
            times.append(time.perf_counter() - t0)  # list.append: atomic under the GIL
            counts[index] += 1

    if instances == 1:
        loop(0)
    else:
        workers = [threading.Thread(target=loop, args=(i,)) for i in range(instances)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return sum(counts), time.perf_counter() - started


def after_idle_ms(forward: Callable[[int], object], seconds: float) -> float:
    """Median batch-1 forward when each call follows ``IDLE_GAP_S`` of sleep, as a lone client's requests do.

    Back-to-back calls keep the cores busy; a request at concurrency 1 finds them idle. On a VM whose idle
    vCPUs halt at once (this project's machine: Firecracker, ``haltpoll.guest_halt_poll_ns=0``) the same
    forward then runs markedly slower, which the served C=1 latency includes and the back-to-back figure not.
    """
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 20:
        time.sleep(IDLE_GAP_S)
        t0 = time.perf_counter()
        forward(1)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def median_ms(fn: Callable[[], object], seconds: float) -> float:
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def classifier_limit(model_path: Path, pixels: np.ndarray, seconds: float, instances: int = 1) -> dict:
    import torch

    from kubeinfer.runtime.models.preprocessing import Preprocessing
    from kubeinfer.runtime.models.torchscript import optimized_for_inference

    prep = Preprocessing.resolve(model_path)
    module = torch.jit.load(str(model_path), map_location="cpu")
    module = optimized_for_inference(module, torch.device("cpu"), (3, prep.input_size, prep.input_size))
    bgr = [np.ascontiguousarray(p[:, :, ::-1]) for p in pixels]
    tensors = np.stack([prep.apply(b) for b in bgr])

    batches: dict[int, Any] = {}

    def forward(n: int) -> object:
        if n not in batches:  # built once per size, outside the timed calls' steady state
            batches[n] = torch.from_numpy(np.resize(tensors, (n, *tensors.shape[1:])))
        with torch.inference_mode():
            return module(batches[n])

    result = sweep(forward, seconds, instances=instances)
    result["preprocess_ms_per_image"] = median_ms(lambda: prep.apply(bgr[0]), seconds / 4)
    with torch.inference_mode():  # the answers every server should give for the first payloads
        result["top1"] = [int(v) for v in module(torch.from_numpy(tensors[:ANSWERS])).argmax(dim=1)]
    result["model"] = str(model_path)
    return result


def detector_limit(model_path: Path, jpegs: list[bytes], seconds: float, backend: str = "torch",
                   cache_dir: Path | None = None, instances: int = 1) -> dict:
    """The detector's ``forward`` alone, on the engine ``backend`` picks for the file (as ``--backend`` would): ONNX
    Runtime with numpy (``YoloOnnxDetector``) or torch (``YoloDetector``)."""
    import cv2

    from kubeinfer.runtime.models.backend import choose_backend
    from kubeinfer.runtime.models.yolo import YoloDetector
    from kubeinfer.runtime.models.yolo_io import Selection
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

    choice = choose_backend(model_path, backend, "cpu", cache_dir or model_path.parent / ".exports", None)
    detector: YoloDetector | YoloOnnxDetector
    if choice.backend == "onnx":
        detector = YoloOnnxDetector(choice.path, "cpu", None)
    else:
        detector = YoloDetector(choice.path, "cpu", None)
    decoded = [cv2.imdecode(np.frombuffer(j, dtype=np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    boxed = [detector.preprocess(d) for d in decoded]

    def forward(n: int) -> object:
        return detector.forward([boxed[i % len(boxed)] for i in range(n)])

    result = sweep(forward, seconds, batch_sizes=(1, 2, 4, 8, 16, 32), instances=instances)
    # the same batch step as a served request makes it, its boxes selected at the default thresholds: the
    # most the served detector can reach in this configuration, with no transport or decoding at all
    selected = [detector.preprocess(d, Selection(CONFIDENCE, IOU, MAX_DETECTIONS)) for d in decoded]
    best = result["best_batch_size"]
    result["selected_images_per_s"] = sweep(
        lambda n: detector.forward([selected[i % len(selected)] for i in range(n)]), seconds,
        batch_sizes=(best,), instances=instances)["images_per_s"]
    raw = detector.forward([boxed[0]])[0]  # no selection in the batch step: postprocess selects its boxes
    item = selected[0]

    def pre() -> object:
        return detector.preprocess(cv2.imdecode(np.frombuffer(jpegs[0], dtype=np.uint8), cv2.IMREAD_COLOR))

    result["preprocess_ms_per_image"] = median_ms(pre, seconds / 4)
    result["postprocess_ms_per_image"] = median_ms(
        lambda: detector.postprocess(raw, item), seconds / 4)
    result["input_size"] = detector.image_size
    result["model"] = str(model_path)
    result["backend"] = choice.backend
    return result


def ultralytics_predict(model_path: Path, jpegs: list[bytes], seconds: float, batch: int = 32) -> dict:
    """ultralytics' own batched ``predict`` in-process, JPEG decoding included: what a user gets without a
    server at all (the row the served detector is compared with)."""
    import cv2
    from ultralytics import YOLO

    model = YOLO(str(model_path))
    size = int(model.model.args.get("imgsz", 640)) if hasattr(model.model, "args") else 640
    chunk = [jpegs[i % len(jpegs)] for i in range(batch)]

    def predict(n: int) -> object:
        images = [cv2.imdecode(np.frombuffer(j, dtype=np.uint8), cv2.IMREAD_COLOR) for j in chunk[:n]]
        return model.predict(images, imgsz=size, batch=n, verbose=False)

    result = sweep(predict, seconds, batch_sizes=(batch,))
    result["model"] = str(model_path)
    # the in-process answers the served boxes are checked against, at kubeinfer's default thresholds
    images = [cv2.imdecode(np.frombuffer(j, dtype=np.uint8), cv2.IMREAD_COLOR) for j in jpegs[:ANSWERS]]
    predictions = model.predict(images, imgsz=size, conf=CONFIDENCE, iou=IOU, max_det=MAX_DETECTIONS, verbose=False)
    result["answers"] = [[[int(c), *map(float, xyxy), float(score)] for xyxy, score, c in
                          zip(p.boxes.xyxy.tolist(), p.boxes.conf.tolist(), p.boxes.cls.tolist(), strict=True)]
                         for p in predictions]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", type=Path)
    parser.add_argument("--detector", type=Path)
    parser.add_argument("--payloads", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per batch size")
    parser.add_argument("--threads", type=int, default=0,
                        help="the model's intra-op threads, set as `kubeinfer serve --model-threads` sets them "
                             "(0: the libraries' defaults)")
    parser.add_argument("--instances", type=int, default=1,
                        help="batches run at once, each from a thread of its own, as `kubeinfer serve "
                             "--model-instances` runs them (each with --threads intra-op threads)")
    parser.add_argument("--detector-backends", default="torch",
                        help="comma-separated engines for the detector limit (torch, onnx, auto); the fastest "
                             "is the limit")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where ONNX exports are kept")
    parser.add_argument("--ultralytics", action="store_true", help="also time ultralytics' own predict")
    args = parser.parse_args(argv)
    from kubeinfer.runtime.allocator import keep_freed_memory

    keep_freed_memory()  # the allocator setting `kubeinfer serve` runs the model with
    import torch
    from load import load_payloads  # this script's folder is on sys.path

    from kubeinfer.runtime.models import threads

    def servers_threads() -> None:
        """Each measurement starts from the servers' thread settings: an ONNX Runtime detector leaves torch
        one thread (as it does in a server), which the torch backend after it must not inherit."""
        if args.threads:
            threads.configure(args.threads, instances=args.instances)

    servers_threads()
    pixels, jpegs = load_payloads(args.payloads)
    out: dict[str, Any] = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                           "instances": args.instances}
    if args.classifier:
        out["classifier"] = classifier_limit(args.classifier, pixels, args.seconds, args.instances)
    if args.detector:
        by_backend = {}
        for name in filter(None, args.detector_backends.split(",")):
            servers_threads()
            by_backend[name] = detector_limit(args.detector, jpegs, args.seconds, name, args.cache_dir,
                                              args.instances)
        out["detector"] = max(by_backend.values(), key=lambda r: r["images_per_s"])
        out["detector_by_backend"] = {r["backend"]: r for r in by_backend.values()}
        if args.ultralytics:
            servers_threads()
            out["detector_ultralytics"] = ultralytics_predict(args.detector, jpegs, args.seconds)
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
