"""Children changed behind the operator's back, against the real control plane: it must notice and repair them.

One operator for the module, authenticated as a ServiceAccount of its own holding exactly
``kubeinfer.operator.kube`` RBAC_RULES (the chart's rules), as in tests/test_operator_modes.py. Each test works in
a fresh namespace and edits children as a person with kubectl would (the admin's JSON merge patches).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_operator_support import Operator, operator_with_chart_rules, wait
from cluster_support import Api, Kubectl, LocalCluster, new_namespace, wait_established
from operator_support import CRD_PATH, deployment_path, is_path, pod_path, service_path

IMAGE = "registry.example.com/kubeinfer/runtime:drift"
_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def crds(kubectl: Kubectl) -> None:
    """The InferenceService CRD, before any fixture of this module uses the API."""
    kubectl("apply", "-f", str(CRD_PATH))
    wait_established(kubectl)


@pytest.fixture(scope="module")
def operator(kube_cluster: LocalCluster, api: Api, kubectl: Kubectl,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """One operator, cluster-wide, as a ServiceAccount with exactly the chart's rules."""
    with operator_with_chart_rules(kube_cluster, api, kubectl, tmp_path_factory.mktemp("drift"), "drift",
                                   "--runtime-image", IMAGE) as running:
        yield running


@pytest.fixture()
def ns(api: Api, kubectl: Kubectl) -> Iterator[str]:
    name = new_namespace(api, "drift")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def create(api: Api, ns: str, **spec: Any) -> str:
    name = f"s{next(_names)}"
    api.create(is_path(ns), {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                             "metadata": {"name": name},
                             "spec": {"task": "detect", "model": {"uri": "/models/m.pt"},
                                      "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}, **spec}})
    return name


def status(api: Api, ns: str, name: str) -> dict[str, Any]:
    return ((api.get(is_path(ns, name)) or {}).get("status")) or {}


def ready(api: Api, ns: str, name: str, generation: int = 1) -> Any:
    current = status(api, ns, name)
    return current if current.get("phase") == "Ready" and current.get("observedGeneration") == generation else None


def pods(api: Api, ns: str, name: str) -> list[dict[str, Any]]:
    found = api.get(pod_path(ns) + f"?labelSelector=kubeinfer.io/inferenceservice%3D{name}")
    return (found or {}).get("items") or []


def owners(obj: dict[str, Any] | None) -> list[str]:
    return [ref["name"] for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
            if ref.get("controller") and ref.get("kind") == "InferenceService"]


# -- #2: ownerReferences removed by hand ------------------------------------------------------------------------
def test_owner_references_removed_from_a_service_are_put_back(operator: Operator, api: Api, kubectl: Kubectl,
                                                              ns: str) -> None:
    name = create(api, ns)
    wait(operator, lambda: ready(api, ns, name), f"{name} Ready")
    patched = kubectl("patch", "-n", ns, "service", name, "--type=merge", "-p",
                      '{"metadata":{"ownerReferences":null}}', "-o", "json")
    assert owners(json.loads(patched.stdout)) == []
    wait(operator, lambda: owners(api.get(service_path(ns, name))) == [name], "the owner reference put back",
         timeout=20)
    # ...so the garbage collector deletes the Service with its InferenceService.
    assert api.delete(is_path(ns, name)) == 200
    wait(operator, lambda: api.get(service_path(ns, name)) is None, "the Service deleted with its owner")


def test_owner_references_removed_from_a_deployment_are_put_back_and_status_stays(
        operator: Operator, api: Api, kubectl: Kubectl, ns: str) -> None:
    name = create(api, ns)
    wait(operator, lambda: ready(api, ns, name), f"{name} Ready")
    patched = kubectl("patch", "-n", ns, "deployment", name, "--type=merge", "-p",
                      '{"metadata":{"ownerReferences":null}}', "-o", "json")
    assert owners(json.loads(patched.stdout)) == []
    wait(operator, lambda: owners(api.get(deployment_path(ns, name))) == [name], "the owner reference put back",
         timeout=20)
    # A pod replaced by the ReplicaSet: status follows the Deployment, which the operator still knows.
    (pod,) = pods(api, ns, name)
    assert api.delete(pod_path(ns, pod["metadata"]["name"])) == 200
    wait(operator, lambda: [p for p in pods(api, ns, name) if p["metadata"]["name"] != pod["metadata"]["name"]
                            and p["status"].get("phase") == "Running"], "the replacement pod running")
    time.sleep(2)  # the operator's status refresh after the pod events
    final = wait(operator, lambda: ready(api, ns, name), f"{name} Ready again")
    assert final["endpoint"] == f"{name}.{ns}.svc:8001", final


# -- #4: a Deployment paused by hand -----------------------------------------------------------------------------
def test_a_deployment_paused_by_hand_is_resumed(operator: Operator, api: Api, kubectl: Kubectl, ns: str) -> None:
    name = create(api, ns, replicas=1)
    wait(operator, lambda: ready(api, ns, name), f"{name} Ready")
    kubectl("patch", "-n", ns, "deployment", name, "-p", '{"spec":{"paused":true}}')
    wait(operator, lambda: not (api.get(deployment_path(ns, name)) or {}).get("spec", {}).get("paused"),
         "the Deployment resumed", timeout=20)
    api.patch(is_path(ns, name), {"spec": {"thresholds": {"iou": 0.6}}})
    final = wait(operator, lambda: ready(api, ns, name, generation=2), "the new spec rolled out and Ready")
    assert final["conditions"][0]["reason"] == "AllReplicasReady", final
    deployment = api.get(deployment_path(ns, name))
    assert deployment is not None and "paused" not in deployment["spec"]
    assert "--iou 0.6" in " ".join(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


# -- #7: rollout counts of the Deployment's previous generation ------------------------------------------------
class StatusWatch:
    """Every status the InferenceService shows, as `kubectl get -w` streams them (none is missed)."""

    TEMPLATE = ('{.status.observedGeneration}|{.status.phase}|{.status.conditions[0].reason}|'
                '{.status.conditions[0].message}{"\\n"}')

    def __init__(self, kubectl: Kubectl, ns: str, name: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            ["kubectl", "get", "-n", ns, "inferenceservice", name, "--watch", "-o", f"jsonpath={self.TEMPLATE}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=kubectl.env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def statuses(self) -> list[list[str]]:
        """[observedGeneration, phase, reason, message] of each status seen."""
        return [line.split("|", 3) for line in list(self.lines) if line.count("|") >= 3]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._reader.join(5)


def test_rollout_counts_are_reported_only_once_the_deployment_controller_saw_the_change(
        operator: Operator, api: Api, kubectl: Kubectl, ns: str) -> None:
    name = create(api, ns, replicas=2)
    wait(operator, lambda: ready(api, ns, name), f"{name} Ready")
    watch = StatusWatch(kubectl, ns, name)
    try:
        wait(operator, lambda: watch.statuses(), "the watch's first line")
        api.patch(is_path(ns, name), {"spec": {"thresholds": {"iou": 0.6}}})
        wait(operator, lambda: ready(api, ns, name, generation=2), "the new spec rolled out and Ready")
        time.sleep(1)
    finally:
        watch.stop()
    after = [s for s in watch.statuses() if s[0] == "2"]
    assert after, watch.lines
    _, phase, reason, message = after[0]
    # The first status of generation 2 is written right after the Deployment patch: nothing of the new pod
    # template exists yet, whatever the previous generation's counts say.
    assert (phase, reason) == ("Progressing", "RollingOut"), after
    assert "2/2 replicas updated" not in message, after
    assert "Deployment controller" in message, after
    assert after[-1][1] == "Ready", after

