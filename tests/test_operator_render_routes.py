"""The rollout's Gateway API routes render purely: a GRPCRoute (port 8001) and an HTTPRoute (port 8080) NAME whose
one rule weighs the stable revision's Service against the candidate's, with the user's parentRefs and the
operator's usual metadata. The API server's verdict on them is tests/test_routes_cluster.py's.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubeinfer.operator.kube import PLURALS, RBAC_RULES
from kubeinfer.operator.render import Owner, common_labels, owner_reference
from kubeinfer.operator.render_routes import (
    GATEWAY_API_VERSION,
    render_routes,
    route_refs,
)

OWNER = Owner(name="svc", namespace="team-a", uid="6f1c3f5e-0000-4000-8000-000000000034")
PARENTS = ({"name": "edge", "namespace": "gw", "sectionName": "grpc"},)
STABLE, CANDIDATE = "a1b2c3d4e5", "f6e5d4c3b2"

# The operator's REST paths and ClusterRole rules for the routes (operator/kube.py).
ROUTE_PLURALS = {kind: PLURALS[kind] for kind in ("GRPCRoute", "HTTPRoute")}
ROUTE_RBAC_RULES = tuple(rule for rule in RBAC_RULES if rule[0] == "gateway.networking.k8s.io")


def by_kind(routes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    assert len(routes) == 2
    return {route["kind"]: route for route in routes}


def backends(route: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(service, port, weight) of the route's only rule."""
    (rule,) = route["spec"]["rules"]
    return [(ref["name"], ref["port"], ref["weight"]) for ref in rule["backendRefs"]]


@pytest.mark.parametrize("weight", [0, 10, 50, 100])
def test_the_weight_splits_between_the_two_revisions_services(weight: int) -> None:
    routes = by_kind(render_routes(OWNER, PARENTS, STABLE, CANDIDATE, weight))
    assert backends(routes["GRPCRoute"]) == [("svc-a1b2c3d4e5", 8001, 100 - weight), ("svc-f6e5d4c3b2", 8001, weight)]
    assert backends(routes["HTTPRoute"]) == [("svc-a1b2c3d4e5", 8080, 100 - weight), ("svc-f6e5d4c3b2", 8080, weight)]


def test_without_a_candidate_only_the_stable_revision_is_routed() -> None:
    routes = by_kind(render_routes(OWNER, PARENTS, STABLE, None, 0))
    assert backends(routes["GRPCRoute"]) == [("svc-a1b2c3d4e5", 8001, 100)]
    assert backends(routes["HTTPRoute"]) == [("svc-a1b2c3d4e5", 8080, 100)]


def test_backends_name_core_services_explicitly_so_a_read_back_route_matches() -> None:
    for route in render_routes(OWNER, PARENTS, STABLE, CANDIDATE, 10):
        for ref in route["spec"]["rules"][0]["backendRefs"]:
            assert (ref["group"], ref["kind"]) == ("", "Service")


def test_routes_carry_the_operators_metadata_and_the_users_parent_refs() -> None:
    for kind, route in by_kind(render_routes(OWNER, PARENTS, STABLE, CANDIDATE, 50)).items():
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1", kind
        meta = route["metadata"]
        assert (meta["name"], meta["namespace"]) == ("svc", "team-a")
        assert meta["labels"] == common_labels("svc")
        assert meta["ownerReferences"] == [owner_reference(OWNER)]
        assert meta["ownerReferences"][0]["uid"] == OWNER.uid
        assert route["spec"]["parentRefs"] == [{"name": "edge", "namespace": "gw", "sectionName": "grpc"}]


def test_parent_refs_are_copied_not_shared_with_the_spec() -> None:
    parents = [{"name": "edge", "namespace": "gw"}, {"name": "internal", "port": 443}]
    grpc, http = render_routes(OWNER, parents, STABLE, CANDIDATE, 10)
    parents[0]["name"] = "changed-after-rendering"
    grpc["spec"]["parentRefs"][1]["port"] = 8443
    assert [ref["name"] for ref in http["spec"]["parentRefs"]] == ["edge", "internal"]
    assert grpc["spec"]["parentRefs"][0]["name"] == "edge"
    assert parents[1]["port"] == 443
    assert http["spec"]["parentRefs"][1]["port"] == 443


def test_rendering_is_pure() -> None:
    assert render_routes(OWNER, PARENTS, STABLE, CANDIDATE, 10) == render_routes(OWNER, PARENTS, STABLE, CANDIDATE,
                                                                                 10)


@pytest.mark.parametrize(("candidate", "weight", "message"), [
    (CANDIDATE, -1, "0..100"), (CANDIDATE, 101, "0..100"), (CANDIDATE, 10.0, "0..100"), (CANDIDATE, True, "0..100"),
    (None, 10, "without a candidate"),
])
def test_impossible_weights_are_refused(candidate: str | None, weight: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_routes(OWNER, PARENTS, STABLE, candidate, weight)


def test_a_route_without_parents_is_refused() -> None:
    with pytest.raises(ValueError, match="parentRef"):
        render_routes(OWNER, (), STABLE, None, 0)


def test_route_refs_name_both_routes_for_removal() -> None:
    refs = route_refs("svc")
    assert [(ref.api_version, ref.kind, ref.name) for ref in refs] == [
        (GATEWAY_API_VERSION, "GRPCRoute", "svc"), (GATEWAY_API_VERSION, "HTTPRoute", "svc")]
    assert {ref.group for ref in refs} == {"gateway.networking.k8s.io"}
    assert [(ref.kind, ref.version) for ref in refs] == [("GRPCRoute", "v1"), ("HTTPRoute", "v1")]


def test_plurals_and_rbac_cover_every_route_kind() -> None:
    kinds = {route["kind"] for route in render_routes(OWNER, PARENTS, STABLE, None, 0)}
    assert set(ROUTE_PLURALS) == kinds
    assert {resource for _, resource, _ in ROUTE_RBAC_RULES} == set(ROUTE_PLURALS.values())
    for group, _, verbs in ROUTE_RBAC_RULES:
        assert group == "gateway.networking.k8s.io"
        assert {"get", "list", "watch", "create", "patch", "delete"} <= set(verbs)
