"""The operator run out of cluster against the real control plane, and what the audit log says it asked for.

Used by tests/test_chart_cluster.py (the operator authenticated as the chart's ServiceAccount) and
tests/test_operator_modes.py (namespaced and peering modes). Every operator here authenticates as a
ServiceAccount of its own, so the audit log tells its requests apart from everyone else's by user name.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cluster_support import Api, Kubectl, LocalCluster, new_namespace, service_account_kubeconfig
from operator_support import OperatorProcess, eventually
from runtime_support import free_port

from kubeinfer.operator.kube import RBAC_RULES

T = TypeVar("T")
Rules = tuple[tuple[str, str, tuple[str, ...]], ...]


class Operator:
    """`kubeinfer operator` as a local process with a kubeconfig; metrics and liveness on free loopback ports."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str, env: dict[str, str] | None = None,
                 wait_live: bool = True) -> None:
        self.metrics_port, self.liveness_port = free_port(), free_port()
        # The flags given last win: the chart's own flags may come first in ``args``.
        self.process = OperatorProcess(
            [*args, "--listen-host", "127.0.0.1", "--metrics-port", str(self.metrics_port),
             "--liveness-port", str(self.liveness_port)], kubeconfig, log, env)
        if wait_live:
            eventually(lambda: self.get("/healthz") is not None or not self.process.alive(), timeout=60,
                       what=f"the operator's liveness endpoint\n{self.logs()}")
            assert self.process.alive(), f"the operator exited:\n{self.logs()}"

    def get(self, path: str, port: int | None = None) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.liveness_port}{path}", timeout=2) as answer:
                return answer.read().decode()
        except OSError:
            return None

    def logs(self, tail: int = 8000) -> str:
        return self.process.logs()[-tail:]

    def stop(self) -> int:
        return self.process.stop()


def wait(operator: Operator | None, check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    log = f"\n--- operator log ---\n{operator.logs()}" if operator is not None else ""
    return eventually(check, timeout=timeout, interval=0.2, what=what + log)


def username(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


def requests_by(cluster: LocalCluster, user: str, since: int = 0) -> list[dict[str, Any]]:
    """The audit events of ``user``'s requests, after the first ``since`` events of the log."""
    return [e for e in cluster.audit()[since:] if (e.get("user") or {}).get("username") == user]


def permission(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) of a resource request; None for /api, /apis discovery."""
    ref = event.get("objectRef")
    if not ref or "resource" not in ref:
        return None
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return ref.get("apiGroup", ""), resource, event["verb"]


def permissions(events: Iterable[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {p for p in map(permission, events) if p is not None}


def granted(rules: Rules) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource, verbs in rules for verb in verbs}


def refused(events: Iterable[dict[str, Any]], namespaces: Iterable[str] | None = None) -> list[tuple[Any, ...]]:
    """(verb, objectRef or URI, code) of the requests the API server refused (401, 403).

    Every refusal by the RBAC authorizer counts; with ``namespaces``, other refusals (admission: a quota, a
    namespace being deleted by another test) count only in those namespaces.
    """
    scope = None if namespaces is None else set(namespaces)
    found = []
    for e in events:
        code = (e.get("responseStatus") or {}).get("code")
        if code not in (401, 403):
            continue
        by_rbac = (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
        if by_rbac or code == 401 or scope is None or (e.get("objectRef") or {}).get("namespace") in scope:
            found.append((e["verb"], e.get("objectRef") or e.get("requestURI"), code))
    return found


def forbidden_by_rbac(events: Iterable[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """(verb, resource, namespace, code) of the requests the RBAC authorizer refused."""
    return [(e["verb"], e["objectRef"]["resource"], e["objectRef"].get("namespace", ""), e["responseStatus"]["code"])
            for e in events if (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"]


def bind_cluster_role(api: Api, name: str, rules: Rules, namespace: str, service_account: str) -> None:
    """A ServiceAccount with a ClusterRole made of ``rules``, bound cluster-wide (replaced if it exists)."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": [{"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
                      for group, resource, verbs in rules]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": service_account}}
    for path, body in ((f"/api/v1/namespaces/{namespace}/serviceaccounts", account),
                       ("/apis/rbac.authorization.k8s.io/v1/clusterroles", role),
                       ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)):
        code, answer = api.call("POST", path, body)
        assert code in (201, 409), (path, code, answer)


def operator_account(cluster: LocalCluster, api: Api, home: str, name: str, rules: Rules,
                     kubeconfig: Path) -> tuple[str, Path]:
    """A ServiceAccount home/name holding ``rules`` cluster-wide: (its user name, a kubeconfig for it)."""
    from cluster_support import service_account_kubeconfig

    bind_cluster_role(api, f"{home}-{name}", rules, home, name)
    return username(home, name), service_account_kubeconfig(cluster, home, name, kubeconfig)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


@contextlib.contextmanager
def operator_with_chart_rules(cluster: LocalCluster, api: Api, kubectl: Kubectl, folder: Path, prefix: str,
                              *args: str) -> Iterator[Operator]:
    """One operator, cluster-wide, as a ServiceAccount (in a namespace of its own) holding exactly the chart's
    rules (``RBAC_RULES``); it must exit 0 when stopped."""
    home = new_namespace(api, prefix)
    bind_cluster_role(api, f"{home}-operator", RBAC_RULES, home, "operator")
    kubeconfig = service_account_kubeconfig(cluster, home, "operator", folder / "kubeconfig")
    running = Operator(kubeconfig, folder / "operator.log", *args)
    yield running
    assert running.stop() == 0, running.logs()
    kubectl("delete", "namespace", home, "--wait=false", check=False)
