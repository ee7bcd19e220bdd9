"""The rollout's Gateway API routes against the real API server with the Gateway API's own CRDs (standard channel,
from its Go module, scripts/gateway-crds.sh): the rendered GRPCRoute and HTTPRoute are created (not dry-run) for
every weight a rollout walks through, read back so that the operator would send no patch, moved from step to step
by merge patches, removed by the garbage collector with their InferenceService, and handled with nothing but
``ROUTE_RBAC_RULES``. A route the CRDs' schema forbids is refused, so acceptance means the validation ran.

The two CRDs are removed again at the end, so the rest of the session runs without the Gateway API.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_operator_support import bind_cluster_role
from cluster_support import Api, Kubectl, LocalCluster, install_crd, new_namespace, service_account_kubeconfig
from cluster_support import wait_established as wait_crds
from operator_support import eventually, is_path

from kubeinfer.operator.children import merge_patch_for
from kubeinfer.operator.kube import PLURALS, RBAC_RULES
from kubeinfer.operator.render import Owner
from kubeinfer.operator.render_routes import (
    GATEWAY_API_VERSION,
    render_routes,
    route_refs,
)

ROOT = Path(__file__).resolve().parents[1]
ROUTE_CRDS = {"GRPCRoute": "grpcroutes.gateway.networking.k8s.io", "HTTPRoute": "httproutes.gateway.networking.k8s.io"}
PARENTS = ({"name": "edge", "namespace": "gw", "sectionName": "grpc"}, {"name": "internal"})
STABLE, CANDIDATE = "a1b2c3d4e5", "f6e5d4c3b2"
CASES = [(None, 0), (CANDIDATE, 0), (CANDIDATE, 10), (CANDIDATE, 50), (CANDIDATE, 100)]

# The operator's REST paths and ClusterRole rules for the routes (operator/kube.py).
ROUTE_PLURALS = {kind: PLURALS[kind] for kind in ("GRPCRoute", "HTTPRoute")}
ROUTE_RBAC_RULES = tuple(rule for rule in RBAC_RULES if rule[0] == "gateway.networking.k8s.io")


@pytest.fixture(scope="module", autouse=True)
def crds(kubectl: Kubectl) -> None:
    """The InferenceService CRD (the routes' owner must exist), before any fixture of this module uses the API."""
    install_crd(kubectl)


@pytest.fixture(scope="module", autouse=True)
def gateway_api(kubectl: Kubectl, crds: None) -> Iterator[Path]:
    """The Gateway API's GRPCRoute and HTTPRoute CRDs (standard channel), installed for this module only."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gateway-crds.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            raise AssertionError(f"scripts/gateway-crds.sh failed: {done.stderr}")
        pytest.skip(f"the Gateway API's CRDs could not be fetched: {done.stderr.strip()}")
    folder = Path(done.stdout.strip().splitlines()[-1])
    for plural in ROUTE_PLURALS.values():
        kubectl("apply", "--server-side", "-f", str(folder / f"gateway.networking.k8s.io_{plural}.yaml"))
    wait_crds(kubectl, *ROUTE_CRDS.values())
    yield folder
    kubectl("delete", "crd", *ROUTE_CRDS.values(), "--wait=true", "--timeout=60s", check=False)


@pytest.fixture(scope="module")
def ns(api: Api, kubectl: Kubectl) -> Iterator[str]:
    name = new_namespace(api, "routes")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def route_path(kind: str, namespace: str, name: str = "") -> str:
    path = f"/apis/{GATEWAY_API_VERSION}/namespaces/{namespace}/{ROUTE_PLURALS[kind]}"
    return path + (f"/{name}" if name else "")


def owner_of(api: Api, ns: str, name: str) -> Owner:
    """A real InferenceService to own the routes (owner references must name an existing uid)."""
    created = api.create(is_path(ns), {
        "apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
        "spec": {"task": "detect", "model": {"uri": "/m.pt"}}})
    return Owner(name, ns, created["metadata"]["uid"])


def weights(route: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(ref["name"], ref["port"], ref["weight"]) for ref in route["spec"]["rules"][0]["backendRefs"]]


def test_the_crds_serve_the_api_version_the_routes_use(kubectl: Kubectl) -> None:
    for kind, crd in ROUTE_CRDS.items():
        served = kubectl.json("get", "crd", crd)
        versions = {v["name"]: (v["served"], v["storage"]) for v in served["spec"]["versions"]}
        assert versions.get("v1") == (True, True), (kind, versions)
        assert served["spec"]["names"]["plural"] == ROUTE_PLURALS[kind]
        assert served["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] == "standard"


@pytest.mark.parametrize(("candidate", "weight"), CASES)
def test_the_rendered_routes_are_created_and_read_back_unchanged(
        api: Api, ns: str, candidate: str | None, weight: int) -> None:
    owner = owner_of(api, ns, f"w{weight}-{'cand' if candidate else 'alone'}")
    for route in render_routes(owner, PARENTS, STABLE, candidate, weight):
        api.create(route_path(route["kind"], ns), route)
        live = api.get(route_path(route["kind"], ns, owner.name))
        assert live is not None
        # Unchanged: the operator's next reconciliation sends no patch (the CRD's defaults only add fields).
        assert merge_patch_for(route, live) is None, (route["spec"], live["spec"])
        assert weights(live) == weights(route)
        assert live["metadata"]["ownerReferences"][0]["uid"] == owner.uid
        assert [ref["name"] for ref in live["spec"]["parentRefs"]] == ["edge", "internal"]


def test_a_rollout_moves_the_routes_step_by_step_with_merge_patches(api: Api, ns: str) -> None:
    """As the operator would: every step's rendering replaces the backends, up to promotion, when the candidate
    becomes the stable revision and the old one leaves the routes."""
    owner = owner_of(api, ns, "walk")
    for route in render_routes(owner, PARENTS, STABLE, None, 0):
        api.create(route_path(route["kind"], ns), route)
    for stable, candidate, weight in [(STABLE, CANDIDATE, 0), (STABLE, CANDIDATE, 10), (STABLE, CANDIDATE, 50),
                                      (STABLE, CANDIDATE, 100), (CANDIDATE, None, 0)]:
        for route in render_routes(owner, PARENTS, stable, candidate, weight):
            path = route_path(route["kind"], ns, owner.name)
            patch = merge_patch_for(route, api.get(path) or {})
            assert patch is not None, (route["kind"], weight)
            live = api.patch(path, patch)
            assert weights(live) == weights(route), (route["kind"], weight)
            assert merge_patch_for(route, live) is None
    grpc = api.get(route_path("GRPCRoute", ns, owner.name))
    assert grpc is not None and weights(grpc) == [(f"walk-{CANDIDATE}", 8001, 100)]


def broken(api: Api, ns: str, name: str, kind: str) -> dict[str, Any]:
    owner = owner_of(api, ns, name)
    return next(r for r in render_routes(owner, PARENTS, STABLE, CANDIDATE, 10) if r["kind"] == kind)


@pytest.mark.parametrize("kind", sorted(ROUTE_PLURALS))
def test_the_crds_schema_is_enforced_so_acceptance_means_something(api: Api, ns: str, kind: str) -> None:
    route = broken(api, ns, f"weight-{kind.lower()}", kind)
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = 1000001
    code, body = api.call("POST", route_path(kind, ns), route)
    assert code == 422 and "backendRefs[1].weight" in body["message"], (code, body)
    assert "1000000" in body["message"], body["message"]

    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = 1000000  # the bound itself is allowed: only it failed
    del route["spec"]["rules"][0]["backendRefs"][0]["port"]
    code, body = api.call("POST", route_path(kind, ns), route)
    assert code == 422 and "Must have port for Service reference" in body["message"], (code, body)
    assert api.get(route_path(kind, ns, route["metadata"]["name"])) is None

    route["spec"]["rules"][0]["backendRefs"][0]["port"] = 8001
    api.create(route_path(kind, ns), route)


def test_the_routes_go_with_their_inference_service(api: Api, ns: str) -> None:
    """Owner references on CRD kinds work: the garbage collector removes both routes with the owner."""
    owner = owner_of(api, ns, "owned")
    for route in render_routes(owner, PARENTS, STABLE, CANDIDATE, 10):
        api.create(route_path(route["kind"], ns), route)
    assert api.delete(is_path(ns, owner.name)) == 200
    for kind in ROUTE_PLURALS:
        eventually(lambda kind=kind: api.get(route_path(kind, ns, owner.name)) is None, 60, 0.2,
                   f"the garbage collector to remove {kind} {owner.name}")


def test_the_routes_rbac_rules_are_enough(api: Api, kube_cluster: LocalCluster, ns: str, tmp_path: Path) -> None:
    """A ServiceAccount holding only ``ROUTE_RBAC_RULES`` creates, lists, patches and deletes the routes the
    operator would (the operator's ``inferenceservices/finalizers`` rule covers clusters that enforce owner
    reference permissions; this one runs the default admission plugins)."""
    owner = owner_of(api, ns, "rbac")
    bind_cluster_role(api, f"{ns}-routes", ROUTE_RBAC_RULES, ns, "routes")
    config = service_account_kubeconfig(kube_cluster, ns, "routes", tmp_path / "routes.kubeconfig")
    account = Kubectl(config, tmp_path / "cache")
    for route in render_routes(owner, PARENTS, STABLE, CANDIDATE, 10):
        account.apply(route, "-n", ns)
    listed = account.json("get", "grpcroutes.gateway.networking.k8s.io,httproutes.gateway.networking.k8s.io",
                          "-n", ns, "-l", f"app.kubernetes.io/instance={owner.name}")
    assert sorted(item["kind"] for item in listed["items"]) == ["GRPCRoute", "HTTPRoute"]
    for route in render_routes(owner, PARENTS, STABLE, CANDIDATE, 50):
        account("patch", f"{ROUTE_PLURALS[route['kind']]}.gateway.networking.k8s.io", owner.name, "-n", ns,
                "--type=merge", "-p", json.dumps({"spec": route["spec"]}))
        live = api.get(route_path(route["kind"], ns, owner.name))
        assert live is not None and weights(live) == weights(route)
    for ref in route_refs(owner.name):
        account("delete", f"{ROUTE_PLURALS[ref.kind]}.{ref.group}", ref.name, "-n", ns, "--wait=true")
        assert api.get(route_path(ref.kind, ns, ref.name)) is None
    denied = account("get", "services", "-n", ns, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr, denied.stderr
