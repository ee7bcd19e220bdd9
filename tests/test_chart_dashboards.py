"""The Grafana dashboards as files: current schema, generated from the metric modules, well laid out.

Whether their queries return data is test_dashboards_prometheus.py's job; this checks the JSON model.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from chart_support import DASHBOARDS, load_dashboard, panels

from kubeinfer.operator import metrics as om
from kubeinfer.runtime import gpu_metrics as gm
from kubeinfer.runtime import metrics as rm

NAMES = ("runtime.json", "operator.json")
PANEL_TYPES = {"row", "timeseries", "stat", "heatmap"}


def test_checked_in_dashboards_are_what_the_generator_writes() -> None:
    result = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_current_schema_and_panel_types(name: str) -> None:
    dashboard = load_dashboard(name)
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"].startswith("kubeinfer-") and len(dashboard["uid"]) <= 40
    assert dashboard["id"] is None  # so Grafana's provisioning assigns one
    kinds = {p["type"] for p in panels(dashboard)}
    assert kinds <= PANEL_TYPES
    assert {"timeseries", "stat"} <= kinds
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", NAMES)
def test_every_query_uses_the_datasource_variable(name: str) -> None:
    dashboard = load_dashboard(name)
    (datasource,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (datasource["name"], datasource["query"]) == ("datasource", "prometheus")
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel.get("description"), f"{panel['title']} has no description"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert '=~"$namespace"' in target["expr"], f"{panel['title']}: not filtered by namespace"


@pytest.mark.parametrize("name", NAMES)
def test_panels_do_not_overlap(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in load_dashboard(name)["panels"]:
        pos: dict[str, Any] = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_runtime_dashboard_covers_the_issue() -> None:
    """Request rate and errors by RPC and code, latency quantiles, queue vs inference, batch sizes,
    throughput, streams and GPU: each backed by the metric the runtime exports."""
    dashboard = load_dashboard("runtime.json")
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels(dashboard)}
    wanted = {
        "Requests / s by RPC and code": [rm.REQUESTS, "rpc, code"],
        "Errors / s by RPC and code": [rm.REQUESTS, 'code!="OK"'],
        "Latency p50 / p95 / p99 by RPC": ["histogram_quantile(0.5,", "histogram_quantile(0.95,",
                                           "histogram_quantile(0.99,", rm.REQUEST_DURATION],
        "Queue wait vs inference time": [rm.QUEUE_WAIT, rm.INFERENCE_DURATION],
        "Batch size distribution": [rm.BATCH_SIZE + "_bucket"],
        "Images and frames / s": [rm.IMAGES, rm.FRAMES],
        "Active streams": [rm.ACTIVE_STREAMS],
        "GPU utilisation": [gm.GPU_UTILIZATION],
        "GPU memory": [gm.GPU_MEMORY_USED, gm.GPU_MEMORY_TOTAL],
        # The autoscaling signals, per replica, as the adapter rules compute them.
        "Queue depth per replica": [rm.QUEUE_DEPTH, "by (namespace, pod)"],
        "Requests in flight per replica": [rm.IN_FLIGHT, "by (namespace, pod)"],
        "Queue wait p90 per replica": ["histogram_quantile(0.9,", rm.QUEUE_WAIT + "_bucket", "le, namespace, pod"],
        # A progressive rollout, per revision (the PodMonitor's `revision` label).
        "Shadow agreement": [rm.SHADOW_AGREEMENT, rm.SHADOW_REQUESTS, 'result="compared"', "by (revision)"],
        "Shadow requests / s by result": [rm.SHADOW_REQUESTS, "by (revision, result)"],
        "p99 latency by revision": ["histogram_quantile(0.99,", rm.REQUEST_DURATION, "le, revision"],
        "Traffic table generation": [rm.TRAFFIC_GENERATION, "by (revision)"],
    }
    for title, needles in wanted.items():
        assert title in exprs, title
        for needle in needles:
            assert needle in exprs[title], f"{title}: {needle}"
    (batch,) = [p for p in panels(dashboard) if p["title"] == "Batch size distribution"]
    assert batch["type"] == "heatmap" and batch["targets"][0]["format"] == "heatmap"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "inferenceservice"} <= variables.keys()
    assert "$namespace" in variables["inferenceservice"]["definition"]


def test_operator_dashboard_covers_the_issue() -> None:
    dashboard = load_dashboard("operator.json")
    text = " ".join(t["expr"] for p in panels(dashboard) for t in p.get("targets", []))
    for name in (om.RECONCILIATIONS_TOTAL, om.RECONCILE_DURATION_SECONDS, om.INFERENCESERVICES):
        assert name in text
    assert "sum by (result)" in text and "sum by (phase)" in text
