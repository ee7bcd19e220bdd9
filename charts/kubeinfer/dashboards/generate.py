"""Write the Grafana dashboards (runtime.json, operator.json) beside this file.

The dashboards are generated, not hand-edited, so every PromQL expression takes its
metric names from the modules that own them (``kubeinfer.runtime.metrics``,
``kubeinfer.runtime.gpu_metrics``, ``kubeinfer.operator.metrics``; the per-replica scaling signals from
``kubeinfer.operator.scaling``, as the autoscaler reads them). A test fails
when the checked-in JSON differs from what this script writes.

    python charts/kubeinfer/dashboards/generate.py          # rewrite
    python charts/kubeinfer/dashboards/generate.py --check  # exit 1 if stale

Output is Grafana's dashboard JSON model, schemaVersion 39 (Grafana 10.4+/11):
timeseries, stat and heatmap panels and a Prometheus ``datasource`` variable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kubeinfer.operator.scaling import SCALING_METRICS as SCALING
from kubeinfer.runtime import gpu_metrics as gm
from kubeinfer.runtime import metrics as rm

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"

# Label selectors: `namespace` and `pod` come from the PodMonitor/ServiceMonitor relabelings;
# `model` is the InferenceService name every runtime metric carries.
RUNTIME_SEL = 'namespace=~"$namespace", model=~"$inferenceservice"'
OPERATOR_SEL = 'namespace=~"$namespace"'  # the operator pod's namespace; its metrics have no per-object labels


class Layout:
    """Places panels left to right on Grafana's 24-column grid, row by row."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "id": self._id(), "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, panel: dict[str, Any], width: int, height: int) -> None:
        if self.x + width > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def target(expr: str, legend: str = "__auto", ref: str = "A", fmt: str = "time_series") -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "format": fmt,
            "range": True, "instant": False, "editorMode": "code"}


def targets(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def timeseries(title: str, description: str, unit: str, tgts: list[dict[str, Any]], *,
               stack: bool = False, minimum: float | None = 0) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False,
        "axisPlacement": "auto", "axisSoftMin": minimum, "lineInterpolation": "linear", "pointSize": 4,
        "gradientMode": "none", "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "off"},
    }
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": tgts,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"},
                                     "thresholds": _thresholds()}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, description: str, unit: str, expr: str, *, mappings: list[dict[str, Any]] | None = None,
         red_above: float | None = None, decimals: int | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "thresholds"}, "mappings": mappings or [],
                                "thresholds": _thresholds(red_above)}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": [target(expr)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
                    "textMode": "auto", "wideLayout": True, "showPercentChange": False},
    }


def heatmap(title: str, description: str, expr: str, unit: str) -> dict[str, Any]:
    return {
        "type": "heatmap", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": [target(expr, "{{le}}", fmt="heatmap")],
        "fieldConfig": {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                                                "scaleDistribution": {"type": "linear"}}}, "overrides": []},
        "options": {
            "calculate": False, "cellGap": 1, "cellValues": {"unit": "short"},
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5, "fill": "dark-orange",
                      "reverse": False},
            "exemplars": {"color": "rgba(255,0,255,0.7)"}, "filterValues": {"le": 1e-9},
            "legend": {"show": True}, "rowsFrame": {"layout": "auto"}, "showValue": "never",
            "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": False},
            "yAxis": {"axisPlacement": "left", "unit": unit, "reverse": False},
        },
    }


def _thresholds(red_above: float | None = None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if red_above is not None:
        steps.append({"color": "red", "value": red_above})
    return {"mode": "absolute", "steps": steps}


def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": ""}


def query_variable(name: str, label: str, definition: str) -> dict[str, Any]:
    """A multi-value variable filled by ``label_values(...)``; 'All' matches every value."""
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE, "definition": definition,
        "query": {"query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
        "current": {}, "hide": 0, "includeAll": True, "allValue": ".*", "multi": True, "options": [],
        "refresh": 2, "regex": "", "sort": 1,
    }


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
              panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description, "editable": True, "fiscalYearStartMonth": 0, "graphTooltip": 1, "id": None,
        "links": [], "panels": panels, "refresh": "30s", "schemaVersion": SCHEMA_VERSION,
        "tags": ["kubeinfer"], "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": "now-1h", "to": "now"}, "timepicker": {}, "timezone": "browser", "title": title,
        "uid": uid, "version": 1, "weekStart": "",
    }


def quantile(q: float, histogram: str, selector: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{{{selector}}}[{RATE}])))"


def runtime_dashboard() -> dict[str, Any]:
    s = RUNTIME_SEL
    requests = rm.REQUESTS
    errors = f'{requests}{{{s}, code!="OK"}}'
    layout = Layout()

    layout.row("Overview")
    layout.add(stat("Ready replicas", "Runtime pods with the model loaded and warm (model_ready=1).", "none",
                    f"sum({rm.MODEL_READY}{{{s}}})", decimals=0), 4, 4)
    layout.add(stat("Requests / s", "All RPCs, all status codes.", "reqps",
                    f"sum(rate({requests}{{{s}}}[{RATE}]))"), 4, 4)
    layout.add(stat("Error ratio", "Share of requests that did not end with code OK (0 when there were none).",
                    "percentunit",
                    f"(sum(rate({errors}[{RATE}])) or vector(0)) / sum(rate({requests}{{{s}}}[{RATE}]))",
                    red_above=0.05), 4, 4)
    layout.add(stat("p95 latency", "95th percentile of end-to-end request latency in the server.", "s",
                    quantile(0.95, rm.REQUEST_DURATION, s), red_above=1.0), 4, 4)
    layout.add(stat("Images / s", "Images run through the model, all tasks.", "short",
                    f"sum(rate({rm.IMAGES}{{{s}}}[{RATE}]))"), 4, 4)
    layout.add(stat("GPU", "Whether the runtimes serve on a GPU they can read (kubeinfer_gpu_present).", "none",
                    f"max({gm.GPU_PRESENT}{{{s}}})",
                    mappings=[{"type": "value", "options": {"0": {"text": "CPU only", "index": 0},
                                                            "1": {"text": "GPU", "index": 1}}}]), 4, 4)

    layout.row("Requests")
    layout.add(timeseries("Requests / s by RPC and code", "gRPC and REST calls by method and final status code.",
                          "reqps", targets((f"sum by (protocol, rpc, code) (rate({requests}{{{s}}}[{RATE}]))",
                                            "{{protocol}} {{rpc}} {{code}}")), stack=True), 12, 8)
    layout.add(timeseries("Errors / s by RPC and code", "Calls that ended with a code other than OK.", "reqps",
                          targets((f"sum by (protocol, rpc, code) (rate({errors}[{RATE}]))",
                                   "{{protocol}} {{rpc}} {{code}}")), stack=True), 12, 8)
    layout.add(timeseries("Latency p50 / p95 / p99 by RPC", "End-to-end latency in the server, per RPC.", "s",
                          targets(*((quantile(q, rm.REQUEST_DURATION, s, "rpc"), f"p{round(q * 100)} {{{{rpc}}}}")
                                    for q in (0.5, 0.95, 0.99)))), 12, 8)
    layout.add(timeseries("Requests in flight", "Requests being served right now, by protocol.", "short",
                          targets((f"sum by (protocol) ({rm.IN_FLIGHT}{{{s}}})", "{{protocol}}"))), 12, 8)

    layout.row("Batching and model")
    layout.add(timeseries("Queue wait vs inference time", "Time an image waits in the batcher queue against the "
                          "model time of the batch it joins (p50 and p95).", "s",
                          targets((quantile(0.5, rm.QUEUE_WAIT, s), "queue wait p50"),
                                  (quantile(0.95, rm.QUEUE_WAIT, s), "queue wait p95"),
                                  (quantile(0.5, rm.INFERENCE_DURATION, s), "inference p50"),
                                  (quantile(0.95, rm.INFERENCE_DURATION, s), "inference p95"))), 12, 8)
    layout.add(heatmap("Batch size distribution", "Images per model call made by the dynamic batcher.",
                       f"sum by (le) (increase({rm.BATCH_SIZE}_bucket{{{s}}}[{RATE}]))", "short"), 12, 8)
    layout.add(timeseries("Mean batch size", "Average images per model call.", "short",
                          targets((f"sum(rate({rm.BATCH_SIZE}_sum{{{s}}}[{RATE}])) / "
                                   f"sum(rate({rm.BATCH_SIZE}_count{{{s}}}[{RATE}]))", "mean batch size"))), 12, 8)

    layout.row("Scaling signals per replica")
    # Exactly what an HPA with autoscaling.metric queue, inflight or latency reads through the chart's Prometheus
    # Adapter rules (kubeinfer.operator.scaling), per pod, so a scale-up can be read off these panels.
    per_pod = "namespace, pod"
    layout.add(timeseries("Queue depth per replica", "Images waiting in each pod's batcher queue: what "
                          "autoscaling.metric queue averages over the replicas and compares with its target.",
                          "short", targets((SCALING["queue"].adapter_query(s, per_pod), "{{namespace}}/{{pod}}"))),
               8, 8)
    layout.add(timeseries("Requests in flight per replica", "Requests each pod is serving, all protocols: what "
                          "autoscaling.metric inflight averages over the replicas.", "short",
                          targets((SCALING["inflight"].adapter_query(s, per_pod), "{{namespace}}/{{pod}}"))), 8, 8)
    layout.add(timeseries("Queue wait p90 per replica", "90th percentile of each pod's batcher queue wait over "
                          "the last 2 minutes: what autoscaling.metric latency reads (a pod without traffic has "
                          "none).", "s",
                          targets((SCALING["latency"].adapter_query(s, per_pod), "{{namespace}}/{{pod}}"))), 8, 8)

    layout.row("Throughput and streams")
    layout.add(timeseries("Images and frames / s", "Images run through the model, and stream or video frames, by "
                          "task. Frames appear only for stream-classify and video runtimes.", "short",
                          targets((f"sum by (task) (rate({rm.IMAGES}{{{s}}}[{RATE}]))", "images {{task}}"),
                                  (f"sum by (task) (rate({rm.FRAMES}{{{s}}}[{RATE}]))", "frames {{task}}"))),
               12, 8)
    layout.add(timeseries("Active streams", "Open streams holding state (stream-classify, video); empty for other "
                          "tasks.", "short",
                          targets((f"sum by (task) ({rm.ACTIVE_STREAMS}{{{s}}})", "{{task}}"))), 6, 8)
    layout.add(timeseries("Gallery size", "Vectors in the recognition gallery (recognize); empty for other tasks.",
                          "short", targets((f"max by (model) ({rm.GALLERY_SIZE}{{{s}}})", "{{model}}"))), 6, 8)

    layout.row("Rollout")
    # A progressive rollout (spec.rollout): `revision` comes from the pods' kubeinfer.io/revision label (PodMonitor
    # relabeling). The shadow series are the stable revision's: its replicas mirror calls to the candidate.
    compared = f'{rm.SHADOW_REQUESTS}{{{s}, result="compared"}}'
    layout.add(timeseries("Shadow agreement", "Mean agreement of the calls the stable revision mirrored to the "
                          "candidate (detect: box F1 at IoU 0.5; classify: top-1; recognize: identity), by the "
                          "mirroring revision. The operator's analysis compares it with minAgreement.", "percentunit",
                          targets((f"sum by (revision) (rate({rm.SHADOW_AGREEMENT}{{{s}}}[{RATE}])) / "
                                   f"sum by (revision) (rate({compared}[{RATE}]))", "{{revision}} vs candidate"))),
               6, 8)
    layout.add(timeseries("Shadow requests / s by result", "Calls mirrored to the candidate: compared, error (the "
                          "candidate failed or timed out) or dropped (64 mirrored calls already in flight).",
                          "reqps", targets((f"sum by (revision, result) (rate({rm.SHADOW_REQUESTS}{{{s}}}[{RATE}]))",
                                            "{{revision}} {{result}}")), stack=True), 6, 8)
    layout.add(timeseries("p99 latency by revision", "99th percentile of end-to-end request latency in the server, "
                          "per revision (a candidate's includes the mirrored calls it serves). The operator's "
                          "analysis compares candidate / stable with maxLatencyRatio.", "s",
                          targets((quantile(0.99, rm.REQUEST_DURATION, s, "revision"), "p99 {{revision}}"))), 6, 8)
    layout.add(timeseries("Traffic table generation", "The generation of the traffic table (NAME-traffic) each "
                          "revision's replicas have loaded: 0 without one; replicas behind the others have not yet "
                          "seen the operator's last change.", "none",
                          targets((f"max by (revision) ({rm.TRAFFIC_GENERATION}{{{s}}})", "{{revision}}"))), 6, 8)

    layout.row("GPU")
    no_gpu = " Empty when the runtimes serve on CPU: see the GPU stat."
    layout.add(timeseries("GPU utilisation", "Share of time a kernel ran on each runtime's GPU (NVML)." + no_gpu,
                          "percentunit",
                          targets((f"max by (namespace, pod, device) ({gm.GPU_UTILIZATION}{{{s}}})",
                                   "{{pod}} {{device}}"))), 12, 8)
    layout.add(timeseries("GPU memory", "Memory in use on the device, its size, and what the runtime's tensors "
                          "hold." + no_gpu, "bytes",
                          targets((f"max by (namespace, pod, device) ({gm.GPU_MEMORY_USED}{{{s}}})",
                                   "used {{pod}} {{device}}"),
                                  (f"max by (namespace, pod, device) ({gm.GPU_MEMORY_TOTAL}{{{s}}})",
                                   "total {{pod}} {{device}}"),
                                  (f"max by (namespace, pod, device) ({gm.GPU_MEMORY_ALLOCATED}{{{s}}})",
                                   "allocated by torch {{pod}} {{device}}"))), 12, 8)

    variables = [
        query_variable("namespace", "Namespace", f"label_values({rm.MODEL_READY}, namespace)"),
        query_variable("inferenceservice", "InferenceService",
                       f'label_values({rm.MODEL_READY}{{namespace=~"$namespace"}}, model)'),
    ]
    return dashboard("kubeinfer-runtime", "kubeinfer / Runtime",
                     "Inference runtimes: traffic, errors, latency, batching, throughput, streams, rollouts and GPU.",
                     variables, layout.panels)


def operator_dashboard() -> dict[str, Any]:
    from kubeinfer.operator import metrics as om

    s = OPERATOR_SEL
    reconciliations = om.RECONCILIATIONS_TOTAL
    duration = om.RECONCILE_DURATION_SECONDS
    layout = Layout()

    layout.row("Overview")
    layout.add(stat("InferenceServices", "InferenceServices the operator manages, all phases.", "none",
                    f"sum({om.INFERENCESERVICES}{{{s}}})", decimals=0), 6, 4)
    layout.add(stat("Not ready", "InferenceServices in a phase other than Ready.", "none",
                    f'sum({om.INFERENCESERVICES}{{{s}, phase!="Ready"}})', red_above=1, decimals=0), 6, 4)
    layout.add(stat("Reconciliations / s", "All results.", "ops",
                    f"sum(rate({reconciliations}{{{s}}}[{RATE}]))"), 6, 4)
    layout.add(stat("p95 reconcile time", "95th percentile of one reconciliation's duration.", "s",
                    quantile(0.95, duration, s), red_above=5.0), 6, 4)

    layout.row("Reconciliation")
    layout.add(timeseries("Reconciliations / s by result", "Reconciliations by outcome: success, error (the spec "
                          "cannot be served), retry (a transient failure kopf retries).", "ops",
                          targets((f"sum by (result) (rate({reconciliations}{{{s}}}[{RATE}]))", "{{result}}")),
                          stack=True), 12, 8)
    layout.add(timeseries("Reconcile duration p50 / p95 / p99", "Time to render and apply an InferenceService's "
                          "children and write its status.", "s",
                          targets(*((quantile(q, duration, s), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)))),
               12, 8)
    layout.add(timeseries("InferenceServices by phase", "How many InferenceServices are in each phase.", "none",
                          targets((f"sum by (phase) ({om.INFERENCESERVICES}{{{s}}})", "{{phase}}")), stack=True),
               24, 8)

    variables = [query_variable("namespace", "Operator namespace", f"label_values({om.INFERENCESERVICES}, namespace)")]
    return dashboard("kubeinfer-operator", "kubeinfer / Operator",
                     "The kubeinfer operator: reconciliations, their results and duration, InferenceServices by "
                     "phase. Per-InferenceService traffic is on the kubeinfer / Runtime dashboard.",
                     variables, layout.panels)


DASHBOARDS = {"runtime.json": runtime_dashboard, "operator.json": operator_dashboard}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a checked-in dashboard is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
