"""Every PromQL expression of every dashboard panel, evaluated by a real Prometheus scraping real processes.

A real ``kubeinfer serve`` (the trained detector) is put under load from the gRPC client,
bad requests included so error codes exist, and a real ``kubeinfer operator`` reconciles
InferenceServices on the local control plane (a real kube-apiserver, controllers and kwok nodes). Prometheus
(Debian's package) scrapes both
with a generated configuration. There is no Kubernetes discovery here, so each static target
carries the ``__meta_kubernetes_*`` labels discovery would set, and the chart's own PodMonitor and
ServiceMonitor (rendered by helm) are turned into the relabel rules the Prometheus Operator would
generate: the dashboards' ``namespace``/``pod`` labels come from the same rules as in a cluster.

Then each panel query, with Grafana's variables substituted by the values the dashboards'
own ``label_values()`` variables return, goes through ``/api/v1/query`` and must return finite data.
Two kinds of series cannot exist in this setup, and the test demands proof instead of data:
GPU series on a CPU-only runtime (Prometheus must show ``kubeinfer_gpu_present == 0``), and series
of tasks the runtime does not serve (frames, streams, gallery: the served task comes from
``kubeinfer_build_info``). For both, Prometheus's metadata API must know the metric, so the
dashboard names a metric the runtime really exposes.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from chart_support import (
    FULL_VALUES,
    Prometheus,
    find,
    grafana_regex_escape,
    load_dashboard,
    panel_queries,
    parse_label_values,
    prometheus_binary,
    prometheus_relabel_configs,
    render,
    sanitize,
    substitute,
)
from cluster_support import Api, Kubectl, LocalCluster, install_crd
from conftest import fresh_images, png_bytes
from operator_support import OperatorProcess, eventually, is_path
from runtime_support import RuntimeProcess, free_port

from kubeinfer.clients import Client
from kubeinfer.operator import metrics as om
from kubeinfer.runtime import gpu_metrics as gm
from kubeinfer.runtime import metrics as rm

RUNTIME_NAMESPACE = "vision"  # a namespace the full values watch
RUNTIME_POD = "demo-6c9f8d7b5-x2x7k"
OPERATOR_NAMESPACE = "kubeinfer-system"
OPERATOR_POD = "kubeinfer-operator-7f9c6b8d4-q4m2n"
MODEL = "demo"
REVISION = "a1b2c3d4e5"  # the runtime pod's kubeinfer.io/revision label (an InferenceService with spec.rollout)
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval is for a 15 s scrape interval
LOAD_SECONDS = 6.0
LOAD_THREADS = 3

GPU_ONLY = {gm.GPU_UTILIZATION, gm.GPU_MEMORY_USED, gm.GPU_MEMORY_TOTAL, gm.GPU_MEMORY_ALLOCATED}
# Metrics only some tasks produce: metric -> the tasks that produce it.
TASK_ONLY = {rm.FRAMES: {"stream-classify", "video"}, rm.ACTIVE_STREAMS: {"stream-classify", "video"},
             rm.GALLERY_SIZE: {"recognize"}}
METRIC_NAME = re.compile(r"\b(kubeinfer_[a-z_]+)\b")


def runtime_scrape_config(monitor: dict[str, Any], target: str) -> dict[str, Any]:
    """The runtime as Kubernetes pod discovery would present it, behind the PodMonitor's rules."""
    discovered = {
        "__meta_kubernetes_namespace": RUNTIME_NAMESPACE,
        "__meta_kubernetes_pod_name": RUNTIME_POD,
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "kubeinfer-runtime",
        "__meta_kubernetes_pod_label_app_kubernetes_io_instance": MODEL,
        "__meta_kubernetes_pod_label_kubeinfer_io_inferenceservice": MODEL,
        "__meta_kubernetes_pod_label_kubeinfer_io_revision": REVISION,
        "__meta_kubernetes_pod_container_port_name": "http",
    }
    # A second discovered pod that the PodMonitor must NOT select (another app's http port).
    stranger = {**discovered, "__meta_kubernetes_pod_label_app_kubernetes_io_name": "something-else",
                "__meta_kubernetes_pod_name": "stranger"}
    return {"job_name": "runtimes", "metrics_path": monitor["spec"]["podMetricsEndpoints"][0]["path"],
            "static_configs": [{"targets": [target], "labels": discovered},
                               {"targets": [target], "labels": stranger}],
            "relabel_configs": prometheus_relabel_configs(monitor)}


def operator_scrape_config(monitor: dict[str, Any], service: dict[str, Any], target: str) -> dict[str, Any]:
    """The operator as Kubernetes endpoints discovery would present it, behind the ServiceMonitor's rules."""
    discovered = {
        "__meta_kubernetes_namespace": OPERATOR_NAMESPACE,
        "__meta_kubernetes_pod_name": OPERATOR_POD,
        "__meta_kubernetes_service_name": service["metadata"]["name"],
        "__meta_kubernetes_endpoint_port_name": service["spec"]["ports"][0]["name"],
        **{f"__meta_kubernetes_service_label_{sanitize(k)}": v for k, v in service["metadata"]["labels"].items()},
    }
    return {"job_name": service["metadata"]["name"], "metrics_path": monitor["spec"]["endpoints"][0]["path"],
            "static_configs": [{"targets": [target], "labels": discovered}],
            "relabel_configs": prometheus_relabel_configs(monitor)}


@pytest.fixture(scope="module")
def chart_monitors() -> dict[str, dict[str, Any]]:
    objects = render(values=FULL_VALUES)
    return {"PodMonitor": find(objects, "PodMonitor"), "ServiceMonitor": find(objects, "ServiceMonitor"),
            "Service": find(objects, "Service")}


@pytest.fixture(scope="module")
def operator_metrics(kube_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory,
                     ) -> Iterator[tuple[str, Api]]:
    """A real `kubeinfer operator` reconciling on the local control plane; yields its metrics address."""
    workdir = tmp_path_factory.mktemp("operator")
    kubectl = Kubectl(kube_cluster.kubeconfig, workdir / "kube-cache")
    install_crd(kubectl)
    api = Api(kube_cluster)
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": RUNTIME_NAMESPACE}})
    kube_cluster.add_models_claim(RUNTIME_NAMESPACE)
    port = free_port()
    operator = OperatorProcess(["--metrics-port", str(port), "--liveness-port", "0", "--listen-host", "127.0.0.1",
                                "--runtime-image", "kubeinfer-runtime:test", "--namespace", RUNTIME_NAMESPACE],
                               kube_cluster.kubeconfig, workdir / "operator.log")
    try:
        yield f"127.0.0.1:{port}", api
    finally:
        operator.stop()
        api.delete(f"/api/v1/namespaces/{RUNTIME_NAMESPACE}")


def drive_operator(api: Api) -> None:
    """Two InferenceServices: one becomes Ready (its pod does), one fails to reconcile (its Service name is taken)."""
    api.create(f"/api/v1/namespaces/{RUNTIME_NAMESPACE}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "broken"},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "someone-else"}}})
    for name, spec in (("demo", {"task": "detect", "model": {"uri": "pvc://models/detector.pt"}}),
                       ("broken", {"task": "detect", "model": {"uri": "pvc://models/detector.pt"}})):
        api.create(is_path(RUNTIME_NAMESPACE), {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                                                "metadata": {"name": name, "namespace": RUNTIME_NAMESPACE},
                                                "spec": spec})

    def phases() -> tuple[str, str] | None:
        demo = (api.get(is_path(RUNTIME_NAMESPACE, "demo")) or {}).get("status", {}).get("phase")
        broken = (api.get(is_path(RUNTIME_NAMESPACE, "broken")) or {}).get("status", {}).get("phase")
        return (demo, broken) if (demo, broken) == ("Ready", "Failed") else None

    eventually(phases, timeout=60, what="phases Ready and Failed")


@pytest.fixture(scope="module")
def demo_runtime(runtime_factory: Callable[..., RuntimeProcess], detector_model: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> RuntimeProcess:
    """The trained detector served as InferenceService ``demo``, the stable revision of a rollout in its shadow
    step whose candidate is itself (so the Rollout row's shadow series have data): half its successful calls are
    mirrored back to it, and those are not mirrored again."""
    traffic = tmp_path_factory.mktemp("traffic") / "traffic.json"
    runtime = runtime_factory("--task", "detect", "--model", str(detector_model), "--model-name", MODEL,
                              "--max-batch-delay-ms", "5", "--workers", "2", "--revision", REVISION,
                              "--traffic-file", str(traffic), wait=False)
    stable = {"revision": REVISION, "target": runtime.grpc_target}
    traffic.write_text(json.dumps({"generation": 1, "stable": stable, "candidate": stable, "shadowPercent": 50}))
    return runtime.wait_ready()


def send_load(target: str, seconds: float, threads: int) -> int:
    """Good and bad Detect calls from several threads; returns how many calls were made."""
    good = [png_bytes(image.pixels) for image in fresh_images(7, 8)]
    sent = [0] * threads
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        deadline = time.monotonic() + seconds
        with Client(target, timeout=30) as client:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                try:
                    if i % 7 == 0:
                        client.detect([b"definitely not an image"])  # INVALID_ARGUMENT
                    elif i % 11 == 0:
                        client.detect([])  # INVALID_ARGUMENT: no images
                    else:
                        client.detect(good[(i + index) % 8: (i + index) % 8 + 1 + i % 3])
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        failures.append(exc)
                        return
                sent[index] += 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not failures, f"unexpected errors under load: {failures}"
    return sum(sent)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, chart_monitors: dict[str, dict[str, Any]],
               demo_runtime: RuntimeProcess, operator_metrics: tuple[str, Api]) -> Iterator[Prometheus]:
    prometheus_binary()
    config = [runtime_scrape_config(chart_monitors["PodMonitor"], f"127.0.0.1:{demo_runtime.http_port}"),
              operator_scrape_config(chart_monitors["ServiceMonitor"], chart_monitors["Service"],
                                     operator_metrics[0])]
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), free_port(), config)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scraped(prometheus: Prometheus, demo_runtime: RuntimeProcess, operator_metrics: tuple[str, Api]) -> Prometheus:
    """Prometheus after the load and the reconciliations, once it has scraped their final counts."""
    # Both targets scraped once before anything happens, so rates and quantiles see the change.
    eventually(lambda: len(prometheus.query("up == 1")) == 2, timeout=30, what="both targets up")
    drive_operator(operator_metrics[1])
    eventually(lambda: prometheus.query(
        f'{om.INFERENCESERVICES}{{namespace="{OPERATOR_NAMESPACE}", phase="Ready"}} == 1'), timeout=30,
        what="Prometheus to scrape the operator's Ready InferenceService")
    sent = send_load(demo_runtime.grpc_target, LOAD_SECONDS, LOAD_THREADS)
    assert sent > 20, f"only {sent} requests in {LOAD_SECONDS}s"
    selector = f'namespace="{RUNTIME_NAMESPACE}", model="{MODEL}"'
    # the calls the runtime mirrored to itself (compared, or failed) are requests too
    mirrored = f'sum({rm.SHADOW_REQUESTS}{{{selector}, result=~"compared|error"}})'
    deadline = time.monotonic() + 30
    seen = (-1.0, -1.0)
    while time.monotonic() < deadline:
        result = prometheus.query(f"sum({rm.REQUESTS}{{{selector}}})")
        shadowed = prometheus.query(mirrored)
        seen = (float(result[0]["value"][1]) if result else -1.0, float(shadowed[0]["value"][1]) if shadowed else -1.0)
        if seen[1] > 0 and seen[0] == sent + seen[1]:
            return prometheus
        time.sleep(0.5)
    raise AssertionError(f"Prometheus saw {seen} requests and mirrored calls, the load sent {sent}:\n"
                         f"{prometheus.logs()}")


def variables_from(prometheus: Prometheus, dashboard: dict[str, Any]) -> dict[str, str]:
    """Resolve the dashboard's query variables in order, as Grafana does (label values API)."""
    values: dict[str, str] = {"datasource": "prometheus"}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match, label = parse_label_values(substitute(variable["definition"], values, RATE_INTERVAL, "15s"))
        params: dict[str, Any] = {"match[]": [match]} if match else {}
        found = prometheus.api(f"label/{label}/values", **params)
        assert found, f"variable {variable['name']}: {variable['definition']} found no values"
        values[variable["name"]] = "|".join(grafana_regex_escape(v) for v in found)
    return values


def test_scrape_targets_follow_the_chart_monitors(scraped: Prometheus) -> None:
    """The PodMonitor's rules keep the runtime, drop the other pod, and set namespace/pod/inferenceservice/revision."""
    targets = [t for t in scraped.targets() if t["labels"]["job"] == "runtimes"]
    assert len(targets) == 1, [t["discoveredLabels"] for t in targets]
    labels = targets[0]["labels"]
    assert (labels["namespace"], labels["pod"], labels["inferenceservice"], labels["revision"]) == (
        RUNTIME_NAMESPACE, RUNTIME_POD, MODEL, REVISION)
    assert targets[0]["health"] == "up", targets[0]["lastError"]
    (operator,) = [t for t in scraped.targets() if t["labels"]["job"] != "runtimes"]
    assert (operator["labels"]["namespace"], operator["labels"]["pod"]) == (OPERATOR_NAMESPACE, OPERATOR_POD)
    assert operator["health"] == "up", operator["lastError"]


def test_runtime_variables_resolve_to_the_runtime(scraped: Prometheus) -> None:
    values = variables_from(scraped, load_dashboard("runtime.json"))
    assert values["namespace"] == RUNTIME_NAMESPACE
    assert values["inferenceservice"] == MODEL


def test_every_runtime_panel_query_returns_data(scraped: Prometheus) -> None:
    dashboard = load_dashboard("runtime.json")
    values = variables_from(scraped, dashboard)
    served = {s["metric"]["task"] for s in scraped.query(f'{rm.PREFIX}build_info{{model="{MODEL}"}}')}
    assert served == {"detect"}
    gpu = scraped.query(f'max({gm.GPU_PRESENT}{{namespace="{RUNTIME_NAMESPACE}", model="{MODEL}"}})')
    assert gpu, f"{gm.GPU_PRESENT} was not scraped: the runtime must register the GPU collector"
    gpu_present = float(gpu[0]["value"][1]) == 1.0
    queries = panel_queries("runtime.json")
    assert len(queries) >= 20
    problems: list[str] = []
    explained: dict[str, str] = {}
    for q in queries:
        expr = substitute(q.expr, values, RATE_INTERVAL, "15s")
        result = scraped.query(expr)  # raises on any PromQL or execution error
        if any(math.isfinite(float(sample["value"][1])) for sample in result):
            continue
        reason = absent_by_design(scraped, expr, served, gpu_present)
        if reason:
            explained[f"{q.panel} [{q.ref}]"] = reason
        else:
            problems.append(f"{q.panel} [{q.ref}] {expr} -> {result}")
    assert not problems, "panels without data:\n" + "\n".join(problems)
    # Only the series this machine cannot have may be missing: GPU ones and other tasks' ones.
    # Exactly the queries over series this runtime cannot have went without data, no others.
    absent = (set() if gpu_present else GPU_ONLY) | {m for m, tasks in TASK_ONLY.items() if not tasks & served}
    expected = [f"{q.panel} [{q.ref}]" for q in queries if set(METRIC_NAME.findall(q.expr)) <= absent]
    assert list(explained) == expected, explained


def absent_by_design(prometheus: Prometheus, expr: str, served: set[str], gpu_present: bool) -> str:
    """Why ``expr`` can have no data here, or '' when it should have had data."""
    names = set(METRIC_NAME.findall(expr))
    reasons = []
    for name in names:
        if name in GPU_ONLY and not gpu_present:
            reasons.append(f"{name}: no GPU ({gm.GPU_PRESENT} is 0)")
        elif name in TASK_ONLY and not TASK_ONLY[name] & served:
            reasons.append(f"{name}: only {'/'.join(sorted(TASK_ONLY[name]))} produce it")
        else:
            return ""
        metadata = prometheus.api("metadata", metric=name)
        if name not in metadata:
            return ""  # the runtime does not even expose the family: the dashboard names a wrong metric
    return "; ".join(reasons)


def test_per_replica_scaling_panels_have_one_series_per_pod(scraped: Prometheus) -> None:
    """The autoscaling panels split by pod: the scraped runtime shows up under its own namespace/pod."""
    dashboard = load_dashboard("runtime.json")
    values = variables_from(scraped, dashboard)
    titles = ("Queue depth per replica", "Requests in flight per replica", "Queue wait p90 per replica")
    queries = {q.panel: q.expr for q in panel_queries("runtime.json") if q.panel in titles}
    assert sorted(queries) == sorted(titles)
    for title, expr in queries.items():
        result = scraped.query(substitute(expr, values, RATE_INTERVAL, "15s"))
        assert [(s["metric"]["namespace"], s["metric"]["pod"]) for s in result] == [(RUNTIME_NAMESPACE, RUNTIME_POD)], \
            (title, result)
    # After the load, nothing waits and nothing is in flight but the queue waits were measured.
    wait_p90 = scraped.query(substitute(queries["Queue wait p90 per replica"], values, RATE_INTERVAL, "15s"))
    assert 0 < float(wait_p90[0]["value"][1]) < 30


def test_runtime_filters_select_nothing_for_another_namespace(scraped: Prometheus) -> None:
    """The namespace filter really filters: a namespace without runtimes gets no series."""
    expr = substitute(panel_queries("runtime.json")[1].expr, {"namespace": "elsewhere", "inferenceservice": MODEL},
                      RATE_INTERVAL, "15s")
    assert scraped.query(expr) == []


def test_every_operator_panel_query_returns_data(scraped: Prometheus) -> None:
    dashboard = load_dashboard("operator.json")
    values = variables_from(scraped, dashboard)
    assert values["namespace"] == OPERATOR_NAMESPACE
    queries = panel_queries("operator.json")
    assert len(queries) >= 7
    problems = []
    for q in queries:
        result = scraped.query(substitute(q.expr, values, RATE_INTERVAL, "15s"))
        if not any(math.isfinite(float(sample["value"][1])) for sample in result):
            problems.append(f"{q.panel} [{q.ref}] {q.expr} -> {result}")
    assert not problems, "panels without data:\n" + "\n".join(problems)


def test_operator_series_reflect_what_happened(scraped: Prometheus) -> None:
    """One InferenceService Ready, one Failed; successful and failed reconciliations were both counted."""
    by_phase = {s["metric"]["phase"]: float(s["value"][1])
                for s in scraped.query(f'sum by (phase) ({om.INFERENCESERVICES}{{namespace="{OPERATOR_NAMESPACE}"}})')}
    assert by_phase["Ready"] == 1 and by_phase["Failed"] == 1 and sum(by_phase.values()) == 2
    results = {s["metric"]["result"]: float(s["value"][1])
               for s in scraped.query(f'{om.RECONCILIATIONS_TOTAL}{{namespace="{OPERATOR_NAMESPACE}"}}')}
    assert results["success"] >= 1 and results["error"] >= 1
