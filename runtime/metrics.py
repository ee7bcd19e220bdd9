"""Every Prometheus metric of the runtime, in one place.

Dashboards and tests take metric names from here. Each metric carries a ``model``
label (the InferenceService name), so one Prometheus can tell runtimes apart.

With ``--frontends N`` the runtime is several processes: prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by ``use_multiprocess_dir`` before any metric is made) keeps each process's
values in a file, and whichever frontend answers ``/metrics`` merges them, so a scrape sees the whole pod. Gauges
say how they merge (``multiprocess_mode``; ignored in one process); what cannot be merged (the build
info, the GPU collector) lives in ``process_registry`` and is exposed by the answering process.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

PREFIX = "kubeinfer_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Names, for dashboards and tests (the _total/_bucket suffixes are Prometheus's).
REQUESTS = PREFIX + "requests_total"
REQUEST_DURATION = PREFIX + "request_duration_seconds"
BATCH_SIZE = PREFIX + "batch_size"
QUEUE_WAIT = PREFIX + "queue_wait_seconds"
INFERENCE_DURATION = PREFIX + "inference_duration_seconds"
IMAGES = PREFIX + "images_processed_total"
MODEL_READY = PREFIX + "model_ready"
# Autoscaling signals (spec.autoscaling.metric queue, inflight, latency): QUEUE_DEPTH, IN_FLIGHT and QUEUE_WAIT are
# read per pod by the chart's Prometheus Adapter rules and by KEDA triggers (kubeinfer.operator.scaling); keep
# these names and their labels stable.
QUEUE_DEPTH = PREFIX + "queue_depth"
IN_FLIGHT = PREFIX + "requests_in_flight"
ACTIVE_STREAMS = PREFIX + "active_streams"
FRAMES = PREFIX + "frames_processed_total"
GALLERY_SIZE = PREFIX + "gallery_size"
# Progressive rollout (issue #34): the traffic table loaded, and the shadow mirror's calls to the candidate.
TRAFFIC_GENERATION = PREFIX + "traffic_generation"
SHADOW_REQUESTS = PREFIX + "shadow_requests_total"  # result: compared | error | dropped
SHADOW_AGREEMENT = PREFIX + "shadow_agreement_total"  # sum of the compared calls' scores in [0, 1]
SHADOW_CLASS_MATCHES = PREFIX + "shadow_class_matches_total"  # detect, per class: outcome tp | fp | fn
SHADOW_DURATION = PREFIX + "shadow_duration_seconds"


def use_multiprocess_dir(path: str) -> None:
    """From now on, this process's metrics and its children's go to files in ``path``, merged at each scrape.
    prometheus_client picks how it keeps values when it is first imported, and a runtime learns it is several
    processes only after its flags were read (the task modules that declare them import it): it picks again."""
    os.environ[MULTIPROCESS_DIR] = path
    values.ValueClass = values.get_value_class()


class RuntimeMetrics:
    """The runtime's metrics in their own registry (so tests can build several)."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry or CollectorRegistry()
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_DIR) or None
        self.process_registry = CollectorRegistry() if self.multiprocess_dir else self.registry
        r = self.registry
        self.requests = Counter(REQUESTS.removesuffix("_total"), "Requests by protocol, RPC and status code",
                                ["model", "protocol", "rpc", "code"], registry=r)
        self.request_duration = Histogram(REQUEST_DURATION, "Request latency, end to end in the server",
                                          ["model", "protocol", "rpc"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(BATCH_SIZE, "Images per model call made by the dynamic batcher",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram(QUEUE_WAIT, "Time an image waited in the batcher queue",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_duration = Histogram(INFERENCE_DURATION, "Model time per batch",
                                            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter(IMAGES.removesuffix("_total"), "Images run through the model",
                              ["model", "task"], registry=r)
        self.model_ready = Gauge(MODEL_READY, "1 once the model is loaded and warmed, 0 while loading or draining",
                                 ["model"], registry=r, multiprocess_mode="livemin")
        self.queue_depth = Gauge(QUEUE_DEPTH, "Images waiting in the batcher queue", ["model"], registry=r,
                                 multiprocess_mode="livesum")
        self.in_flight = Gauge(IN_FLIGHT, "Requests being served", ["model", "protocol"], registry=r,
                               multiprocess_mode="livesum")
        self.active_streams = Gauge(ACTIVE_STREAMS, "Open streams holding state", ["model", "task"], registry=r,
                                    multiprocess_mode="livesum")
        self.frames = Counter(FRAMES.removesuffix("_total"), "Stream and video frames processed",
                              ["model", "task"], registry=r)
        self.gallery_size = Gauge(GALLERY_SIZE, "Vectors in the recognition gallery", ["model"], registry=r,
                                  multiprocess_mode="livemax")
        self.traffic_generation = Gauge(TRAFFIC_GENERATION, "The traffic table generation loaded (0 without one)",
                                        ["model"], registry=r, multiprocess_mode="livemax")
        self.shadow_requests = Counter(SHADOW_REQUESTS.removesuffix("_total"),
                                       "Calls mirrored to the candidate revision, by result (compared, error, dropped)",
                                       ["model", "result"], registry=r)
        self.shadow_agreement = Counter(SHADOW_AGREEMENT.removesuffix("_total"),
                                        "Sum of the compared mirrored calls' agreement scores (mean: / compared)",
                                        ["model"], registry=r)
        self.shadow_class_matches = Counter(SHADOW_CLASS_MATCHES.removesuffix("_total"),
                                            "Detect mirror: the candidate's boxes per class, matched at IoU 0.5 "
                                            "(tp), extra (fp) or missed (fn)", ["model", "class", "outcome"],
                                            registry=r)
        self.shadow_duration = Histogram(SHADOW_DURATION, "The candidate's latency as the shadow mirror saw it",
                                         ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.build = Info("kubeinfer_build", "Runtime version, task and model format", ["model"],
                          registry=self.process_registry)

    def observe_request(self, protocol: str, rpc: str, code: str, seconds: float) -> None:
        self.requests.labels(self.model, protocol, rpc, code).inc()
        self.request_duration.labels(self.model, protocol, rpc).observe(seconds)

    def observe_batch(self, size: int, seconds: float, waits: list[float]) -> None:
        self.batch_size.labels(self.model).observe(size)
        self.inference_duration.labels(self.model).observe(seconds)
        histogram = self.queue_wait.labels(self.model)
        for wait in waits:
            histogram.observe(wait)

    def exposition(self) -> tuple[bytes, str]:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry()
        MultiProcessCollector(merged, self.multiprocess_dir)
        return generate_latest(merged) + generate_latest(self.process_registry), CONTENT_TYPE_LATEST
