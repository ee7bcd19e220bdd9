"""Steady request load for the end-to-end tests, from the host and from inside a pod.

The same file runs in two places: the tests import it on the host (``steady`` through a ClusterIP Service), and
``kubectl exec -i POD -- python - MODE ...`` runs it inside a pod of the cpu runtime image, which has Python,
numpy, OpenCV and ``kubeinfer.clients`` (``Client.for_service``, ``StreamRouter.for_service`` through CoreDNS
and the headless Service). It imports nothing from the tests. In a pod it prints one JSON line, its report.

The load is open-loop: request ``i`` is due at ``start + i / rate`` whatever the earlier ones took, so a slow
or failing replica cannot lower the rate the test claims. Every run is bounded by its duration and stops early
when the stop file appears (``touch`` it to end a run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

STOP_FILE = "/tmp/e2e-load-stop"
MAX_SECONDS = 600.0  # no run goes on longer, whatever it was asked


@dataclass
class Failure:
    at: float  # seconds after the start
    code: str
    details: str


@dataclass
class LoadReport:
    """What a run sent and what came back."""

    rate: float
    seconds: float = 0.0
    sent: int = 0
    ok: int = 0
    failures: list[Failure] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    late: float = 0.0  # the most a request was sent after it was due (the load generator's own lag)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self) -> str:
        return (f"{self.sent} sent in {self.seconds:.0f}s ({self.sent / max(self.seconds, 1e-9):.1f}/s), "
                f"{self.ok} ok, {self.failed} failed, p50 {self.percentile(0.5) * 1000:.0f} ms, "
                f"p99 {self.percentile(0.99) * 1000:.0f} ms, max {self.percentile(1.0) * 1000:.0f} ms")

    def to_json(self) -> str:
        data = asdict(self)
        data["latencies"] = [round(x, 4) for x in self.latencies]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadReport:
        data = json.loads(text)
        data["failures"] = [Failure(**f) for f in data["failures"]]
        return cls(**data)


def _describe(exc: BaseException) -> tuple[str, str]:
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError
        return str(code().name), str(exc.details())  # type: ignore[attr-defined]
    return type(exc).__name__, str(exc)


def steady(call: Callable[[], Any], rate: float, seconds: float, *, workers: int = 16,
           stop: threading.Event | None = None, stop_file: str | None = None) -> LoadReport:
    """``call()`` ``rate`` times a second for ``seconds`` (or until ``stop`` is set or ``stop_file`` exists);
    every exception it raises is a failure."""
    seconds = min(seconds, MAX_SECONDS)
    report = LoadReport(rate=rate)
    lock = threading.Lock()
    start = time.monotonic()

    def one() -> None:
        began = time.monotonic()
        try:
            call()
        except Exception as exc:  # every failure is counted, whatever it is
            code, details = _describe(exc)
            with lock:
                report.failures.append(Failure(round(began - start, 3), code, details[:300]))
            return
        with lock:
            report.ok += 1
            report.latencies.append(time.monotonic() - began)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        index = 0
        while True:
            due = start + index / rate
            now = time.monotonic()
            if due - start >= seconds or (stop is not None and stop.is_set()):
                break
            if stop_file and index % max(1, int(rate)) == 0 and os.path.exists(stop_file):
                break
            if due > now:
                time.sleep(due - now)
            report.late = max(report.late, time.monotonic() - due)
            pool.submit(one)
            index += 1
        report.sent = index
    report.seconds = time.monotonic() - start
    return report


class Background:
    """``steady`` in a thread, for a test that disrupts something meanwhile: ``stop()`` ends it, ``join()`` waits
    for its report."""

    def __init__(self, call: Callable[[], Any], rate: float, seconds: float,
                 on_exit: Callable[[], Any] | None = None) -> None:
        self._on_exit = on_exit
        self._stop = threading.Event()
        self._report: LoadReport | None = None
        self._thread = threading.Thread(target=self._run, args=(call, rate, seconds), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any], rate: float, seconds: float) -> None:
        try:
            self._report = steady(call, rate, seconds, stop=self._stop)
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = MAX_SECONDS + 60) -> LoadReport:
        self._thread.join(timeout)
        assert self._report is not None, "the load generator did not finish"
        return self._report


def detect_image(seed: int = 7) -> bytes:
    """A JPEG of the demo detector's kind: blurred noise with filled rectangles (kubeinfer.runtime is in the cpu
    image too)."""
    import cv2
    import numpy as np

    from kubeinfer.runtime.demo_models import synthetic_image

    image = synthetic_image(np.random.default_rng(1000 + seed))
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image.pixels, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def solid_image(rgb: tuple[int, int, int], size: int = 48) -> bytes:
    import cv2
    import numpy as np

    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:] = rgb[::-1]  # OpenCV writes BGR
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


# -- inside a pod ---------------------------------------------------------------------------------------------
def _detect_load(args: argparse.Namespace) -> str:
    """Detect through ``Client.for_service`` at a steady rate."""
    from kubeinfer.clients import Client

    image = detect_image()
    with Client.for_service(args.service, args.namespace, timeout=args.timeout) as client:
        def call() -> None:
            results = client.detect([image])
            if not results[0].detections:
                raise AssertionError("no detection in the test image")

        return steady(call, args.rate, args.seconds, stop_file=STOP_FILE).to_json()


def _streams(args: argparse.Namespace) -> str:
    """``args.streams`` streams of ``args.frames`` frames each through ``StreamRouter.for_service``: the replica
    each stream went to and how many predictions came back."""
    from kubeinfer.clients import StreamRouter

    frame = solid_image((255, 0, 0))
    owners: dict[str, str] = {}
    predictions: dict[str, int] = {}
    with StreamRouter.for_service(args.service, args.namespace) as router:
        endpoints = router.endpoints
        for index in range(args.streams):
            stream_id = f"camera-{index}"
            owners[stream_id] = router.owner(stream_id)
            answers = list(router.stream_classify([frame] * args.frames, stream_id=stream_id, timeout=60))
            predictions[stream_id] = sum(1 for a in answers if not a.error)
    return json.dumps({"endpoints": endpoints, "owners": owners, "predictions": predictions})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("detect-load", "streams"))
    parser.add_argument("service")
    parser.add_argument("namespace")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=12)
    parser.add_argument("--frames", type=int, default=5)
    args = parser.parse_args(argv)
    if os.path.exists(STOP_FILE):
        os.remove(STOP_FILE)
    print(_detect_load(args) if args.mode == "detect-load" else _streams(args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
