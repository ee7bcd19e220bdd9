"""The suite's Kubernetes: one real control plane per test run (scripts/cluster/localcluster.py), shared by tests.

Each test works in a namespace of its own, so tests never see each other's objects. ``Api`` speaks JSON to the
API server as the admin; ``Kubectl`` is the real kubectl with a kubeconfig; ``service_account_kubeconfig`` gives
a kubeconfig that authenticates as a ServiceAccount through a TokenRequest, as a pod's token would.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "cluster"))

from localcluster import (  # noqa: E402
    FAILING_IMAGES,
    LOCAL_NODE,
    LOCAL_NODE_LABEL,
    ClusterError,
    LocalCluster,
    binaries,
    write_kubeconfig,
)

__all__ = ["FAILING_IMAGES", "LOCAL_NODE", "LOCAL_NODE_LABEL", "Api", "ClusterError", "Kubectl", "LocalCluster",
           "install_crd", "new_namespace", "service_account_kubeconfig", "start_cluster",
           "wait_established"]

CRD_PATH = ROOT / "crds" / "inferenceservices.kubeinfer.io.yaml"


def start_cluster(state: Path) -> LocalCluster:
    """Build (once, cached) and start the control plane; a missing Go fails under CI, else skips."""
    try:
        bin_dir = binaries(build=True)
    except ClusterError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no local control plane: {exc}")
    return LocalCluster(state, bin_dir).start()


class Api:
    """JSON calls to the API server as the admin; statuses are returned, not raised, unless a helper says so."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/merge-patch+json") -> tuple[int, Any]:
        return self.cluster.api(method, path, body, content_type if method == "PATCH" else "application/json")

    def get(self, path: str) -> dict[str, Any] | None:
        status, body = self.call("GET", path)
        if status == 404:
            return None
        assert status == 200, (path, status, body)
        return body

    def patch(self, path: str, body: Any, content_type: str = "application/merge-patch+json") -> dict[str, Any]:
        status, result = self.call("PATCH", path, body, content_type)
        assert status == 200, (path, status, result)
        return result

    def create(self, path: str, body: Any) -> dict[str, Any]:
        status, result = self.call("POST", path, body)
        assert status == 201, (path, status, result)
        return result

    def delete(self, path: str) -> int:
        return self.call("DELETE", path)[0]


def create_quota(api: Api, namespace: str, name: str, hard: dict[str, str], timeout: float = 30.0) -> None:
    """A ResourceQuota, once the quota controller has counted it: until then the API server's admission may still
    answer from a cached "no quota in this namespace" and let a create through."""
    api.create(f"/api/v1/namespaces/{namespace}/resourcequotas", {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": hard}})
    deadline = time.monotonic() + timeout
    path = f"/api/v1/namespaces/{namespace}/resourcequotas/{name}"
    while ((api.get(path) or {}).get("status") or {}).get("hard") != hard:
        assert time.monotonic() < deadline, f"quota {namespace}/{name} never counted by the quota controller"
        time.sleep(0.1)


class Kubectl:
    """Real kubectl pointed at a kubeconfig (the admin's unless another is given)."""

    def __init__(self, kubeconfig: Path, cache_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBECACHEDIR": str(cache_dir)}

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, env=self.env,
                              timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, obj: dict[str, Any], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("apply", *args, "-f", "-", stdin=json.dumps(obj), check=check)


_namespaces = itertools.count()


def new_namespace(api: Api, prefix: str = "t") -> str:
    """A fresh namespace (with its default ServiceAccount, which pods need, already made)."""
    name = f"{prefix}{next(_namespaces)}"
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def service_account_kubeconfig(cluster: LocalCluster, namespace: str, name: str, path: Path,
                               seconds: int = 3600) -> Path:
    """A kubeconfig that authenticates as ServiceAccount namespace/name with a token from the TokenRequest API."""
    status, body = cluster.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                "spec": {"expirationSeconds": seconds}})
    assert status == 201, (status, body)
    return write_kubeconfig(path, cluster.server, cluster.pki, user={"token": body["status"]["token"]},
                            namespace=namespace)


def wait_established(kubectl: Kubectl, *crds: str) -> None:
    """Wait until the API server serves these CRDs (right after creation they may have no conditions yet, and
    `kubectl wait` then errs instead of waiting)."""
    names = [f"crd/{name}" for name in crds or ("inferenceservices.kubeinfer.io",)]
    for _ in range(100):
        done = kubectl("wait", "--for=condition=Established", *names, "--timeout=60s", check=False)
        if done.returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the CRDs never became Established: {done.stderr}")


def install_crd(kubectl: Kubectl) -> str:
    """Apply crds/ and wait until the API server serves InferenceServices; kubectl's output."""
    applied = kubectl("apply", "-f", str(CRD_PATH))
    wait_established(kubectl)
    return applied.stdout
