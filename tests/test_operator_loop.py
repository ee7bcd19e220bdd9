"""The operator in the loop: `kubeinfer operator` (a real process) and real kubectl against a real control plane.

kube-apiserver validates and defaults every InferenceService through the CRD, the Deployment and ReplicaSet
controllers roll pods out, the scheduler places them (GPU pods on the GPU nodes, or nowhere when GPUs run out),
kwok plays the nodes' kubelets (pods go Ready, or crash-loop and fail to pull when their image says so), and the
garbage collector removes children by owner reference. Each test has a namespace of its own.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cluster_support import FAILING_IMAGES, Api, Kubectl, LocalCluster, create_quota, install_crd, new_namespace
from localcluster import SLOW_IMAGE
from operator_support import (
    EXAMPLES,
    OperatorProcess,
    deployment_path,
    eventually,
    is_path,
    load_yaml,
    service_path,
)
from runtime_support import free_port

from kubeinfer.operator import metrics
from kubeinfer.operator.render import RuntimeDefaults
from kubeinfer.operator.spec import parse_spec
from kubeinfer.runtime.commands import serve as serve_command

IMAGE = "registry.example.com/kubeinfer/runtime:test"  # the gpu image (torch)
CPU_IMAGE = "registry.example.com/kubeinfer/runtime:test-cpu"
CRASHING, NOT_PULLABLE = list(FAILING_IMAGES)
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")  # the operator's two HTTP clients, as the audit log names them
T = TypeVar("T")


class Operator:
    """The operator process under test; ``restart`` replaces it with a fresh one (same flags)."""

    def __init__(self, kubeconfig: Path, logs: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.kubeconfig, self.logs_dir = kubeconfig, logs
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
            self.kubeconfig, self.logs_dir / f"operator-{id(self)}-{self.generation}.log", self.env)
        eventually(lambda: self.get(self.liveness_port, "/healthz") is not None, timeout=60,
                   what=f"the operator's liveness endpoint\n{self.logs()}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> int:
        assert self.process is not None
        return self.process.stop()

    def logs(self) -> str:
        return self.process.logs()[-6000:] if self.process else ""

    def get(self, port: int, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return None

    def metrics(self) -> str:
        return self.get(self.metrics_port, "/metrics") or ""


@pytest.fixture(scope="module", autouse=True)
def crds(kubectl: Kubectl) -> None:
    """The InferenceService CRD, before any fixture of this module uses the API."""
    install_crd(kubectl)


@pytest.fixture(scope="module")
def operator(kube_cluster: LocalCluster, kubectl: Kubectl,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    running = Operator(kube_cluster.kubeconfig, tmp_path_factory.mktemp("operator"), "--runtime-gpu-image", IMAGE,
                       "--runtime-cpu-image", CPU_IMAGE)
    yield running
    assert running.stop() == 0, running.logs()


@pytest.fixture()
def ns(kube_cluster: LocalCluster, api: Api, operator: Operator) -> Iterator[str]:
    name = new_namespace(api)
    kube_cluster.add_models_claim(name)
    yield name
    api.delete(f"/api/v1/namespaces/{name}")  # its pods free their nodes' CPUs and GPUs for the next tests


def wait(operator: Operator, check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    return eventually(check, timeout=timeout, interval=0.1,
                      what=f"{what}\n--- operator log ---\n{operator.logs()}")


def apply_example(kubectl: Kubectl, ns: str, file: str, **spec_changes: Any) -> dict[str, Any]:
    doc = load_yaml(EXAMPLES / file)
    doc["spec"].update(spec_changes)
    for key in [k for k, v in spec_changes.items() if v is None]:
        del doc["spec"][key]
    kubectl.apply(doc, "-n", ns)
    return doc


def patch_spec(kubectl: Kubectl, ns: str, name: str, spec: dict[str, Any]) -> None:
    kubectl("patch", "-n", ns, "kisvc", name, "--type=merge", "-p", json.dumps({"spec": spec}))


def status(api: Api, ns: str, name: str) -> dict[str, Any]:
    return ((api.get(is_path(ns, name)) or {}).get("status")) or {}


def phase_is(api: Api, ns: str, name: str, phase: str, reason: str | None = None) -> Callable[[], dict[str, Any]]:
    def check() -> dict[str, Any]:
        current = status(api, ns, name)
        if current.get("phase") != phase:
            return {}
        if reason is not None and current["conditions"][0]["reason"] != reason:
            return {}
        return current

    return check


def events_for(kubectl: Kubectl, ns: str, name: str) -> list[dict[str, Any]]:
    listed = kubectl.json("get", "events", "-n", ns)
    return [e for e in listed["items"] if e["involvedObject"].get("name") == name]


def pods_of(api: Api, ns: str, name: str) -> list[dict[str, Any]]:
    listed = api.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=kubeinfer.io/inferenceservice%3D{name}")
    assert listed is not None
    return [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def serve_args(args: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    serve_command.add_arguments(parser)
    return parser.parse_args(args)


def hpa_path(ns: str, name: str) -> str:
    return f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}"


def pdb_path(ns: str, name: str) -> str:
    return f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}"


def operator_requests(cluster: LocalCluster, since: int = 0) -> list[dict[str, Any]]:
    """What the operator asked the API server (from the audit log), after the first ``since`` audit events."""
    return [e for e in cluster.audit()[since:] if e.get("userAgent", "").startswith(OPERATOR_AGENTS)]


@pytest.mark.parametrize("file", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_rolls_out_to_ready_pods(api: Api, kubectl: Kubectl, operator: Operator, ns: str,
                                               file: str) -> None:
    doc = apply_example(kubectl, ns, file)
    name, spec = doc["metadata"]["name"], doc["spec"]
    replicas = spec.get("replicas") or spec.get("autoscaling", {}).get("minReplicas", 1)
    ready = wait(operator, lambda: (s := phase_is(api, ns, name, "Ready")()) and s["readyReplicas"] == replicas
                 and s, f"{name} Ready with {replicas} replicas", timeout=60)
    deployment = api.get(deployment_path(ns, name))
    owner = api.get(is_path(ns, name))
    service = api.get(service_path(ns, name))
    headless = api.get(service_path(ns, f"{name}-pods"))
    assert deployment and owner and service and headless
    runtime = container(deployment)
    parsed = serve_args(runtime["args"])
    assert parsed.task == spec["task"] and parsed.model_name == name
    # The image as the operator chose it (tests/test_operator_render.py holds the choice to its table), in the
    # Deployment and in the status.
    choice = RuntimeDefaults(image=IMAGE, cpu_image=CPU_IMAGE).runtime(parse_spec(spec))
    assert runtime["image"] == choice.image
    assert choice.image == (IMAGE if spec.get("gpus") or spec["model"]["uri"].endswith(".torchscript") else CPU_IMAGE)
    assert ready["runtime"] == choice.status()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8001, "http": 8080}
    assert headless["spec"]["clusterIP"] == "None"
    for child in (deployment, service, headless):
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "InferenceService", name, owner["metadata"]["uid"], True)
    wants_pdb = spec.get("replicas", 1) > 1 or spec.get("autoscaling", {}).get("maxReplicas", 1) > 1
    assert (api.get(hpa_path(ns, name)) is not None) == ("autoscaling" in spec)
    assert (api.get(pdb_path(ns, name)) is not None) == wants_pdb

    # Ready means the real pods are: scheduled by the scheduler, ready as the kubelet reports them.
    pods = pods_of(api, ns, name)
    assert ready["readyReplicas"] == replicas == len(pods)
    assert ready["endpoint"] == f"{name}.{ns}.svc:8001"
    assert ready["observedGeneration"] == owner["metadata"]["generation"]
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"].startswith("gpu-" if spec.get("gpus") else "cpu-"), pod["spec"]["nodeName"]
    if spec.get("gpus"):
        assert runtime["resources"]["limits"]["nvidia.com/gpu"] == str(spec["gpus"])
        assert parsed.device == "cuda"
    # The printer columns, as kubectl shows them.
    table = kubectl("get", "kisvc", name, "-n", ns).stdout.split("\n")
    assert table[0].split() == ["NAME", "TASK", "READY", "PHASE", "ENDPOINT", "ROLLOUT", "AGE"]
    assert table[1].split()[:5] == [name, spec["task"], str(replicas), "Ready", f"{name}.{ns}.svc:8001"]
    wide = kubectl("get", "kisvc", name, "-n", ns, "-o", "wide").stdout.split("\n")
    assert wide[0].split() == ["NAME", "TASK", "READY", "PHASE", "ENDPOINT", "ROLLOUT", "RUNTIME", "ENGINE", "IMAGE",
                               "AGE"]
    assert wide[1].split()[5:8] == [choice.variant, choice.engine, choice.image]  # ROLLOUT is empty: no rollout
    assert {"Created", "Ready"} <= {e["reason"] for e in events_for(kubectl, ns, name)}


def test_status_is_ready_only_once_the_pods_are(api: Api, kubectl: Kubectl, operator: Operator, ns: str) -> None:
    apply_example(kubectl, ns, "video-processing.yaml", image=SLOW_IMAGE)  # its pod takes 4 s to get ready
    starting = wait(operator, phase_is(api, ns, "video-processing", "Progressing", "ReplicasStarting"), "starting")
    assert starting["readyReplicas"] == 0 and "endpoint" not in starting  # nothing answers yet
    ready = wait(operator, phase_is(api, ns, "video-processing", "Ready"), "Ready")
    assert ready["readyReplicas"] == 1 and ready["endpoint"] == f"video-processing.{ns}.svc:8001"
    waited = kubectl("wait", "--for=condition=Ready", "-n", ns, "kisvc/video-processing", "--timeout=10s")
    assert "condition met" in waited.stdout
    assert f'{metrics.INFERENCESERVICES}{{phase="Ready"}}' in operator.metrics()
    assert {"Progressing", "Ready"} <= {e["reason"] for e in events_for(kubectl, ns, "video-processing")}


def test_crash_looping_pods_fail_the_service_with_their_last_words(api: Api, kubectl: Kubectl, operator: Operator,
                                                                    ns: str) -> None:
    apply_example(kubectl, ns, "video-processing.yaml", image=CRASHING)
    failed = wait(operator, phase_is(api, ns, "video-processing", "Failed", "CrashLoopBackOff"), "CrashLoopBackOff")
    assert "simulated crash" in failed["conditions"][0]["message"]  # the container's termination message
    assert "endpoint" not in failed  # nothing answers there
    assert any(e["reason"] == "CrashLoopBackOff" and e["type"] == "Warning"
               for e in events_for(kubectl, ns, "video-processing"))
    patch_spec(kubectl, ns, "video-processing", {"image": None})  # back to the operator's default image
    wait(operator, phase_is(api, ns, "video-processing", "Ready"), "Ready once the crash is gone")


def test_a_spec_change_rolls_out(api: Api, kubectl: Kubectl, operator: Operator, ns: str) -> None:
    apply_example(kubectl, ns, "stream-classification.yaml")
    wait(operator, phase_is(api, ns, "stream-classification", "Ready"), "Ready", timeout=60)
    first = api.get(deployment_path(ns, "stream-classification"))
    assert first is not None
    patch_spec(kubectl, ns, "stream-classification", {"image": SLOW_IMAGE, "window": 7})
    owner = api.get(is_path(ns, "stream-classification"))
    assert owner is not None
    rolling = wait(operator, lambda: (s := status(api, ns, "stream-classification")).get("observedGeneration")
                   == owner["metadata"]["generation"] and s, "the new generation observed")
    assert rolling["phase"] == "Progressing" and rolling["conditions"][0]["reason"] == "RollingOut"
    assert rolling["endpoint"] == f"stream-classification.{ns}.svc:8001"  # the old pods still answer
    patched = api.get(deployment_path(ns, "stream-classification"))
    assert patched is not None
    assert patched["metadata"]["uid"] == first["metadata"]["uid"]  # patched in place: a rolling update
    assert serve_args(container(patched)["args"]).window == 7
    wait(operator, phase_is(api, ns, "stream-classification", "Ready"), "Ready again", timeout=60)
    pods = pods_of(api, ns, "stream-classification")
    assert len(pods) == 2 and {container({"spec": {"template": p}})["image"] for p in pods} == {SLOW_IMAGE}


def test_a_failing_rollout_degrades_while_the_old_pods_serve(api: Api, kubectl: Kubectl, operator: Operator,
                                                             ns: str) -> None:
    apply_example(kubectl, ns, "stream-classification.yaml")
    wait(operator, phase_is(api, ns, "stream-classification", "Ready"), "Ready", timeout=60)
    patch_spec(kubectl, ns, "stream-classification", {"image": NOT_PULLABLE})
    degraded = wait(operator, phase_is(api, ns, "stream-classification", "Degraded", "ImagePullBackOff"),
                    "Degraded")
    assert "2/2 replicas ready" in degraded["conditions"][0]["message"]
    assert NOT_PULLABLE in degraded["conditions"][0]["message"]


def test_more_gpus_than_any_node_has_is_unschedulable(api: Api, kubectl: Kubectl, operator: Operator,
                                                      ns: str) -> None:
    apply_example(kubectl, ns, "yolo-detection-gpu.yaml", gpus=8, replicas=1)  # GPU nodes have 4 each
    failed = wait(operator, phase_is(api, ns, "yolo-detection", "Failed", "Unschedulable"), "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in failed["conditions"][0]["message"]  # the scheduler's own words
    patch_spec(kubectl, ns, "yolo-detection", {"gpus": 2})
    wait(operator, phase_is(api, ns, "yolo-detection", "Ready"), "Ready on a GPU node")


def test_children_deleted_or_edited_by_hand_are_put_back(api: Api, kubectl: Kubectl, operator: Operator,
                                                         ns: str) -> None:
    apply_example(kubectl, ns, "video-processing.yaml")
    original = wait(operator, lambda: api.get(deployment_path(ns, "video-processing")), "Deployment")
    wait(operator, lambda: api.get(service_path(ns, "video-processing-pods")), "headless Service")
    kubectl("delete", "-n", ns, "deployment/video-processing", "service/video-processing-pods")
    back = wait(operator, lambda: (d := api.get(deployment_path(ns, "video-processing")))
                and d["metadata"]["uid"] != original["metadata"]["uid"] and d, "the Deployment back")
    assert container(back)["args"] == container(original)["args"]
    wait(operator, lambda: api.get(service_path(ns, "video-processing-pods")), "the headless Service back")

    edit = [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": ["--task", "detect"]},
            {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": {"pool": "wrong"}}]
    kubectl("patch", "-n", ns, "deployment", "video-processing", "--type=json", "-p", json.dumps(edit))
    repaired = wait(operator, lambda: (d := api.get(deployment_path(ns, "video-processing")))
                    and container(d)["args"] == container(original)["args"] and d, "the args restored")
    assert "nodeSelector" not in repaired["spec"]["template"]["spec"]
    kubectl("patch", "-n", ns, "service", "video-processing", "--type=merge",
            "-p", json.dumps({"spec": {"selector": {"app": "someone-else"}}}))
    wait(operator, lambda: (s := api.get(service_path(ns, "video-processing")))
         and s["spec"]["selector"] == original["spec"]["selector"]["matchLabels"], "the selector restored")
    # Labels are what a label-filtered watch would lose sight of: the owner reference still finds the child.
    kubectl("label", "-n", ns, "service", "video-processing", "app.kubernetes.io/managed-by-", "--overwrite")
    kubectl("label", "-n", ns, "deployment", "video-processing", "app.kubernetes.io/managed-by=someone",
            "--overwrite")
    wait(operator, lambda: all(
        (api.get(path) or {}).get("metadata", {}).get("labels", {}).get("app.kubernetes.io/managed-by")
        == "kubeinfer-operator" for path in (service_path(ns, "video-processing"),
                                             deployment_path(ns, "video-processing"))), "the labels restored")


def test_moving_between_replicas_and_autoscaling(api: Api, kubectl: Kubectl, operator: Operator, ns: str) -> None:
    apply_example(kubectl, ns, "video-processing.yaml")
    wait(operator, phase_is(api, ns, "video-processing", "Ready"), "Ready")
    assert api.get(pdb_path(ns, "video-processing")) is None
    patch_spec(kubectl, ns, "video-processing", {"replicas": None, "autoscaling": {"minReplicas": 2,
                                                                                  "maxReplicas": 4}})
    hpa = wait(operator, lambda: api.get(hpa_path(ns, "video-processing")), "the HPA")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    wait(operator, lambda: api.get(pdb_path(ns, "video-processing")), "the PDB")
    # The real HPA controller brings the Deployment up to its minimum.
    wait(operator, lambda: status(api, ns, "video-processing").get("readyReplicas") == 2, "2 replicas by the HPA")
    kubectl("patch", "-n", ns, "hpa", "video-processing", "--type=merge", "-p", '{"spec": {"maxReplicas": 10}}')
    kubectl("patch", "-n", ns, "pdb", "video-processing", "--type=merge", "-p", '{"spec": {"maxUnavailable": 3}}')
    wait(operator, lambda: api.get(hpa_path(ns, "video-processing"))["spec"]["maxReplicas"] == 4
         and api.get(pdb_path(ns, "video-processing"))["spec"]["maxUnavailable"] == 1, "hand edits reverted")
    patch_spec(kubectl, ns, "video-processing", {"thresholds": {"iou": 0.6}})
    wait(operator, lambda: "0.6" in container(api.get(deployment_path(ns, "video-processing")))["args"], "new iou")
    assert api.get(deployment_path(ns, "video-processing"))["spec"]["replicas"] == 2  # the HPA's choice stays
    patch_spec(kubectl, ns, "video-processing", {"autoscaling": None, "replicas": 1})
    wait(operator, lambda: api.get(hpa_path(ns, "video-processing")) is None
         and api.get(pdb_path(ns, "video-processing")) is None, "the HPA and PDB removed")
    assert api.get(deployment_path(ns, "video-processing"))["spec"]["replicas"] == 1
    assert "Deleted" in {e["reason"] for e in events_for(kubectl, ns, "video-processing")}


def test_kubectl_scale_goes_through_the_scale_subresource(api: Api, kubectl: Kubectl, operator: Operator,
                                                           ns: str) -> None:
    apply_example(kubectl, ns, "video-processing.yaml")
    wait(operator, phase_is(api, ns, "video-processing", "Ready"), "Ready")
    kubectl("scale", "-n", ns, "kisvc/video-processing", "--replicas", "3")
    scale = api.get(is_path(ns, "video-processing", "scale"))
    assert scale is not None and scale["spec"]["replicas"] == 3
    ready = wait(operator, lambda: (s := status(api, ns, "video-processing")).get("readyReplicas") == 3
                 and s["phase"] == "Ready" and s, "3 ready replicas")
    assert ready["replicas"] == 3
    assert api.get(pdb_path(ns, "video-processing")) is not None  # more than one replica: a PDB
    scale = api.get(is_path(ns, "video-processing", "scale"))
    assert scale["status"]["replicas"] == 3 and "kubeinfer.io/inferenceservice=video-processing" in \
        scale["status"]["selector"]
    kubectl("scale", "-n", ns, "kisvc/video-processing", "--replicas", "0")
    idle = wait(operator, lambda: (s := phase_is(api, ns, "video-processing", "Idle", "ScaledToZero")())
                and s["readyReplicas"] == 0 and s, "Idle, the pods gone")
    assert "endpoint" not in idle
    # Status is a subresource: a write to the main resource cannot change it.
    code, body = api.call("PATCH", is_path(ns, "video-processing"), {"status": {"phase": "Ready"}})
    assert code == 200 and body["status"]["phase"] == "Idle"


def test_a_child_the_api_server_refuses_is_reported(api: Api, kubectl: Kubectl, operator: Operator,
                                                    ns: str) -> None:
    apply_example(kubectl, ns, "video-processing.yaml")
    ready = wait(operator, phase_is(api, ns, "video-processing", "Ready"), "Ready")
    applied_generation = ready["observedGeneration"]
    # Accepted by the CRD, refused by the Deployment's own validation: requests above limits.
    patch_spec(kubectl, ns, "video-processing", {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}})
    degraded = wait(operator, phase_is(api, ns, "video-processing", "Degraded", "ChildRejected"), "ChildRejected")
    message = degraded["conditions"][0]["message"]
    assert "refused Deployment video-processing" in message and "must be less than or equal to cpu limit" in message
    assert degraded["observedGeneration"] == applied_generation  # the new generation was not applied
    assert any(e["reason"] == "ChildRejected" for e in events_for(kubectl, ns, "video-processing"))
    patch_spec(kubectl, ns, "video-processing", {"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}})
    fixed = wait(operator, phase_is(api, ns, "video-processing", "Ready"), "Ready with the fixed spec")
    assert fixed["observedGeneration"] > applied_generation

    # Admission can refuse too: a quota that allows no Deployment in the namespace (403 from the API server).
    create_quota(api, ns, "no-deployments", {"count/deployments.apps": "1"})
    apply_example(kubectl, ns, "classification-clustering.yaml")
    failed = wait(operator, phase_is(api, ns, "classification-clustering", "Failed", "ChildRejected"),
                  "a quota refusal")
    assert "exceeded quota" in failed["conditions"][0]["message"]
    assert "observedGeneration" not in failed
    # A 403 may be lifted without a spec change (quota raised, a permission granted): the operator retries.
    api.delete(f"/api/v1/namespaces/{ns}/resourcequotas/no-deployments")
    wait(operator, phase_is(api, ns, "classification-clustering", "Ready"), "Ready after the retry", timeout=60)


def test_a_name_taken_by_someone_else_is_not_taken_over(api: Api, kubectl: Kubectl, operator: Operator,
                                                        ns: str) -> None:
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "video-processing", "namespace": ns},
               "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}}
    api.create(service_path(ns), foreign)
    apply_example(kubectl, ns, "video-processing.yaml")
    failed = wait(operator, phase_is(api, ns, "video-processing", "Failed", "ChildConflict"), "ChildConflict")
    assert "Service video-processing exists and is not managed by InferenceService video-processing" in \
        failed["conditions"][0]["message"]
    assert api.get(service_path(ns, "video-processing"))["spec"]["selector"] == {"app": "theirs"}


def test_deleting_the_resource_lets_the_garbage_collector_remove_everything(
        api: Api, kubectl: Kubectl, operator: Operator, ns: str) -> None:
    apply_example(kubectl, ns, "brand-recognition.yaml")
    wait(operator, phase_is(api, ns, "brand-recognition", "Ready"), "Ready", timeout=60)
    paths = [deployment_path(ns, "brand-recognition"), service_path(ns, "brand-recognition"),
             service_path(ns, "brand-recognition-pods"), hpa_path(ns, "brand-recognition"),
             pdb_path(ns, "brand-recognition")]
    assert all(api.get(p) for p in paths) and pods_of(api, ns, "brand-recognition")
    owner = api.get(is_path(ns, "brand-recognition"))
    assert owner is not None and not owner["metadata"].get("finalizers")  # nothing blocks deletion
    kubectl("delete", "-n", ns, "kisvc", "brand-recognition", "--wait=false")
    wait(operator, lambda: not any(api.get(p) for p in paths) and not pods_of(api, ns, "brand-recognition"),
         "children, ReplicaSets and pods gone", timeout=60)
    replicasets = api.get(f"/apis/apps/v1/namespaces/{ns}/replicasets")
    assert replicasets is not None and replicasets["items"] == []


def test_metrics_and_liveness(operator: Operator) -> None:
    text = operator.metrics()
    assert 'kubeinfer_operator_reconciliations_total{result="success"}' in text
    count = next(line for line in text.splitlines()
                 if line.startswith(f"{metrics.RECONCILE_DURATION_SECONDS}_count"))
    assert float(count.split()[-1]) > 0
    assert f"{metrics.INFERENCESERVICES}{{phase=" in text
    assert operator.get(operator.liveness_port, "/healthz") is not None


WRITES = ("create", "update", "patch", "delete")


def kinds(requests: list[dict[str, Any]]) -> dict[str, int]:
    """How many requests of each verb, resource and subresource."""
    counted: dict[str, int] = {}
    for e in requests:
        ref = e.get("objectRef") or {}
        key = f"{e['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
        counted[key] = counted.get(key, 0) + 1
    return dict(sorted(counted.items(), key=lambda item: -item[1]))


def test_a_restarted_operator_changes_nothing(kube_cluster: LocalCluster, api: Api, kubectl: Kubectl,
                                              operator: Operator, ns: str) -> None:
    apply_example(kubectl, ns, "brand-recognition.yaml")
    wait(operator, phase_is(api, ns, "brand-recognition", "Ready"), "Ready", timeout=60)
    paths = [deployment_path(ns, "brand-recognition"), service_path(ns, "brand-recognition"),
             service_path(ns, "brand-recognition-pods"), hpa_path(ns, "brand-recognition"),
             pdb_path(ns, "brand-recognition"), is_path(ns, "brand-recognition")]
    wait(operator, lambda: status(api, ns, "brand-recognition").get("readyReplicas") == 2, "the HPA's 2 replicas")
    time.sleep(1.0)  # a status refresh the last events asked for lands within handlers.STATUS_DELAY (0.5 s)
    status_before = status(api, ns, "brand-recognition")
    services = paths[1:3]  # no controller writes these: any change would be the operator's
    before = {p: api.get(p)["metadata"]["resourceVersion"] for p in services}
    audit_start = len(kube_cluster.audit())
    operator.restart()
    wait(operator, lambda: any(line.startswith('kubeinfer_operator_reconciliations_total{result="success"}')
                               and float(line.split()[-1]) > 0 for line in operator.metrics().splitlines()),
         "the restarted operator to reconcile")
    assert {p: api.get(p)["metadata"]["resourceVersion"] for p in services} == before
    writes = [e for e in operator_requests(kube_cluster, audit_start)
              if e["verb"] in WRITES and e["objectRef"]["namespace"] == ns
              and e["objectRef"]["resource"] != "events"]
    assert writes == [], ([(w["verb"], w["requestURI"]) for w in writes], status_before,
                          status(api, ns, "brand-recognition"))
    assert len(kubectl.json("get", "deployments", "-n", ns)["items"]) == 1


def test_the_operators_own_writes_do_not_trigger_reconciliations(kube_cluster: LocalCluster, api: Api,
                                                                 kubectl: Kubectl, operator: Operator,
                                                                 ns: str) -> None:
    count = 20
    audit_start = len(kube_cluster.audit())
    base = load_yaml(EXAMPLES / "video-processing.yaml")
    small = {"requests": {"cpu": "100m", "memory": "128Mi"}}  # 20 of them fit on the fake nodes
    documents = [{**base, "metadata": {"name": f"svc-{i}"}, "spec": {**base["spec"], "resources": small}}
                 for i in range(count)]
    kubectl.apply({"apiVersion": "v1", "kind": "List", "items": documents}, "-n", ns)
    for i in range(count):
        wait(operator, phase_is(api, ns, f"svc-{i}", "Ready"), f"svc-{i} Ready", timeout=90)
    requests = [e for e in operator_requests(kube_cluster, audit_start)
                if (e.get("objectRef") or {}).get("namespace") == ns]
    children = [e for e in requests if e["objectRef"]["resource"] in ("deployments", "services")]
    # Per resource: 3 children created, each read once before (GET), and a status write or a few as pods
    # come up. A reconciliation per child event would read every child again each time.
    gets = [e for e in children if e["verb"] == "get"]
    assert len(gets) <= 3 * count + count, f"{len(gets)} GETs of children for {count} resources: {kinds(requests)}"
    creates = [e for e in children if e["verb"] == "create"]
    assert len(creates) == 3 * count
    assert len(requests) <= 14 * count, f"{len(requests)} requests for {count} resources: {kinds(requests)}"
