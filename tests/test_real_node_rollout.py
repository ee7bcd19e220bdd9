"""Issue #34 on the real node: a progressive rollout judged by a real Prometheus scraping the real runtime pods.

The chart's operator pod rolls a classify InferenceService (2 replicas, the cpu image, models on the ``models``
claim) from the trained classifier to each of tests/rollout_models.py's: ``good`` is promoted through every step,
``failing`` (INTERNAL on 20 % of calls), ``slow`` (about 3x the p99) and ``shuffled`` (fast, error-free, wrong) are
rolled back, each by the figure it breaks. Prometheus runs on the host, on the node's address where the operator
pod reaches it, discovers the pods through the API server and relabels them with the chart's PodMonitor rules
(``revision`` included). Clients call through the ClusterIP Service the whole time; no call may fail.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import e2e_load
import grpc
import pytest
from chart_support import FULL_VALUES, Prometheus, find, prometheus_relabel_configs, render
from e2e_support import GRPC_PORT, SMALL, Stage, apply, record, runtime_pods, service_ip, staged, wait_ready
from keda_support import pod_prometheus
from real_node_support import wait_until
from rollout_models import RolloutModels, failing_images, rollout_models

from kubeinfer.clients import Client
from kubeinfer.operator.render import REVISION_LABEL

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # make e2e: minutes per rollout

RATE = 20.0  # Classify calls a second through the ClusterIP Service during a rollout
INTERVAL = 15
STEPS = [{"shadow": 50}, {"weight": 50}, {"weight": 100}]
# p99 comes from histogram buckets (10, 25, 50, 100 ms...): two healthy revisions' ratio can reach ~2 by where
# their p99 falls in a bucket; the slow model is ~3-5x.
ANALYSIS = {"maxErrorRate": 0.05, "maxLatencyRatio": 2.5, "minAgreement": 0.9, "minRequests": 20}
CONNECTIONS = 8  # kube-proxy picks a pod per connection: several, so that a weight step reaches both revisions


class RolloutStage:
    def __init__(self, stage: Stage, prometheus: Prometheus, models: RolloutModels) -> None:
        self.stage, self.prometheus, self.models = stage, prometheus, models


@pytest.fixture(scope="module")
def rollout_stage(real_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutStage]:
    """The chart's operator pod, the rollout models on the ``models`` claim, and Prometheus on the node's address
    (where the operator pod reaches it) scraping the namespace's runtime pods with the chart's PodMonitor rules."""
    folder = tmp_path_factory.mktemp("rollout")
    with staged(real_cluster, "rollout", folder) as stage:
        models = rollout_models()
        target = stage.files.volume / "rollout"
        target.mkdir(exist_ok=True)
        for path in (*models.by_name().values(), models.labels):
            shutil.copyfile(path, target / path.name)
            (target / path.name).chmod(0o644)
        target.chmod(0o755)
        relabel = prometheus_relabel_configs(find(render(values=FULL_VALUES), "PodMonitor"))
        assert any(rule.get("target_label") == "revision" for rule in relabel), "the PodMonitor sets no revision"
        with pod_prometheus(real_cluster, stage.api, stage.namespace, folder / "prometheus", scrape_interval="1s",
                            host=real_cluster.node.address) as prometheus:
            yield RolloutStage(stage, prometheus, models)


def classifier(stage: RolloutStage, name: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
            "spec": {"task": "classify", "model": {"uri": f"pvc://models/rollout/{model}"},
                     "labels": {"uri": f"pvc://models/rollout/{stage.models.labels.name}"}, "replicas": 2,
                     "batching": {"maxBatchSize": 1}, "resources": SMALL,
                     "rollout": {"steps": STEPS, "interval": INTERVAL, "analysis": ANALYSIS,
                                 "prometheus": stage.prometheus.url}, **extra}}


def rollout(stage: RolloutStage, name: str) -> dict[str, Any]:
    found = stage.stage.api.get(f"/apis/kubeinfer.io/v1alpha1/namespaces/{stage.stage.namespace}/"
                                f"inferenceservices/{name}") or {}
    return (found.get("status") or {}).get("rollout") or {}


def answers(client: Client) -> bool:
    try:
        return bool(client.model_info(timeout=5).task)
    except grpc.RpcError:
        return False


def load(stage: RolloutStage, name: str) -> e2e_load.Background:
    """RATE calls a second through the ClusterIP Service over CONNECTIONS connections (a gRPC channel of its own
    each: gRPC would otherwise share one connection between channels to one address)."""
    images = [image.pixels for image in failing_images(100, seed=3)]
    target = f"{service_ip(stage.stage.kubectl, stage.stage.namespace, name)}:{GRPC_PORT}"
    clients = [Client(target, timeout=10, options=[("grpc.use_local_subchannel_pool", 1)])
               for _ in range(CONNECTIONS)]
    for client in clients:  # each connected (kube-proxy may still be programming a new Service's rules)
        wait_until(lambda c=client: answers(c), "a connection through the ClusterIP Service", timeout=30)
    count = iter(range(10**9))

    def call() -> None:
        n = next(count)
        clients[n % CONNECTIONS].classify([images[n % len(images)]])

    def close() -> None:
        for client in clients:
            client.close()

    return e2e_load.Background(call, RATE, 600, on_exit=close)


def situation(stage: RolloutStage, name: str) -> str:
    """What a person would look at when a rollout goes wrong: the status, the pods, the operator's last words."""
    s = stage.stage
    parts = [json.dumps((s.api.get(f"/apis/kubeinfer.io/v1alpha1/namespaces/{s.namespace}/inferenceservices/{name}")
                         or {}).get("status"), indent=1)[:4000],
             s.kubectl("get", "pods", "-n", s.namespace, "-o", "wide", check=False).stdout,
             s.kubectl("logs", "-n", s.chart.namespace, "-l", s.chart.operator_selector, "--tail", "40",
                       check=False).stdout]
    for pod in runtime_pods(s.kubectl, s.namespace, name, ready_only=False)[:2]:
        parts.append(s.kubectl("logs", "-n", s.namespace, pod["metadata"]["name"], "--tail", "15",
                               check=False).stdout)
    return "\n---\n".join(parts)


def roll(stage: RolloutStage, name: str, model: str, done: tuple[str, ...],
         during: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], float, e2e_load.LoadReport]:
    """Start from the stable model under load, change the model, wait for the rollout to end in ``done``;
    ``during`` sees the rollout's status at every poll."""
    s = stage.stage
    apply(s.kubectl, s.namespace, classifier(stage, name, stage.models.stable.name))
    try:
        wait_ready(s.api, s.namespace, name, replicas=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{situation(stage, name)}") from None
    before = wait_until(lambda: rollout(stage, name).get("stableRevision"), "a stable revision")
    traffic = load(stage, name)
    time.sleep(3)
    began = time.monotonic()
    apply(s.kubectl, s.namespace, classifier(stage, name, model))
    try:
        def ended() -> dict[str, Any] | None:
            current = rollout(stage, name)
            if during is not None:
                during(current)
            over = current.get("phase") == "RolledBack" or current.get("stableRevision") != before
            return current if over and current.get("phase") in done else None

        try:
            final = wait_until(ended, f"{name}: the rollout ends in {done}", timeout=420, interval=1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{situation(stage, name)}") from None
    finally:
        traffic.stop()
    took = time.monotonic() - began
    return final, took, traffic.join()


def test_a_good_model_is_promoted_through_every_step_without_restarting_its_pods(
        rollout_stage: RolloutStage) -> None:
    """... with the operator's pod deleted in the middle of a step: its successor resumes where it was."""
    s = rollout_stage.stage
    name = "roll-good"
    restarted: list[str] = []

    def restart_operator(current: dict[str, Any]) -> None:
        if not restarted and current.get("step") == "weight 50%" and current.get("effectiveAt"):
            (pod,) = [p for p in s.kubectl.json("get", "pods", "-n", s.chart.namespace, "-l",
                                                s.chart.operator_selector)["items"]
                      if not p["metadata"].get("deletionTimestamp")]
            s.kubectl("delete", "pod", "-n", s.chart.namespace, pod["metadata"]["name"], "--wait=false")
            restarted.append(pod["metadata"]["name"])

    final, took, report = roll(rollout_stage, name, rollout_stage.models.good.name, ("Promoted", "Stable"),
                               restart_operator)
    assert restarted, "the operator's pod was never deleted mid-step"
    assert report.failed == 0, report.summary()
    analyses = json.dumps(final["analyses"], indent=1)
    # each step passed once, in order; a step may have held first (too few calls yet in its window)
    assert [a["step"] for a in final["analyses"] if a["result"] == "pass"] == [
        "shadow 50%", "weight 50%", "weight 100%"], analyses
    assert all(a["result"] in ("pass", "hold") for a in final["analyses"]), analyses
    new = final["stableRevision"]
    assert final["stableDeployment"] == f"{name}-{new}"
    # the promoted pods are the ones the rollout started (no restart), and the old Deployment goes
    pods = wait_until(lambda: (lambda p: p if len(p) == 2 and all(
        x["metadata"]["labels"].get(REVISION_LABEL) == new for x in p) else None)(runtime_pods(s.kubectl, s.namespace,
                                                                                             name)),
                      "only the new revision's 2 pods", timeout=120)
    restarts = [c.get("restartCount", 0) for p in pods for c in p["status"].get("containerStatuses", [])]
    assert restarts == [0, 0]
    created = {p["metadata"]["name"]: p["metadata"]["creationTimestamp"] for p in pods}
    wait_until(lambda: [d["metadata"]["name"] for d in s.kubectl.json("get", "deployments", "-n", s.namespace,
                                                                     "-l", f"kubeinfer.io/inferenceservice={name}")
                        ["items"]] == [f"{name}-{new}"] or None, "the old Deployment deleted", timeout=120)
    selector = s.kubectl.json("get", "service", "-n", s.namespace, name)["spec"]["selector"]
    assert selector[REVISION_LABEL] == new
    assert {p["metadata"]["name"]: p["metadata"]["creationTimestamp"]
            for p in runtime_pods(s.kubectl, s.namespace, name)} == created
    figures = [(a["step"], a["result"], a.get("requests"), a.get("stableRequests"), a.get("errorRate"),
                a.get("latencyRatio"), a.get("agreement"), a.get("reasons")) for a in final["analyses"]]
    record("rollout good promoted", seconds=round(took, 1), calls=report.ok, failed=report.failed,
           p99_ms=round(report.percentile(0.99) * 1000, 1), steps=json.dumps(figures))


@pytest.mark.parametrize(("model", "broken"), [
    ("failing", "error rate"), ("slow", "p99 latency"), ("shuffled", "shadow agreement")])
def test_a_bad_model_is_rolled_back_by_the_figure_it_breaks(rollout_stage: RolloutStage, model: str,
                                                            broken: str) -> None:
    s = rollout_stage.stage
    name = f"roll-{model}"
    final, took, report = roll(rollout_stage, name, getattr(rollout_stage.models, model).name, ("RolledBack",))
    assert report.failed == 0, report.summary()  # caught in the shadow step: no client ever got its answers
    failed = final["analyses"][-1]
    assert failed["result"] == "fail" and failed["step"] == "shadow 50%", final
    assert any(broken in reason for reason in failed["reasons"]), failed
    assert broken in final["message"] and final.get("candidateRevision") is None
    stable = final["stableRevision"]
    wait_until(lambda: [d["metadata"]["name"] for d in s.kubectl.json(
        "get", "deployments", "-n", s.namespace, "-l", f"kubeinfer.io/inferenceservice={name}")["items"]] == [name]
        or None, "the new revision's Deployment deleted", timeout=120)
    assert s.kubectl.json("get", "service", "-n", s.namespace, name)["spec"]["selector"][REVISION_LABEL] == stable
    events = s.kubectl("get", "events", "-n", s.namespace, "--field-selector", f"involvedObject.name={name}",
                       "-o", "jsonpath={range .items[*]}{.type} {.reason}: {.message}{'\\n'}{end}").stdout
    assert any(line.startswith("Warning RolledBack") and broken in line for line in events.splitlines()), events
    # not tried again while the spec stays
    time.sleep(INTERVAL)
    assert rollout(rollout_stage, name).get("candidateRevision") is None
    record(f"rollout {model} rolled back", seconds=round(took, 1), calls=report.ok, failed=report.failed,
           figures=json.dumps({k: failed.get(k) for k in ("requests", "errorRate", "latencyRatio", "agreement")}))
