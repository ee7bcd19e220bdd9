"""The autoscaling signals, end to end short of the HPA controller: two real runtimes (two replicas of one
InferenceService) under real load, scraped by a real Prometheus through the chart's PodMonitor rules, and the
PromQL of the chart's Prometheus Adapter rules and of the KEDA trigger evaluated on it, per pod, as the adapter
and KEDA send it. (Prometheus Adapter itself is not served by the Go module proxy; see docs/autoscaling.md.)

In flight is held exactly (HTTP requests whose bodies are still arriving are counted from their first byte), so
its per-pod value is known; queue depth and queue wait come from a gRPC load on one replica while the other
idles, and the p90 must fall in the histogram bucket the runtime's own counts put it in.
"""

from __future__ import annotations

import math
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chart_support import FULL_VALUES, Prometheus, find, prometheus_binary, prometheus_relabel_configs, render
from conftest import fresh_images, png_bytes
from operator_support import eventually
from runtime_support import RuntimeProcess, free_port

from kubeinfer.clients import Client
from kubeinfer.operator.scaling import SCALING_METRICS
from kubeinfer.runtime import metrics as rm

NAMESPACE = "vision"
MODEL = "scaled"
PODS = ("scaled-6c9f8d7b5-aaaaa", "scaled-6c9f8d7b5-bbbbb")
# What the adapter sends for a Pods metric of these pods (its <<.LabelMatchers>> and <<.GroupBy>>).
MATCHERS = f'namespace="{NAMESPACE}",pod=~"{"|".join(PODS)}"'


@pytest.fixture(scope="module")
def replicas(runtime_factory: Callable[..., RuntimeProcess], detector_model: Path) -> list[RuntimeProcess]:
    """Two replicas of InferenceService ``scaled``: one image per model call, so a burst queues."""
    started = [runtime_factory("--task", "detect", "--model", str(detector_model), "--model-name", MODEL,
                               "--max-batch-size", "1", "--workers", "4", wait=False) for _ in PODS]
    return [runtime.wait_ready() for runtime in started]  # started together: their model loads overlap


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, replicas: list[RuntimeProcess]) -> Iterator[Prometheus]:
    """Scrapes both replicas each second, labelled by the chart's PodMonitor rules as pod discovery would."""
    prometheus_binary()
    monitor = find(render(values=FULL_VALUES), "PodMonitor")
    static = [{"targets": [f"127.0.0.1:{runtime.http_port}"], "labels": {
        "__meta_kubernetes_namespace": NAMESPACE, "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "kubeinfer-runtime",
        "__meta_kubernetes_pod_label_kubeinfer_io_inferenceservice": MODEL,
        "__meta_kubernetes_pod_container_port_name": "http"}} for pod, runtime in zip(PODS, replicas, strict=True)]
    config = [{"job_name": "runtimes", "metrics_path": "/metrics", "static_configs": static,
               "relabel_configs": prometheus_relabel_configs(monitor)}]
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), free_port(), config)
    try:
        server.wait_ready()
        eventually(lambda: len(server.query("up == 1")) == 2, timeout=30, what="both replicas scraped")
        yield server
    finally:
        server.stop()


def per_pod(prometheus: Prometheus, metric: str) -> dict[str, float]:
    """The adapter rule's value for each pod, as the custom metrics API would serve it."""
    expr = SCALING_METRICS[metric].adapter_query(MATCHERS, "pod")
    return {sample["metric"]["pod"]: float(sample["value"][1]) for sample in prometheus.query(expr)}


def keda_value(prometheus: Prometheus, metric: str) -> float:
    (sample,) = prometheus.query(SCALING_METRICS[metric].keda_query(NAMESPACE, MODEL))
    return float(sample["value"][1])


def hold_requests(runtime: RuntimeProcess, count: int) -> list[socket.socket]:
    """``count`` POST /v1/detect calls whose JSON bodies never finish arriving: in flight until closed."""
    held = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", runtime.http_port))
        conn.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"images\": [")
        held.append(conn)
    return held


def test_inflight_per_pod_is_exactly_the_requests_each_replica_serves(prometheus: Prometheus,
                                                                      replicas: list[RuntimeProcess]) -> None:
    held = hold_requests(replicas[0], 3) + hold_requests(replicas[1], 1)
    try:
        eventually(lambda: per_pod(prometheus, "inflight") == {PODS[0]: 3.0, PODS[1]: 1.0}, timeout=20,
                   what=f"in flight 3 and 1 per pod (now {per_pod(prometheus, 'inflight')})")
        # KEDA's query is the total, which its HPA divides by the replica count (AverageValue).
        assert keda_value(prometheus, "inflight") == 4.0
    finally:
        for conn in held:
            conn.close()
    eventually(lambda: per_pod(prometheus, "inflight") == {PODS[0]: 0.0, PODS[1]: 0.0}, timeout=20,
               what="no request in flight once the clients went away")


def load(runtime: RuntimeProcess, seconds: float, threads: int = 4) -> int:
    """Detect calls of 4 images each from several threads; returns how many images were sent."""
    images = [png_bytes(image.pixels) for image in fresh_images(11, 4)]
    sent = [0] * threads

    def worker(index: int) -> None:
        deadline = time.monotonic() + seconds
        with Client(runtime.grpc_target, timeout=60) as client:
            while time.monotonic() < deadline:
                client.detect(images)
                sent[index] += len(images)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(sent)


def bucket_of_p90(runtime: RuntimeProcess) -> tuple[float, float]:
    """(lower, upper) bounds of the queue-wait bucket holding the 90th percentile, from the runtime's own counts."""
    with urllib.request.urlopen(f"{runtime.http_url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    pattern = re.compile(rf'^{rm.QUEUE_WAIT}_bucket\{{[^}}]*le="([^"]+)"[^}}]*\}} (\S+)$', re.M)
    buckets = sorted((float(le), float(count)) for le, count in pattern.findall(text))
    total = buckets[-1][1]
    lower = 0.0
    for upper, count in buckets:
        if count >= 0.9 * total:
            return lower, upper
        lower = upper
    raise AssertionError(f"no bucket holds the p90: {buckets}")


def test_queue_and_latency_follow_the_loaded_replica_only(prometheus: Prometheus,
                                                          replicas: list[RuntimeProcess]) -> None:
    loaded = replicas[0]  # replicas[1] stays idle
    seen: dict[str, list[float]] = {pod: [] for pod in PODS}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pod, value in per_pod(prometheus, "queue").items():
                seen[pod].append(value)
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sent = load(loaded, seconds=8.0)
        time.sleep(2.5)  # two more scrapes: the queue has drained
    finally:
        done.set()
        watcher.join()
    assert sent > 0
    assert max(seen[PODS[0]]) >= 2, f"the loaded replica never showed a queue: {seen[PODS[0]]}"
    assert seen[PODS[1]] and max(seen[PODS[1]]) == 0, f"the idle replica showed a queue: {seen[PODS[1]]}"
    assert per_pod(prometheus, "queue") == {PODS[0]: 0.0, PODS[1]: 0.0}

    # p90 queue wait: the loaded pod's value lies in the bucket its own counts put the p90 in; the idle pod has
    # none (no waits measured: dropped, not NaN, so the HPA treats it conservatively).
    latency = per_pod(prometheus, "latency")
    assert set(latency) == {PODS[0]}, latency
    lower, upper = bucket_of_p90(loaded)
    assert lower <= latency[PODS[0]] <= upper, (latency, lower, upper)
    keda = keda_value(prometheus, "latency")
    assert math.isfinite(keda) and lower <= keda <= upper, (keda, lower, upper)
    assert keda_value(prometheus, "queue") == 0.0
