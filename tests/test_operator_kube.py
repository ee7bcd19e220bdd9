"""kube.py over real HTTPS (the official client's ApiClient) against the real API server, with injected faults.

Faults are injected by wrapping the transport kube.py is built on (the way a flaky network would answer), never by
patching the client; every other answer is the real API server's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cluster_support import Api, Kubectl, LocalCluster, install_crd
from operator_support import deployment_path, is_path, service_path
from runtime_support import free_port

from kubeinfer.operator.children import ChildConflict, apply, merge_patch_for, remove
from kubeinfer.operator.kube import ApiError, Kube
from kubeinfer.operator.render import ChildRef, Owner, RuntimeDefaults, render_deployment, render_pdb, render_service
from kubeinfer.operator.spec import parse_spec

SPEC = parse_spec({"task": "detect", "model": {"uri": "/m.pt"}, "nodeSelector": {"pool": "gpu"}})
NS = "kube-client"
CLIENT_AGENT = "OpenAPI-Generator/"  # the official client's user agent, as the audit log records it


@pytest.fixture(scope="module")
def cluster(kube_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    kubectl = Kubectl(kube_cluster.kubeconfig, tmp_path_factory.mktemp("kube-cache"))
    install_crd(kubectl)
    api = Api(kube_cluster)
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    api.create(is_path(NS), {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                             "metadata": {"name": "svc"}, "spec": {"task": "video"}})
    yield kube_cluster
    api.delete(is_path(NS, "svc"))  # later operators in the run must not find this resource
    api.delete(f"/api/v1/namespaces/{NS}")


@pytest.fixture()
def owner(cluster: LocalCluster) -> Owner:
    """A real InferenceService: the garbage collector deletes children whose owner does not exist."""
    body = Api(cluster).get(is_path(NS, "svc"))
    assert body is not None
    return Owner("svc", NS, body["metadata"]["uid"])


def some_uid(api: Api, name: str) -> str:
    """The uid of an object that exists (so owner references to it survive the garbage collector)."""
    made = api.create(f"/api/v1/namespaces/{NS}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                                              "metadata": {"name": name}})
    return str(made["metadata"]["uid"])


@pytest.fixture()
def kube(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Kube:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return Kube.from_environment(timeout=5)


@pytest.fixture()
def api(cluster: LocalCluster) -> Iterator[Api]:
    client = Api(cluster)
    yield client
    for path in (deployment_path(NS, "svc"), service_path(NS, "svc"),
                 f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/svc"):
        client.delete(path + "?gracePeriodSeconds=0")
    # Deletion is not instant for every kind: wait until the names are free again.
    for path in (deployment_path(NS, "svc"), service_path(NS, "svc")):
        for _ in range(100):
            if client.get(path) is None:
                break


def writes(cluster: LocalCluster, since: int) -> list[str]:
    """The client's write requests (from the audit log) after the first ``since`` audit events."""
    return [f"{e['verb']} {e['objectRef']['resource']}" for e in cluster.audit()[since:]
            if e.get("userAgent", "").startswith(CLIENT_AGENT) and e["verb"] not in ("get", "list", "watch")]


def faulty(kube: Kube, fault: Callable[[str, str], tuple[int, str, bytes] | None]) -> Kube:
    """The same client with ``fault(method, path)`` consulted before each request (None: send it)."""
    real = kube._transport

    def transport(method: str, path: str, body: Any, headers: Any, query: Any) -> tuple[int, str, bytes]:
        injected = fault(method, path)
        return injected if injected is not None else real(method, path, body, headers, query)

    return Kube(transport, attempts=4, backoff=0.001)


def test_apply_creates_then_leaves_alone_then_patches(kube: Kube, api: Api, cluster: LocalCluster,
                                                      owner: Owner) -> None:
    desired = render_deployment(owner, SPEC, RuntimeDefaults("img:1"))
    assert kube.get("apps/v1", "Deployment", NS, "svc") is None
    created = apply(kube, desired)
    assert created.action == "created" and created.object["metadata"]["uid"]
    start = len(cluster.audit())
    again = apply(kube, desired)
    assert again.action == "unchanged"
    assert writes(cluster, start) == []  # reconciling twice sends no write at all
    changed = copy.deepcopy(desired)
    changed["spec"]["template"]["spec"]["containers"][0]["args"][1] = "video"
    patched = apply(kube, changed)
    assert patched.action == "patched"
    assert patched.object["metadata"]["uid"] == created.object["metadata"]["uid"]
    assert patched.object["spec"]["template"]["spec"]["containers"][0]["args"][1] == "video"


def test_fields_the_spec_dropped_are_removed(kube: Kube, api: Api, owner: Owner) -> None:
    apply(kube, render_deployment(owner, SPEC, RuntimeDefaults("img:1")))
    without = render_deployment(owner, parse_spec({"task": "detect", "model": {"uri": "/m.pt"}}),
                                RuntimeDefaults("img:1"))
    assert apply(kube, without).action == "patched"
    live = api.get(deployment_path(NS, "svc"))
    assert live is not None and "nodeSelector" not in live["spec"]["template"]["spec"]
    assert merge_patch_for(without, live) is None


def test_extra_selector_keys_are_removed(kube: Kube, api: Api, owner: Owner) -> None:
    apply(kube, render_service(owner))
    api.patch(service_path(NS, "svc"), {"spec": {"selector": {"tier": "other"}}})
    assert apply(kube, render_service(owner)).action == "patched"
    live = api.get(service_path(NS, "svc"))
    assert live is not None and live["spec"]["selector"] == render_service(owner)["spec"]["selector"]


def test_created_by_someone_else_meanwhile_is_patched(kube: Kube, api: Api, owner: Owner) -> None:
    desired = render_service(owner)

    def race(method: str, path: str) -> None:
        if method == "POST" and api.get(service_path(NS, "svc")) is None:
            stale = copy.deepcopy(desired)
            stale["spec"]["ports"] = stale["spec"]["ports"][:1]
            api.create(service_path(NS), stale)  # a restarted operator's older copy

    applied = apply(faulty(kube, race), desired)
    assert applied.action == "patched"
    assert len(applied.object["spec"]["ports"]) == 2


def test_deleted_by_someone_else_meanwhile_is_created_again(kube: Kube, api: Api, owner: Owner) -> None:
    apply(kube, render_service(owner))
    changed = render_service(owner)
    changed["spec"]["ports"][1]["port"] = 9090

    deleted: list[bool] = []

    def race(method: str, path: str) -> None:
        if method == "PATCH" and not deleted:
            deleted.append(api.delete(service_path(NS, "svc")) == 200)

    applied = apply(faulty(kube, race), changed)
    assert deleted == [True] and applied.action == "created"
    assert applied.object["spec"]["ports"][1]["port"] == 9090


def test_transient_errors_are_retried_and_others_are_not(kube: Kube, api: Api, owner: Owner) -> None:
    calls: list[str] = []

    def flaky(method: str, path: str) -> tuple[int, str, bytes] | None:
        calls.append(method)
        return (503, "Service Unavailable", b'{"message": "etcd leader changed"}') if len(calls) <= 2 else None

    assert faulty(kube, flaky).get("apps/v1", "Deployment", NS, "svc") is None
    assert calls == ["GET", "GET", "GET"]

    def broken(method: str, path: str) -> tuple[int, str, bytes]:
        return 500, "Internal Server Error", b'{"message": "boom", "reason": "InternalError"}'

    with pytest.raises(ApiError, match="HTTP 500 InternalError: boom") as caught:
        faulty(kube, broken).get("apps/v1", "Deployment", NS, "svc")
    assert caught.value.transient

    rejected: list[str] = []

    def invalid(method: str, path: str) -> tuple[int, str, bytes]:
        rejected.append(method)
        return 422, "Unprocessable Entity", b'{"message": "spec.replicas: Invalid value", "reason": "Invalid"}'

    with pytest.raises(ApiError, match=r"spec\.replicas: Invalid value") as refused:
        apply(faulty(kube, invalid), render_service(owner))
    assert refused.value.status == 422 and not refused.value.transient and rejected == ["GET"]


def test_an_unreachable_server_is_a_transient_error() -> None:
    from kubernetes import client

    configuration = client.Configuration(host=f"http://127.0.0.1:{free_port()}")
    configuration.retries = 0
    from kubeinfer.operator import kube as kube_module

    unreachable = Kube(kube_module._kubernetes_transport(client.ApiClient(configuration), 2), attempts=2,
                       backoff=0.001)
    with pytest.raises(ApiError) as caught:
        unreachable.get("v1", "Service", NS, "x")
    assert caught.value.status == 0 and caught.value.transient


def test_objects_of_others_are_never_taken_over(kube: Kube, api: Api, owner: Owner) -> None:
    foreign = render_service(owner)
    foreign["metadata"]["labels"] = {"app": "theirs"}
    foreign["metadata"]["ownerReferences"][0].update(kind="Application", name="theirs",
                                                     uid=some_uid(api, "application-theirs"))
    api.create(service_path(NS), foreign)
    with pytest.raises(ChildConflict, match="controlled by Application theirs"):
        apply(kube, render_service(owner))


def test_children_of_a_deleted_namesake_wait_for_the_garbage_collector(kube: Kube, api: Api, owner: Owner) -> None:
    # The namesake is gone, but the garbage collector has not got to its children yet: a stand-in uid.
    predecessor = Owner("svc", NS, some_uid(api, "namesake-stand-in"))
    held = render_service(predecessor)
    # The collector sees no InferenceService of that uid and deletes the Service at once: a finalizer keeps it
    # (terminating) while the test looks, as a slow collector would.
    held["metadata"]["finalizers"] = ["kubeinfer.test/hold"]
    api.create(service_path(NS), held)
    try:
        with pytest.raises(ApiError, match="still belongs to a deleted InferenceService") as caught:
            apply(kube, render_service(owner))
        assert caught.value.status == 409
    finally:
        api.patch(service_path(NS, "svc"), {"metadata": {"finalizers": None}})


def test_our_own_orphans_are_adopted(kube: Kube, api: Api, owner: Owner) -> None:
    orphan = render_service(owner)
    del orphan["metadata"]["ownerReferences"]
    api.create(service_path(NS), orphan)
    applied = apply(kube, render_service(owner))
    assert applied.action == "patched"
    assert applied.object["metadata"]["ownerReferences"][0]["uid"] == owner.uid


def test_remove_deletes_only_what_the_owner_controls(kube: Kube, api: Api, owner: Owner) -> None:
    ref = ChildRef("policy/v1", "PodDisruptionBudget", "svc")
    assert remove(kube, ref, NS, owner.uid) is False  # nothing there
    apply(kube, render_pdb(owner))
    assert remove(kube, ref, NS, "someone-else") is False
    assert kube.get(ref.api_version, ref.kind, NS, "svc") is not None
    assert remove(kube, ref, NS, owner.uid) is True
    assert kube.get(ref.api_version, ref.kind, NS, "svc") is None
