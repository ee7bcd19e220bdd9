"""A rollout's children and status on the real API server, with the operator holding exactly the chart's rules.

The pods here are kwok's (they never serve), so no figure ever arrives and no step is ever judged: what this proves
is the wiring the real node's rollouts (tests/test_real_node_rollout.py) rely on. A new revision gets its own
Deployment and headless Service, the shared Services select the stable revision during a shadow step, the
traffic table names both, the status and the printer column show the step, a rollout without Prometheus holds
and says why, and a spec changed back (or a rollout removed) leaves nothing of the new revision behind.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_operator_support import Operator, operator_with_chart_rules, wait
from cluster_support import Api, Kubectl, LocalCluster, new_namespace, wait_established
from operator_support import CRD_PATH, deployment_path, is_path, service_path

from kubeinfer.operator.render import REVISION_LABEL

IMAGE = "registry.example.com/kubeinfer/runtime:rollout"
_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def crds(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(CRD_PATH))
    wait_established(kubectl)


@pytest.fixture(scope="module")
def operator(kube_cluster: LocalCluster, api: Api, kubectl: Kubectl,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with operator_with_chart_rules(kube_cluster, api, kubectl, tmp_path_factory.mktemp("rollout"), "rollout",
                                   "--runtime-image", IMAGE) as running:
        yield running


@pytest.fixture()
def ns(api: Api, kubectl: Kubectl) -> Iterator[str]:
    name = new_namespace(api, "rollout")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def spec(model: str, **rollout: Any) -> dict[str, Any]:
    return {"task": "classify", "model": {"uri": model}, "labels": {"uri": "/models/labels.txt"}, "replicas": 2,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            "rollout": {"steps": [{"shadow": 50}, {"weight": 50}], "interval": 10, **rollout}}


def rollout_status(api: Api, ns: str, name: str) -> dict[str, Any]:
    return (((api.get(is_path(ns, name)) or {}).get("status")) or {}).get("rollout") or {}


def owned(api: Api, path: str, name: str) -> list[str]:
    items = (api.get(path + f"?labelSelector=kubeinfer.io/inferenceservice%3D{name}") or {}).get("items") or []
    return sorted(item["metadata"]["name"] for item in items)


def table(api: Api, ns: str, name: str) -> dict[str, Any]:
    config_map = api.get(f"/api/v1/namespaces/{ns}/configmaps/{name}-traffic") or {}
    return json.loads((config_map.get("data") or {}).get("traffic.json") or "{}")


def test_a_new_revision_gets_its_own_deployment_and_the_shared_services_stay_on_the_stable_one(
        operator: Operator, api: Api, kubectl: Kubectl, ns: str) -> None:
    name = f"r{next(_names)}"
    api.create(is_path(ns), {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                             "metadata": {"name": name}, "spec": spec("/models/a.onnx")})
    stable = wait(operator, lambda: rollout_status(api, ns, name).get("stableRevision"), "a stable revision")
    assert rollout_status(api, ns, name)["stableDeployment"] == name
    template = (api.get(deployment_path(ns, name)) or {})["spec"]["template"]
    assert template["metadata"]["labels"][REVISION_LABEL] == stable
    assert table(api, ns, name)["stable"]["revision"] == stable and table(api, ns, name)["candidate"] is None

    api.patch(is_path(ns, name), {"spec": {"model": {"uri": "/models/b.onnx"}}})
    candidate = wait(operator, lambda: rollout_status(api, ns, name).get("candidateRevision"), "a new revision")
    assert candidate != stable
    wait(operator, lambda: owned(api, deployment_path(ns), name) == sorted([name, f"{name}-{candidate}"]) or None,
         "the new revision's Deployment beside the stable one")
    new = api.get(deployment_path(ns, f"{name}-{candidate}")) or {}
    assert "/models/b.onnx" in new["spec"]["template"]["spec"]["containers"][0]["args"]
    assert new["spec"]["replicas"] == 1  # 50 % of 2
    old = api.get(deployment_path(ns, name)) or {}
    assert "/models/a.onnx" in old["spec"]["template"]["spec"]["containers"][0]["args"]  # the stable is untouched
    for shared in (name, f"{name}-pods"):
        assert (api.get(service_path(ns, shared)) or {})["spec"]["selector"][REVISION_LABEL] == stable
    assert (api.get(service_path(ns, f"{name}-{candidate}")) or {})["spec"]["selector"][REVISION_LABEL] == candidate
    traffic = wait(operator, lambda: table(api, ns, name) if table(api, ns, name).get("candidate") else None,
                   "the traffic table naming the new revision")
    assert traffic["shadowPercent"] == 50 and traffic["candidateWeight"] == 0
    assert traffic["candidate"]["target"] == f"{name}-{candidate}.{ns}.svc.cluster.local:8001"
    # no Prometheus anywhere: the step holds, and the status says why; the printer column shows the step
    held = wait(operator, lambda: rollout_status(api, ns, name) if "Prometheus" in rollout_status(api, ns, name).get(
        "message", "") else None, "a rollout holding for want of Prometheus", timeout=30)
    assert held["phase"] == "Holding" and held["step"].startswith("shadow 50%")
    printed = kubectl("get", "kisvc", name, "-n", ns).stdout
    assert "shadow 50%" in printed.splitlines()[1], printed

    # the spec back to the stable revision: the new one goes, the table names the stable one alone
    api.patch(is_path(ns, name), {"spec": {"model": {"uri": "/models/a.onnx"}}})
    wait(operator, lambda: owned(api, deployment_path(ns), name) == [name] or None, "the new revision's Deployment "
         "deleted")
    wait(operator, lambda: f"{name}-{candidate}" not in owned(api, service_path(ns), name) or None,
         "the new revision's Service deleted")
    assert rollout_status(api, ns, name).get("candidateRevision") is None
    assert table(api, ns, name)["candidate"] is None
    reasons = kubectl("get", "events", "-n", ns, "-o", "jsonpath={.items[*].reason}").stdout.split()
    assert "RolloutStarted" in reasons and "RolloutAborted" in reasons


def test_removing_the_rollout_returns_to_one_deployment(operator: Operator, api: Api, ns: str) -> None:
    name = f"r{next(_names)}"
    api.create(is_path(ns), {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                             "metadata": {"name": name}, "spec": spec("/models/a.onnx")})
    wait(operator, lambda: rollout_status(api, ns, name).get("stableRevision"), "a stable revision")
    api.patch(is_path(ns, name), {"spec": {"rollout": None}})
    wait(operator, lambda: not rollout_status(api, ns, name) or None, "status.rollout removed")
    wait(operator, lambda: api.get(f"/api/v1/namespaces/{ns}/configmaps/{name}-traffic") is None or None,
         "the traffic table deleted")
    template = (api.get(deployment_path(ns, name)) or {})["spec"]["template"]
    assert REVISION_LABEL not in template["metadata"]["labels"]
    assert REVISION_LABEL not in (api.get(service_path(ns, name)) or {})["spec"]["selector"]
