"""The API emulator behaves like an API server where the operator relies on it (see tests/kube_emulator.py)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from kube_emulator import EmulatedCluster
from operator_support import Api, deployment_path, is_path, load_crd, service_path


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    cluster = EmulatedCluster().start()
    client = Api(cluster.url)
    client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", load_crd())
    yield client
    cluster.stop()


def service(name: str, **meta: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, **meta}, "spec": {"ports": [{"port": 1}]}}


def test_metadata_is_stamped_and_conflicts_are_409(api: Api) -> None:
    created = api.create(service_path("default"), service("stamped"))
    meta = created["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert api.call("POST", service_path("default"), service("stamped"))[0] == 409
    assert api.call("POST", service_path("nowhere"), service("x"))[0] == 404  # no such namespace
    generated = api.create(service_path("default"), {**service(""), "metadata": {"generateName": "gen-"}})
    assert generated["metadata"]["name"].startswith("gen-") and len(generated["metadata"]["name"]) > 4


def test_patches_bump_versions_and_generation_and_failed_tests_are_422(api: Api) -> None:
    first = api.create(service_path("default"), service("patched"))
    labelled = api.patch(service_path("default", "patched"), {"metadata": {"labels": {"a": "b"}}})
    assert int(labelled["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert labelled["metadata"]["generation"] == 1  # metadata only
    respec = api.patch(service_path("default", "patched"), {"spec": {"ports": [{"port": 2}]}})
    assert respec["metadata"]["generation"] == 2
    status, body = api.call("PATCH", service_path("default", "patched"),
                            [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"}],
                            content_type="application/json-patch+json")
    assert status == 422, body


def test_status_is_only_written_through_the_status_subresource(api: Api) -> None:
    resource = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": "iso"},
                "spec": {"task": "video"}, "status": {"phase": "Ready"}}
    created = api.create(is_path("default"), resource)
    assert "status" not in created
    api.patch(is_path("default", "iso"), {"status": {"phase": "Failed"}, "spec": {"replicas": 2}})
    after_main = api.get(is_path("default", "iso"))
    assert after_main is not None and "status" not in after_main and after_main["spec"]["replicas"] == 2
    api.patch(is_path("default", "iso", "status"), {"status": {"phase": "Pending"}, "spec": {"replicas": 9}})
    after_status = api.get(is_path("default", "iso"))
    assert after_status is not None
    assert after_status["status"] == {"phase": "Pending"} and after_status["spec"]["replicas"] == 2


def test_the_garbage_collector_follows_owner_uids(api: Api) -> None:
    owner = api.create(is_path("default"), {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                                            "metadata": {"name": "gc"}, "spec": {"task": "video"}})
    ref = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "name": "gc",
           "uid": owner["metadata"]["uid"], "controller": True}
    api.create(service_path("default"), service("gc-child", ownerReferences=[ref]))
    api.create(service_path("default"), service("gc-other", ownerReferences=[{**ref, "uid": "not-this-one"}]))
    assert api.get(service_path("default", "gc-other")) is None  # owner never existed: collected at once
    assert api.get(service_path("default", "gc-child")) is not None
    assert api.delete(is_path("default", "gc")) == 200
    assert api.get(service_path("default", "gc-child")) is None


def test_watches_resume_from_a_resource_version_without_losing_events(api: Api) -> None:
    listed = api.get("/apis/apps/v1/namespaces/default/deployments")
    assert listed is not None and listed["kind"] == "DeploymentList"
    since = listed["metadata"]["resourceVersion"]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w", "labels": {"x": "1"}},
                  "spec": {"selector": {"matchLabels": {"x": "1"}},
                           "template": {"metadata": {"labels": {"x": "1"}}, "spec": {"containers": []}}}}
    api.create(deployment_path("default"), deployment)  # after the list, before the watch
    api.patch(deployment_path("default", "w"), {"spec": {"replicas": 3}})
    url = (f"{api.url}/apis/apps/v1/namespaces/default/deployments?watch=true&resourceVersion={since}"
           "&timeoutSeconds=1&labelSelector=x%3D1")
    with urllib.request.urlopen(url, timeout=10) as stream:
        events = [json.loads(line) for line in stream.read().splitlines() if line.strip()]
    assert [(e["type"], e["object"]["spec"].get("replicas")) for e in events] == [("ADDED", None), ("MODIFIED", 3)]
    filtered = f"{api.url}/apis/apps/v1/namespaces/default/deployments?labelSelector=x%3D2"
    with urllib.request.urlopen(filtered, timeout=10) as response:
        assert json.loads(response.read())["items"] == []
