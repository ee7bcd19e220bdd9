"""Issue #29's longer flows on the real node, run by `make e2e` (pytest --e2e), not by `make test`.

No request lost by Kubernetes' own actions: a steady load of Detects through the ClusterIP Service from the host
and through ``Client.for_service`` from a pod while a spec change rolls the pods, while the replicas are scaled
3 -> 1, and while the operator's own pod is deleted in the middle of a rollout; and autoscaling for real: the HPA
controller scales an InferenceService 1 -> 3 on metrics-server's CPU numbers under load, and back to 1 after it.
(`kubectl delete pod` of one of three replicas is in tests/test_real_node_e2e.py, which `make test` runs.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import (
    Stage,
    apply,
    client_pod,
    detect_on_cpu,
    record,
    runtime_pods,
    staged,
    status,
    steady_load,
    stop_load,
    wait_pods,
    wait_ready,
)
from real_node_support import ready_pods, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RATE = 20.0


@pytest.fixture(scope="module")
def stage(real_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    with staged(real_cluster, "disrupt", tmp_path_factory.mktemp("disrupt")) as ready:
        served = "detector.onnx"
        url = f"{ready.server.url(served)}#sha256={ready.files.sha256(served)}"
        apply(ready.kubectl, ready.namespace, detect_on_cpu(url, replicas=3), client_pod())
        wait_ready(ready.api, ready.namespace, "detect-cpu", 3)
        ready_pods(ready.kubectl, ready.namespace, "app=client", 1)
        record("disruptions: stage", **{k: round(v, 1) for k, v in ready.timings.items()})
        yield ready


def under_load(stage: Stage, what: str, disrupt: Any, seconds: float = 300) -> None:
    """``disrupt()`` (it returns once Kubernetes is done) under RATE Detects a second from the host and from a
    pod; both must lose nothing."""
    host, inside = steady_load(stage, RATE, seconds)
    try:
        time.sleep(5)
        began = time.monotonic()
        disrupt()
        took = time.monotonic() - began
        time.sleep(3)
    finally:
        host_report, pod_report = stop_load(stage, host, inside)
    record(what, seconds=round(took, 1), host=host_report.summary(), pod=pod_report.summary())
    assert host_report.failed == 0, host_report.failures[:5]
    assert pod_report.failed == 0, pod_report.failures[:5]
    assert min(host_report.sent, pod_report.sent) >= RATE * 10


def rolled(stage: Stage, replicas: int = 3) -> None:
    """Until the Deployment's rollout is complete and only the new pods are left."""
    stage.kubectl("rollout", "status", "-n", stage.namespace, "deployment/detect-cpu", "--timeout=400s")
    wait_pods(stage.kubectl, stage.namespace, "detect-cpu", replicas, timeout=120)
    wait_ready(stage.api, stage.namespace, "detect-cpu", replicas)


def change_spec(stage: Stage, confidence: float) -> None:
    stage.kubectl("patch", "-n", stage.namespace, "kisvc", "detect-cpu", "--type=merge", "-p",
                  json.dumps({"spec": {"thresholds": {"confidence": confidence}}}))
    wait_until(lambda: status(stage.api, stage.namespace, "detect-cpu").get("phase") != "Ready",
               "the rollout begun", 30, 0.2)


def test_a_rolling_update_from_a_spec_change_loses_no_request(stage: Stage) -> None:
    before = {p["metadata"]["name"] for p in runtime_pods(stage.kubectl, stage.namespace, "detect-cpu")}

    def roll() -> None:
        change_spec(stage, 0.3)
        rolled(stage)

    under_load(stage, "rolling update (3 replicas, spec change) under load", roll)
    after = {p["metadata"]["name"] for p in runtime_pods(stage.kubectl, stage.namespace, "detect-cpu")}
    assert not before & after  # every pod was replaced


def test_scaling_three_to_one_loses_no_request(stage: Stage) -> None:
    def scale() -> None:
        stage.kubectl("scale", "-n", stage.namespace, "kisvc/detect-cpu", "--replicas=1")
        wait_pods(stage.kubectl, stage.namespace, "detect-cpu", 1, timeout=120)

    under_load(stage, "kubectl scale 3 -> 1 under load", scale)
    stage.kubectl("scale", "-n", stage.namespace, "kisvc/detect-cpu", "--replicas=3")
    wait_pods(stage.kubectl, stage.namespace, "detect-cpu", 3)


def test_the_operator_pod_deleted_during_a_rollout_loses_no_request(stage: Stage) -> None:
    chart = stage.chart
    (operator,) = ready_pods(stage.kubectl, chart.namespace, chart.operator_selector, 1)

    def roll_without_operator() -> None:
        change_spec(stage, 0.35)
        stage.kubectl("delete", "pod", "-n", chart.namespace, operator["metadata"]["name"], "--wait=false")
        rolled(stage)
        # a new operator pod took over and reports the finished rollout
        (successor,) = ready_pods(stage.kubectl, chart.namespace, chart.operator_selector, 1, timeout=120)
        assert successor["metadata"]["name"] != operator["metadata"]["name"]

    under_load(stage, "rolling update with the operator pod deleted under load", roll_without_operator)
    assert wait_ready(stage.api, stage.namespace, "detect-cpu", 3)["observedGeneration"] >= 3


def test_cpu_autoscaling_goes_one_to_three_under_load_and_back(stage: Stage) -> None:
    """The real HPA controller (sync 5 s, downscale stabilization 15 s: localcluster.py) from metrics-server's
    numbers (10 s resolution): a runtime asking for 100m of CPU, driven well past its 50% target."""
    served = "detector.onnx"
    url = f"{stage.server.url(served)}#sha256={stage.files.sha256(served)}"
    scaled = detect_on_cpu(url, name="detect-auto")
    scaled["spec"].pop("replicas")
    scaled["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 50}
    scaled["spec"]["resources"]["requests"]["cpu"] = "100m"
    apply(stage.kubectl, stage.namespace, scaled)
    wait_ready(stage.api, stage.namespace, "detect-auto", 1)
    stage.cluster.node.wait_metrics()

    def hpa() -> dict[str, Any]:
        return stage.kubectl.json("get", "hpa", "-n", stage.namespace, "detect-auto")

    wait_until(lambda: (hpa().get("status") or {}).get("currentMetrics"), "the HPA reading CPU", 120, 2)
    host, inside = steady_load(stage, RATE, 300, service="detect-auto")
    began = time.monotonic()
    try:
        wait_pods(stage.kubectl, stage.namespace, "detect-auto", 3, timeout=240)
        up = time.monotonic() - began
        peak = hpa()["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
    finally:
        host_report, pod_report = stop_load(stage, host, inside)
    stopped = time.monotonic()
    wait_pods(stage.kubectl, stage.namespace, "detect-auto", 1, timeout=300)
    down = time.monotonic() - stopped
    events = [e["message"] for e in stage.kubectl.json("get", "events", "-n", stage.namespace,
                                                        "--field-selector", "involvedObject.name=detect-auto")["items"]
              if e.get("reason") == "SuccessfulRescale"]
    record("CPU autoscaling 1 -> 3 -> 1", up_s=round(up, 1), down_after_load_s=round(down, 1),
           utilization_at_3=f"{peak}%", host=host_report.summary(), pod=pod_report.summary(), events=events)
    assert any("above target" in e for e in events) and any("below target" in e for e in events), events
    assert host_report.failed == 0 and pod_report.failed == 0
    stage.kubectl("delete", "kisvc", "-n", stage.namespace, "detect-auto", "--wait=false")
