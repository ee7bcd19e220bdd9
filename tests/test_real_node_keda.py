"""Issue #29: queue-depth autoscaling of real runtime pods through KEDA, on the real node (`make e2e`, --e2e).

Every link is the real program (tests/keda_support.py): the chart's operator renders a KEDA ScaledObject for
``autoscaling: {engine: keda, metric: queue}``; KEDA's operator (built from its Go module) makes the HPA and
answers its metric by querying a real Prometheus that scrapes the runtime pods; KEDA's metrics adapter serves it as
``external.metrics.k8s.io`` through the API server; the cluster's HPA controller scales the Deployment; the kubelet
starts and stops real pods. Load: closed-loop Detects from the host (THREADS callers, each its own connection
through the ClusterIP Service), on a runtime batching one image at a time, so the batcher's queue grows.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from e2e_support import (
    Stage,
    apply,
    detect_on_cpu,
    e2e_load,
    record,
    runtime_pods,
    staged,
    wait_pods,
    wait_ready,
)
from keda_support import pod_prometheus, running_keda
from real_node_support import wait_until
from runtime_support import BackgroundTraffic

from kubeinfer.operator.scaling import SCALING_METRICS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

NAME = "detect-keda"
THREADS = 8  # callers, each waiting for its answer before the next call: at most THREADS images queued
TARGET = 2  # queued images per replica: THREADS queued on one replica want ceil(7 / 2) > 3 replicas
MAX_REPLICAS = 3


def scaled_detector(stage: Stage, prometheus_url: str) -> dict[str, Any]:
    """The detector example scaled by KEDA on its queue depth, one image per model call (a burst queues)."""
    served = "detector.onnx"
    url = f"{stage.server.url(served)}#sha256={stage.files.sha256(served)}"
    doc = detect_on_cpu(url, name=NAME)
    doc["spec"].pop("replicas")
    doc["spec"]["batching"] = {"maxBatchSize": 1, "maxDelayMs": 0}
    doc["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": MAX_REPLICAS, "metric": "queue",
                                  "target": TARGET, "engine": "keda", "prometheus": {"address": prometheus_url}}
    return doc


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def closed_loop(stage: Stage) -> tuple[BackgroundTraffic, list[Any]]:
    """THREADS callers of the InferenceService's ClusterIP Service, a client (a connection) each; the clients, for
    closing after ``stop()``."""
    image = e2e_load.detect_image()
    local = threading.local()
    clients: list[Any] = []

    def call() -> None:
        if not hasattr(local, "client"):
            local.client = stage.detect_client(NAME, timeout=30)
            clients.append(local.client)
        if not local.client.detect([image])[0].detections:
            raise AssertionError("no detection")

    return BackgroundTraffic(call, threads=THREADS), clients


def test_queue_depth_autoscaling_through_keda_goes_one_to_three_and_back(
        real_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("keda")
    with staged(real_cluster, "keda", folder) as stage, \
            pod_prometheus(real_cluster, stage.api, stage.namespace, folder / "prometheus") as prometheus, \
            running_keda(real_cluster, stage.api, folder) as keda:
        kubectl, namespace = stage.kubectl, stage.namespace
        apply(kubectl, namespace, scaled_detector(stage, prometheus.url))
        wait_ready(stage.api, namespace, NAME, 1)

        def scaled_object() -> dict[str, Any]:
            return kubectl.json("get", "scaledobject", "-n", namespace, NAME)

        def hpa() -> dict[str, Any]:
            return kubectl.json("get", "hpa", "-n", namespace, f"keda-hpa-{NAME}")

        # The operator's ScaledObject, taken up by KEDA (Ready), its HPA reading the metric through the adapter.
        def ready_scaled_object() -> dict[str, Any] | None:
            found = scaled_object()
            return found if condition_true(found, "Ready") else None

        so = wait_until(ready_scaled_object, "the ScaledObject Ready (by KEDA's operator)", 120, 1)
        assert so["spec"]["triggers"][0]["metadata"]["query"] == SCALING_METRICS["queue"].keda_query(namespace, NAME)
        wait_until(lambda: prometheus.query(f'kubeinfer_queue_depth{{namespace="{namespace}",model="{NAME}"}}'),
                   "Prometheus scraping the runtime pod", 60, 1)
        wait_until(lambda: (hpa().get("status") or {}).get("currentMetrics"), "KEDA's HPA reading the metric", 120, 2)
        assert keda.external_metric(namespace, NAME)[0]["value"] == "0"

        traffic, clients = closed_loop(stage)
        began = time.monotonic()
        peak = 0.0
        decided: dict[str, float] = {}  # the HPA's SuccessfulRescale events, seconds after the load's start/end
        try:
            def grown() -> bool:
                nonlocal peak
                for item in keda.external_metric(namespace, NAME):
                    peak = max(peak, _quantity(item["value"]))
                if any("above target" in e for e in _rescales(stage)):
                    decided.setdefault("up", time.monotonic() - began)
                return len(runtime_pods(kubectl, namespace, NAME)) == MAX_REPLICAS

            wait_until(grown, f"{MAX_REPLICAS} ready pods of {NAME} under load", 300, 1)
            up = time.monotonic() - began
            time.sleep(5)  # the load goes on a moment on three replicas
        finally:
            traffic.stop()  # asserts that every call was answered
            for client in clients:
                client.close()
        stopped = time.monotonic()
        wait_until(lambda: any("below target" in e for e in _rescales(stage)), "KEDA's HPA scaling down", 300, 1)
        decided["down"] = time.monotonic() - stopped
        wait_pods(kubectl, namespace, NAME, 1, timeout=300)
        down = time.monotonic() - stopped
        events = _rescales(stage)
        record("KEDA queue-depth autoscaling 1 -> 3 -> 1", up_s=round(up, 1),
               hpa_up_decision_s=round(decided.get("up", -1), 1), down_after_load_s=round(down, 1),
               hpa_down_decision_s=round(decided["down"], 1), peak_queue_total=peak, target_per_replica=TARGET,
               answered=traffic.ok, failed=len(traffic.errors), rescales=[e.split(";")[0] for e in events])
        assert traffic.errors == [] and traffic.ok > 0
        assert any("external metric s0-prometheus" in e and "above target" in e for e in events), events
        assert any("below target" in e for e in events), events
        assert peak > TARGET

        # KEDA's finalizer: the ScaledObject goes with the InferenceService while KEDA still runs.
        kubectl("delete", "kisvc", "-n", namespace, NAME, "--wait=true", "--timeout=120s")
        wait_until(lambda: kubectl("get", "scaledobject", "-n", namespace, NAME, check=False).returncode != 0,
                   "the ScaledObject deleted", 60, 1)


def _rescales(stage: Stage) -> list[str]:
    items = stage.kubectl.json("get", "events", "-n", stage.namespace, "--field-selector",
                               f"involvedObject.name=keda-hpa-{NAME}")["items"]
    return [e["message"] for e in items if e.get("reason") == "SuccessfulRescale"]


def _quantity(value: str) -> float:
    """A Kubernetes quantity as the metrics APIs write it ('7', '3500m')."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)
