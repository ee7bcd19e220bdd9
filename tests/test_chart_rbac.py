"""The chart grants the operator exactly the API access it uses, scoped to the namespaces it watches.

The source of truth is ``kubeinfer.operator.kube``: RBAC_RULES (every call the operator makes)
and PEERING_RBAC_RULES (kopf's peering, with --peering). A rule added on either side without
the other fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from chart_support import FULL_VALUES, NAMESPACE, render

from kubeinfer.operator.kube import PEERING_RBAC_RULES, RBAC_RULES

# Resources without a namespace: only these may be granted through a ClusterRoleBinding when the
# operator watches chosen namespaces.
CLUSTER_SCOPED = {"namespaces", "customresourcedefinitions", "clusterkopfpeerings"}

Rule = tuple[str, str, frozenset[str]]


def flatten(role: dict[str, Any]) -> set[Rule]:
    """ClusterRole rules -> one (apiGroup, resource, verbs) per group and resource."""
    out: set[Rule] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.add((group, resource, frozenset(rule["verbs"])))
    return out


def expected(rules: tuple[tuple[str, str, tuple[str, ...]], ...]) -> set[Rule]:
    return {(group, resource, frozenset(verbs)) for group, resource, verbs in rules}


def roles(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}


def granted(objects: list[dict[str, Any]]) -> set[Rule]:
    return set().union(*(flatten(r) for r in roles(objects).values()))


def test_default_rules_equal_the_operator_calls() -> None:
    objects = render()
    assert granted(objects) == expected(RBAC_RULES)


def test_peering_adds_exactly_the_peering_rules() -> None:
    objects = render("--set", "operator.peering.enabled=true", "--set", "operator.replicas=2")
    assert granted(objects) == expected(RBAC_RULES) | expected(PEERING_RBAC_RULES)


def test_all_namespaces_binds_both_roles_cluster_wide() -> None:
    objects = render()
    bindings = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} == set(roles(objects))
    assert not [o for o in objects if o["kind"] == "RoleBinding"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubeinfer-operator",
                                        "namespace": NAMESPACE}]


def test_watched_namespaces_get_namespaced_rules_only_there() -> None:
    objects = render(values=FULL_VALUES)
    all_roles = roles(objects)
    cluster_bindings = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert len(cluster_bindings) == 1
    cluster_role = all_roles[cluster_bindings[0]["roleRef"]["name"]]
    assert {resource for _, resource, _ in flatten(cluster_role)} <= CLUSTER_SCOPED
    namespaced_role = next(r for name, r in all_roles.items() if name != cluster_role["metadata"]["name"])
    assert not {resource for _, resource, _ in flatten(namespaced_role)} & CLUSTER_SCOPED
    role_bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in role_bindings) == ["vision", "vision-staging"]
    for binding in role_bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                      "name": namespaced_role["metadata"]["name"]}
        assert binding["subjects"][0]["name"] == "kubeinfer-operator"


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_the_deployment_uses_the_bound_service_account(values: Any) -> None:
    objects = render(values=values)
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                        "namespace": account["metadata"]["namespace"]}]
