"""The operator in the loop: `kubeinfer operator` (a real process) and real kubectl against the API emulator.

The emulator has no controllers, so the tests play them: they write a Deployment's status as the Deployment
controller would, and create and update Pods as the ReplicaSet controller and the kubelet would. Deleting an
InferenceService removes its children through the emulator's garbage collector, which follows owner
references by uid, as a cluster's does: the operator adds no finalizer.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kube_emulator import EmulatedCluster
from operator_support import (
    CRD_PATH,
    EXAMPLES,
    Api,
    Kubectl,
    OperatorProcess,
    deployment_path,
    eventually,
    is_path,
    load_yaml,
    mark_deployment,
    pod_path,
    runtime_pod,
    service_path,
    write_kubeconfig,
)
from runtime_support import free_port

from kubeinfer.operator import metrics
from kubeinfer.operator.kube import PEERING_RBAC_RULES, RBAC_RULES
from kubeinfer.runtime import config as runtime_config

IMAGE = "registry.example.com/kubeinfer/runtime:test"
T = TypeVar("T")


@dataclass
class Cluster:
    emulated: EmulatedCluster
    kubectl: Kubectl
    api: Api
    kubeconfig: Path
    tmp: Path


class Operator:
    """The operator process under test; ``restart`` replaces it with a fresh one (same flags)."""

    def __init__(self, cluster: Cluster, *extra: str, env: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.extra, self.env = list(extra), env
        self.generation = 0
        self.process: OperatorProcess | None = None
        self.start()

    def start(self) -> None:
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.generation += 1
        self.process = OperatorProcess(
            ["--listen-host", "127.0.0.1", "--metrics-port", str(self.metrics_port),
             "--liveness-port", str(self.liveness_port), *self.extra],
            self.cluster.kubeconfig, self.cluster.tmp / f"operator-{id(self)}-{self.generation}.log", self.env)
        eventually(lambda: self.get(self.liveness_port, "/healthz") is not None, timeout=30,
                   what=f"the operator's liveness endpoint\n{self.logs()}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> int:
        assert self.process is not None
        return self.process.stop()

    def logs(self) -> str:
        return self.process.logs()[-4000:] if self.process else ""

    def get(self, port: int, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return None

    def metrics(self) -> str:
        return self.get(self.metrics_port, "/metrics") or ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    emulated = EmulatedCluster().start()
    tmp = tmp_path_factory.mktemp("operator-loop")
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", emulated.url)
    kubectl = Kubectl(kubeconfig, tmp / "kube-cache")
    kubectl("apply", "--validate=false", "-f", str(CRD_PATH))
    yield Cluster(emulated, kubectl, Api(emulated.url), kubeconfig, tmp)
    emulated.stop()


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    running = Operator(cluster, "--runtime-image", IMAGE)
    yield running
    assert running.stop() == 0, running.logs()


_namespaces = itertools.count()


@pytest.fixture()
def ns(cluster: Cluster, operator: Operator) -> str:
    name = f"t{next(_namespaces)}"
    create_namespace(cluster.kubectl, name)
    return name


def create_namespace(kubectl: Kubectl, name: str) -> None:
    # kubectl sends typed objects (`kubectl create namespace`) as protobuf, which the emulator does not
    # speak; `apply` sends JSON.
    kubectl("apply", "--validate=false", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))


def wait(operator: Operator, check: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    return eventually(check, timeout=timeout, what=f"{what}\n--- operator log ---\n{operator.logs()}")


def apply_example(cluster: Cluster, ns: str, file: str, **spec_changes: Any) -> dict[str, Any]:
    doc = load_yaml(EXAMPLES / file)
    doc["spec"].update(spec_changes)
    for key in [k for k, v in spec_changes.items() if v is None]:
        del doc["spec"][key]
    cluster.kubectl("apply", "--validate=false", "-n", ns, "-f", "-", stdin=json.dumps(doc))
    return doc


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    body = cluster.api.get(is_path(ns, name))
    return (body or {}).get("status") or {}


def phase_is(cluster: Cluster, ns: str, name: str, phase: str) -> Callable[[], bool]:
    return lambda: status(cluster, ns, name).get("phase") == phase


def events_for(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    listed = cluster.kubectl.json("get", "events", "-n", ns)
    return [e for e in listed["items"] if e["involvedObject"].get("name") == name]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def serve_args(args: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    runtime_config.add_arguments(parser)
    return parser.parse_args(args)


@pytest.mark.parametrize("file", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_kubectl_apply_creates_the_children(cluster: Cluster, operator: Operator, ns: str, file: str) -> None:
    doc = apply_example(cluster, ns, file)
    name, spec = doc["metadata"]["name"], doc["spec"]
    deployment = wait(operator, lambda: cluster.api.get(deployment_path(ns, name)), f"Deployment {name}")
    owner = cluster.api.get(is_path(ns, name))
    assert owner is not None
    service = wait(operator, lambda: cluster.api.get(service_path(ns, name)), "Service")
    headless = wait(operator, lambda: cluster.api.get(service_path(ns, f"{name}-pods")), "headless Service")
    runtime = container(deployment)
    parsed = serve_args(runtime["args"])
    assert parsed.task == spec["task"] and parsed.model_name == name
    assert runtime["image"] == IMAGE
    assert {p["name"]: p["containerPort"] for p in runtime["ports"]} == {"grpc": 8001, "http": 8080}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8001, "http": 8080}
    assert headless["spec"]["clusterIP"] == "None"
    if spec.get("gpus"):
        assert runtime["resources"]["limits"]["nvidia.com/gpu"] == spec["gpus"]
        assert parsed.device == "cuda"
    else:
        assert "nvidia.com/gpu" not in runtime["resources"].get("limits", {})
    if "thresholds" in spec and spec["task"] in ("detect", "video"):
        assert parsed.confidence == spec["thresholds"]["confidence"]
    for child in (deployment, service, headless):
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "InferenceService", name, owner["metadata"]["uid"], True)
    hpa_path = f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}"
    pdb_path = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}"
    wants_pdb = spec.get("replicas", 1) > 1 or spec.get("autoscaling", {}).get("maxReplicas", 1) > 1
    wait(operator, lambda: (cluster.api.get(hpa_path) is not None) == ("autoscaling" in spec)
         and (cluster.api.get(pdb_path) is not None) == wants_pdb, "the HPA and PDB the spec asks for")
    current = wait(operator, lambda: status(cluster, ns, name).get("phase") and status(cluster, ns, name),
                   "a status")
    assert current["phase"] == "Pending"
    assert current["endpoint"] == f"{name}.{ns}.svc:8001"
    # Status is written after every child was applied: what is absent now was not created.
    assert (cluster.api.get(hpa_path) is not None) == ("autoscaling" in spec)
    assert (cluster.api.get(pdb_path) is not None) == wants_pdb
    reasons = wait(operator, lambda: {e["reason"] for e in events_for(cluster, ns, name)} >= {"Created"}
                   and {e["reason"] for e in events_for(cluster, ns, name)}, "Created events")
    assert "Created" in reasons


def test_status_moves_pending_progressing_ready(cluster: Cluster, operator: Operator, ns: str) -> None:
    apply_example(cluster, ns, "yolo-detection-gpu.yaml")
    wait(operator, phase_is(cluster, ns, "yolo-detection", "Pending"), "Pending")
    mark_deployment(cluster.api, ns, "yolo-detection", ready=0)
    wait(operator, phase_is(cluster, ns, "yolo-detection", "Progressing"), "Progressing")
    mark_deployment(cluster.api, ns, "yolo-detection", ready=1)
    progressing = status(cluster, ns, "yolo-detection")
    assert progressing["conditions"][0]["status"] == "False"
    mark_deployment(cluster.api, ns, "yolo-detection", ready=2)
    wait(operator, phase_is(cluster, ns, "yolo-detection", "Ready"), "Ready")
    ready = status(cluster, ns, "yolo-detection")
    assert ready["readyReplicas"] == 2 and ready["conditions"][0]["reason"] == "AllReplicasReady"
    waited = cluster.kubectl("wait", "--for=condition=Ready", "-n", ns, "kisvc/yolo-detection", "--timeout=10s")
    assert "condition met" in waited.stdout
    phase = cluster.kubectl("get", "-n", ns, "kisvc", "yolo-detection", "-o", "jsonpath={.status.phase}").stdout
    assert phase == "Ready"
    assert "Ready" in {e["reason"] for e in events_for(cluster, ns, "yolo-detection")}
    assert f'{metrics.INFERENCESERVICES}{{phase="Ready"}}' in operator.metrics()


def test_patching_a_threshold_rolls_the_deployment(cluster: Cluster, operator: Operator, ns: str) -> None:
    apply_example(cluster, ns, "video-processing.yaml")
    first = wait(operator, lambda: cluster.api.get(deployment_path(ns, "video-processing")), "Deployment")
    mark_deployment(cluster.api, ns, "video-processing", ready=1)
    wait(operator, phase_is(cluster, ns, "video-processing", "Ready"), "Ready")
    cluster.kubectl("patch", "-n", ns, "kisvc", "video-processing", "--type=merge",
                    "-p", json.dumps({"spec": {"thresholds": {"confidence": 0.55}}}))
    patched = wait(operator, lambda: (d := cluster.api.get(deployment_path(ns, "video-processing")))
                   and serve_args(container(d)["args"]).confidence == 0.55 and d, "new args")
    assert serve_args(container(patched)["args"]).iou == 0.5  # the rest is kept
    assert patched["metadata"]["uid"] == first["metadata"]["uid"]  # patched in place: a rolling update
    assert patched["metadata"]["generation"] == first["metadata"]["generation"] + 1
    owner = cluster.api.get(is_path(ns, "video-processing"))
    assert owner is not None
    wait(operator, lambda: status(cluster, ns, "video-processing").get("observedGeneration")
         == owner["metadata"]["generation"], "observedGeneration")
    assert status(cluster, ns, "video-processing")["phase"] == "Progressing"  # the new revision is not out yet
    mark_deployment(cluster.api, ns, "video-processing", ready=1)
    wait(operator, phase_is(cluster, ns, "video-processing", "Ready"), "Ready again")


def test_crash_looping_pods_fail_or_degrade_the_service(cluster: Cluster, operator: Operator, ns: str) -> None:
    apply_example(cluster, ns, "stream-classification.yaml")
    deployment = wait(operator, lambda: cluster.api.get(deployment_path(ns, "stream-classification")), "Deployment")
    mark_deployment(cluster.api, ns, "stream-classification", ready=0)
    for pod in ("stream-classification-a", "stream-classification-b"):
        cluster.api.create(pod_path(ns), runtime_pod(deployment, pod))
        cluster.api.patch(pod_path(ns, pod, "status"), {"status": {"phase": "Running", "containerStatuses": [{
            "name": "runtime", "ready": False, "restartCount": 5, "image": IMAGE, "imageID": "", "started": False,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                                         "message": "kubeinfer serve: --labels /x: no such file or directory"}}}]}})
    wait(operator, phase_is(cluster, ns, "stream-classification", "Failed"), "Failed")
    condition = status(cluster, ns, "stream-classification")["conditions"][0]
    assert condition["reason"] == "CrashLoopBackOff"
    assert "--labels /x: no such file or directory" in condition["message"]
    warnings = [e for e in events_for(cluster, ns, "stream-classification") if e["type"] == "Warning"]
    assert any(e["reason"] == "CrashLoopBackOff" for e in warnings)

    cluster.api.patch(pod_path(ns, "stream-classification-a", "status"), {"status": {"containerStatuses": [{
        "name": "runtime", "ready": True, "restartCount": 6, "image": IMAGE, "imageID": "", "started": True,
        "state": {"running": {"startedAt": "2026-11-22T10:00:00Z"}}}]}})
    mark_deployment(cluster.api, ns, "stream-classification", ready=1)
    wait(operator, phase_is(cluster, ns, "stream-classification", "Degraded"), "Degraded")
    assert "1/2 replicas ready" in status(cluster, ns, "stream-classification")["conditions"][0]["message"]

    cluster.api.delete(pod_path(ns, "stream-classification-b"))
    mark_deployment(cluster.api, ns, "stream-classification", ready=2)
    wait(operator, phase_is(cluster, ns, "stream-classification", "Ready"), "Ready once the crash is gone")


def test_unschedulable_pods_are_reported(cluster: Cluster, operator: Operator, ns: str) -> None:
    apply_example(cluster, ns, "yolo-detection-gpu.yaml", replicas=1)
    deployment = wait(operator, lambda: cluster.api.get(deployment_path(ns, "yolo-detection")), "Deployment")
    mark_deployment(cluster.api, ns, "yolo-detection", ready=0)
    cluster.api.create(pod_path(ns), runtime_pod(deployment, "yolo-detection-x"))
    cluster.api.patch(pod_path(ns, "yolo-detection-x", "status"), {"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}})
    wait(operator, phase_is(cluster, ns, "yolo-detection", "Failed"), "Failed")
    condition = status(cluster, ns, "yolo-detection")["conditions"][0]
    assert condition["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in condition["message"]


def test_children_deleted_or_edited_by_hand_are_put_back(cluster: Cluster, operator: Operator, ns: str) -> None:
    apply_example(cluster, ns, "video-processing.yaml")
    original = wait(operator, lambda: cluster.api.get(deployment_path(ns, "video-processing")), "Deployment")
    wait(operator, lambda: cluster.api.get(service_path(ns, "video-processing-pods")), "headless Service")
    cluster.kubectl("delete", "-n", ns, "deployment/video-processing", "service/video-processing-pods")
    back = wait(operator, lambda: (d := cluster.api.get(deployment_path(ns, "video-processing")))
                and d["metadata"]["uid"] != original["metadata"]["uid"] and d, "the Deployment back")
    assert container(back)["args"] == container(original)["args"]
    wait(operator, lambda: cluster.api.get(service_path(ns, "video-processing-pods")), "the headless Service back")

    edit = [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": ["--task", "detect"]},
            {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": {"pool": "wrong"}}]
    cluster.kubectl("patch", "-n", ns, "deployment", "video-processing", "--type=json", "-p", json.dumps(edit))
    repaired = wait(operator, lambda: (d := cluster.api.get(deployment_path(ns, "video-processing")))
                    and container(d)["args"] == container(original)["args"] and d, "the args restored")
    assert "nodeSelector" not in repaired["spec"]["template"]["spec"]
    cluster.kubectl("patch", "-n", ns, "service", "video-processing", "--type=merge",
                    "-p", json.dumps({"spec": {"selector": {"app": "someone-else"}}}))
    wait(operator, lambda: (s := cluster.api.get(service_path(ns, "video-processing")))
         and s["spec"]["selector"] == original["spec"]["selector"]["matchLabels"], "the selector restored")


def test_moving_between_replicas_and_autoscaling(cluster: Cluster, operator: Operator, ns: str) -> None:
    hpa_path = f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/video-processing"
    pdb_path = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/video-processing"
    apply_example(cluster, ns, "video-processing.yaml")
    wait(operator, lambda: cluster.api.get(deployment_path(ns, "video-processing")), "Deployment")
    assert cluster.api.get(pdb_path) is None
    cluster.kubectl("patch", "-n", ns, "kisvc", "video-processing", "--type=merge", "-p", json.dumps(
        {"spec": {"replicas": None, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}}))
    hpa = wait(operator, lambda: cluster.api.get(hpa_path), "the HPA")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    wait(operator, lambda: cluster.api.get(pdb_path), "the PDB")
    cluster.kubectl("patch", "-n", ns, "hpa", "video-processing", "--type=merge",
                    "-p", json.dumps({"spec": {"maxReplicas": 10}}))
    cluster.kubectl("patch", "-n", ns, "pdb", "video-processing", "--type=merge",
                    "-p", json.dumps({"spec": {"maxUnavailable": 3}}))
    wait(operator, lambda: cluster.api.get(hpa_path)["spec"]["maxReplicas"] == 4
         and cluster.api.get(pdb_path)["spec"]["maxUnavailable"] == 1, "hand edits of the HPA and PDB reverted")
    cluster.kubectl("scale", "-n", ns, "deployment/video-processing", "--replicas", "3")  # as the HPA would
    cluster.kubectl("patch", "-n", ns, "kisvc", "video-processing", "--type=merge", "-p", json.dumps(
        {"spec": {"thresholds": {"iou": 0.6}}}))
    wait(operator, lambda: "0.6" in container(cluster.api.get(deployment_path(ns, "video-processing")))["args"],
         "the new iou")
    assert cluster.api.get(deployment_path(ns, "video-processing"))["spec"]["replicas"] == 3  # the HPA's choice
    cluster.kubectl("patch", "-n", ns, "kisvc", "video-processing", "--type=merge", "-p", json.dumps(
        {"spec": {"autoscaling": None, "replicas": 1}}))
    wait(operator, lambda: cluster.api.get(hpa_path) is None and cluster.api.get(pdb_path) is None,
         "the HPA and PDB removed")
    assert cluster.api.get(deployment_path(ns, "video-processing"))["spec"]["replicas"] == 1
    deleted = {e["reason"] for e in events_for(cluster, ns, "video-processing")}
    assert "Deleted" in deleted


def test_kubectl_scale_sets_the_replicas(cluster: Cluster, operator: Operator, ns: str) -> None:
    apply_example(cluster, ns, "video-processing.yaml")
    wait(operator, lambda: cluster.api.get(deployment_path(ns, "video-processing")), "Deployment")
    cluster.kubectl("scale", "-n", ns, "kisvc/video-processing", "--replicas", "3")
    wait(operator, lambda: cluster.api.get(deployment_path(ns, "video-processing"))["spec"]["replicas"] == 3,
         "3 replicas")
    wait(operator, lambda: cluster.api.get(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/video-processing"),
         "a PDB for 3 replicas")


def test_an_invalid_spec_is_reported_not_served(cluster: Cluster, operator: Operator, ns: str) -> None:
    # A cluster's API server would refuse this spec (CRD rule); the emulator does not validate, so the
    # operator's own check is what is tested here.
    bad = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": "no-labels"},
           "spec": {"task": "classify", "model": {"uri": "/models/m.onnx"}}}
    cluster.kubectl("apply", "--validate=false", "-n", ns, "-f", "-", stdin=json.dumps(bad))
    wait(operator, phase_is(cluster, ns, "no-labels", "Failed"), "Failed")
    condition = status(cluster, ns, "no-labels")["conditions"][0]
    assert condition["reason"] == "InvalidSpec"
    assert condition["message"] == "spec.labels.uri is required for task 'classify'"
    assert cluster.api.get(deployment_path(ns, "no-labels")) is None
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events_for(cluster, ns, "no-labels"))
    assert 'kubeinfer_operator_reconciliations_total{result="error"}' in operator.metrics()


def test_a_name_taken_by_someone_else_is_not_taken_over(cluster: Cluster, operator: Operator, ns: str) -> None:
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "video-processing", "namespace": ns},
               "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}}
    cluster.api.create(service_path(ns), foreign)
    apply_example(cluster, ns, "video-processing.yaml")
    wait(operator, phase_is(cluster, ns, "video-processing", "Failed"), "Failed")
    condition = status(cluster, ns, "video-processing")["conditions"][0]
    assert condition["reason"] == "ChildConflict"
    assert "Service video-processing exists and is not managed by InferenceService video-processing" in \
        condition["message"]
    assert cluster.api.get(service_path(ns, "video-processing"))["spec"]["selector"] == {"app": "theirs"}


def test_deleting_the_resource_removes_its_children(cluster: Cluster, operator: Operator, ns: str) -> None:
    apply_example(cluster, ns, "brand-recognition.yaml")
    paths = [deployment_path(ns, "brand-recognition"), service_path(ns, "brand-recognition"),
             service_path(ns, "brand-recognition-pods"),
             f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/brand-recognition",
             f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/brand-recognition"]
    wait(operator, lambda: all(cluster.api.get(p) for p in paths), "all five children")
    owner = cluster.api.get(is_path(ns, "brand-recognition"))
    assert owner is not None and not owner["metadata"].get("finalizers")  # nothing blocks deletion
    cluster.kubectl("delete", "-n", ns, "kisvc", "brand-recognition")
    wait(operator, lambda: not any(cluster.api.get(p) for p in paths), "children gone")
    assert cluster.api.get(is_path(ns, "brand-recognition")) is None


def test_metrics_and_liveness(cluster: Cluster, operator: Operator) -> None:
    text = operator.metrics()
    assert 'kubeinfer_operator_reconciliations_total{result="success"}' in text
    count = next(line for line in text.splitlines()
                 if line.startswith(f"{metrics.RECONCILE_DURATION_SECONDS}_count"))
    assert float(count.split()[-1]) > 0
    assert f"{metrics.INFERENCESERVICES}{{phase=" in text
    assert operator.get(operator.liveness_port, "/healthz") is not None


def test_a_restarted_operator_changes_and_duplicates_nothing(cluster: Cluster, operator: Operator, ns: str) -> None:
    apply_example(cluster, ns, "brand-recognition.yaml")
    paths = [deployment_path(ns, "brand-recognition"), service_path(ns, "brand-recognition"),
             service_path(ns, "brand-recognition-pods"),
             f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/brand-recognition",
             f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/brand-recognition"]
    wait(operator, lambda: all(cluster.api.get(p) for p in paths), "all children")
    cluster.kubectl("scale", "-n", ns, "deployment/brand-recognition", "--replicas", "2")  # as its HPA would
    mark_deployment(cluster.api, ns, "brand-recognition", ready=2)
    wait(operator, phase_is(cluster, ns, "brand-recognition", "Ready"), "Ready")
    before = {p: cluster.api.get(p)["metadata"]["resourceVersion"] for p in paths}
    status_before = cluster.api.get(is_path(ns, "brand-recognition"))["metadata"]["resourceVersion"]
    audit_start = cluster.emulated.call(lambda e: len(e.audit))
    operator.restart()
    wait(operator, lambda: 'kubeinfer_operator_inferenceservices{phase="Ready"}' in operator.metrics()
         and any(line.startswith('kubeinfer_operator_reconciliations_total{result="success"}')
                 and float(line.split()[-1]) > 0 for line in operator.metrics().splitlines()),
         "the restarted operator to reconcile")
    assert {p: cluster.api.get(p)["metadata"]["resourceVersion"] for p in paths} == before
    assert cluster.api.get(is_path(ns, "brand-recognition"))["metadata"]["resourceVersion"] == status_before
    writes = cluster.emulated.call(lambda e: [a for a in list(e.audit)[audit_start:]
                                              if a[1] in ("create", "patch", "update", "delete")])
    assert [w for w in writes if w[0].startswith(("kopf", "OpenAPI")) and w[3] != "events"] == []
    assert len(cluster.kubectl.json("get", "deployments", "-n", ns)["items"]) == 1


def operator_permissions(cluster: Cluster) -> set[tuple[str, str, str]]:
    audit = cluster.emulated.call(lambda e: list(e.audit))
    return {(group, resource, verb) for agent, verb, group, resource in audit
            if agent.startswith(("kopf/", "OpenAPI-Generator/"))}


def granted(rules: tuple[tuple[str, str, tuple[str, ...]], ...]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource, verbs in rules for verb in verbs}


def test_rbac_rules_cover_exactly_what_the_operator_does(cluster: Cluster, operator: Operator, ns: str) -> None:
    # A life cycle touching every verb the operator has: create, repair (patch), drop (delete), pods, status.
    hpa = f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/brand-recognition"
    pdb = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/brand-recognition"
    apply_example(cluster, ns, "brand-recognition.yaml")
    deployment = wait(operator, lambda: cluster.api.get(hpa) and cluster.api.get(pdb)
                      and cluster.api.get(deployment_path(ns, "brand-recognition")), "all children")
    cluster.api.create(pod_path(ns), runtime_pod(deployment, "brand-recognition-a"))
    cluster.api.patch(hpa, {"spec": {"maxReplicas": 99}})
    cluster.api.patch(pdb, {"spec": {"maxUnavailable": 9}})
    cluster.api.patch(service_path(ns, "brand-recognition"), {"spec": {"selector": {"edited": "by-hand"}}})
    wait(operator, lambda: cluster.api.get(hpa)["spec"]["maxReplicas"] == 6
         and cluster.api.get(pdb)["spec"]["maxUnavailable"] == 1
         and "edited" not in cluster.api.get(service_path(ns, "brand-recognition"))["spec"]["selector"],
         "hand edits reverted")
    cluster.api.patch(deployment_path(ns, "brand-recognition"), {"spec": {"template": {"spec": {
        "nodeSelector": {"pool": "x"}}}}})
    wait(operator, lambda: "nodeSelector" not in
         cluster.api.get(deployment_path(ns, "brand-recognition"))["spec"]["template"]["spec"], "nodeSelector gone")
    cluster.kubectl("patch", "-n", ns, "kisvc", "brand-recognition", "--type=merge",
                    "-p", json.dumps({"spec": {"autoscaling": None, "replicas": 1}}))
    wait(operator, lambda: cluster.api.get(hpa) is None and cluster.api.get(pdb) is None, "HPA and PDB deleted")

    used = operator_permissions(cluster)
    rules = granted(RBAC_RULES)
    assert used <= rules, f"requests without a rule: {sorted(used - rules)}"
    # Granted but not seen here: namespace discovery (namespaced mode, tested below) and the owner's
    # finalizers (what the API server checks for blockOwnerDeletion, never a request).
    assert rules - used == {("", "namespaces", "list"), ("", "namespaces", "watch"),
                            ("kubeinfer.io", "inferenceservices/finalizers", "update")}
    assert not granted(PEERING_RBAC_RULES) & used  # standalone: no peering


def test_a_namespaced_operator_sees_only_its_namespaces(tmp_path: Path) -> None:
    emulated = EmulatedCluster().start()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulated.url)
        kubectl = Kubectl(kubeconfig, tmp_path / "kube-cache")
        kubectl("apply", "--validate=false", "-f", str(CRD_PATH))
        for name in ("mine", "theirs"):
            create_namespace(kubectl, name)
        cluster = Cluster(emulated, kubectl, Api(emulated.url), kubeconfig, tmp_path)
        namespaced = Operator(cluster, env={"KUBEINFER_OPERATOR_NAMESPACE": "mine",
                                            "KUBEINFER_OPERATOR_RUNTIME_IMAGE": "example.org/from-env:1"})
        try:
            apply_example(cluster, "theirs", "video-processing.yaml")
            apply_example(cluster, "mine", "video-processing.yaml")
            deployment = wait(namespaced, lambda: cluster.api.get(deployment_path("mine", "video-processing")),
                              "the Deployment in the watched namespace")
            assert container(deployment)["image"] == "example.org/from-env:1"
            assert cluster.api.get(deployment_path("theirs", "video-processing")) is None
            used = operator_permissions(cluster)
            assert {("", "namespaces", "list"), ("", "namespaces", "watch")} <= used <= granted(RBAC_RULES)
        finally:
            assert namespaced.stop() == 0, namespaced.logs()
    finally:
        emulated.stop()


PEERING_CRD = {
    # kopf's ClusterKopfPeering resource, as kopf documents it (the chart installs it for several replicas).
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
    "spec": {"scope": "Cluster", "group": "kopf.dev",
             "names": {"kind": "ClusterKopfPeering", "plural": "clusterkopfpeerings",
                       "singular": "clusterkopfpeering"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"status": {"type": "object",
                                                             "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}


def test_with_peering_one_replica_works_and_another_takes_over(tmp_path: Path) -> None:
    emulated = EmulatedCluster().start()
    replicas: list[Operator] = []
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulated.url)
        kubectl = Kubectl(kubeconfig, tmp_path / "kube-cache")
        kubectl("apply", "--validate=false", "-f", str(CRD_PATH))
        kubectl("apply", "--validate=false", "-f", "-", stdin=json.dumps(PEERING_CRD))
        kubectl("apply", "--validate=false", "-f", "-", stdin=json.dumps(
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "kubeinfer"}}))
        cluster = Cluster(emulated, kubectl, Api(emulated.url), kubeconfig, tmp_path)
        standby = Operator(cluster, "--peering", "kubeinfer", "--priority", "10")
        replicas.append(standby)
        active = Operator(cluster, "--peering", "kubeinfer", "--priority", "20")
        replicas.append(active)
        wait(standby, lambda: "Pausing operations in favour of" in standby.logs(), "the standby to pause")
        apply_example(cluster, "default", "video-processing.yaml")
        wait(active, lambda: cluster.api.get(deployment_path("default", "video-processing")), "a Deployment")
        assert "video-processing" not in standby.logs()  # the paused replica did not touch it

        assert active.stop() == 0, active.logs()
        replicas.remove(active)
        wait(standby, lambda: "Resuming operations after the pause" in standby.logs(), "the standby to resume")
        apply_example(cluster, "default", "stream-classification.yaml")
        wait(standby, lambda: cluster.api.get(deployment_path("default", "stream-classification")),
             "the standby to take over")
        used = operator_permissions(cluster)
        peering = {(g, r, v) for g, r, v in used if g == "kopf.dev"}
        assert peering and peering <= granted(PEERING_RBAC_RULES)
        assert used - peering <= granted(RBAC_RULES)
    finally:
        for replica in replicas:
            replica.stop()
        emulated.stop()
