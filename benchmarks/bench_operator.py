"""How fast the operator brings a burst of InferenceServices to their children and a status, on a real API server.

    .venv/bin/python benchmarks/bench_operator.py [--count 100] [--runs 3]

Starts the local control plane (scripts/cluster/localcluster.py: kube-apiserver, controller-manager, scheduler,
etcd, kwok nodes) in a temporary folder, installs the CRD, runs `kubeinfer operator` as a process, then creates
COUNT InferenceServices at once (POSTed by 16 threads) and measures, from the first POST:

- reconciled: every resource has its Deployment and both Services and a status (the operator's own work);
- ready: every resource reports phase Ready (includes the Deployment controller, scheduler and fake kubelets).

It prints those times and the operator's API requests per resource (from the API server's audit log), for each run
in a fresh namespace. The goal on a 2-core machine: 100 resources reconciled in at most 3 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "cluster"))

from localcluster import LocalCluster, binaries, free_port  # noqa: E402

CRD = ROOT / "crds" / "inferenceservices.kubeinfer.io.yaml"
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")


def resource(name: str) -> dict[str, Any]:
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
            "spec": {"task": "detect", "model": {"uri": "/opt/kubeinfer/models/detector.onnx"}, "replicas": 1,
                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}}


def snapshot(cluster: LocalCluster, namespace: str) -> tuple[int, int]:
    """(resources with Deployment, both Services and a status; resources Ready) in the namespace."""
    _, listed = cluster.api("GET", f"/apis/kubeinfer.io/v1alpha1/namespaces/{namespace}/inferenceservices")
    _, deployments = cluster.api("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments")
    _, services = cluster.api("GET", f"/api/v1/namespaces/{namespace}/services")
    have_deployment = {d["metadata"]["name"] for d in deployments["items"]}
    have_service = {s["metadata"]["name"] for s in services["items"]}
    reconciled = ready = 0
    for item in listed["items"]:
        name, status = item["metadata"]["name"], item.get("status") or {}
        if status.get("phase") and name in have_deployment and {name, f"{name}-pods"} <= have_service:
            reconciled += 1
        ready += status.get("phase") == "Ready"
    return reconciled, ready


def run_once(cluster: LocalCluster, count: int, index: int) -> dict[str, Any]:
    namespace = f"bench-{index}"
    cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": namespace}})
    audit_start = len(cluster.audit())
    path = f"/apis/kubeinfer.io/v1alpha1/namespaces/{namespace}/inferenceservices"
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: cluster.api("POST", path, resource(f"svc-{i}"))[0], range(count)))
    created = time.monotonic()
    assert codes == [201] * count, Counter(codes)
    reconciled_at = ready_at = None
    deadline = started + 120
    while time.monotonic() < deadline and ready_at is None:
        reconciled, ready = snapshot(cluster, namespace)
        now = time.monotonic()
        if reconciled_at is None and reconciled == count:
            reconciled_at = now
        if ready == count:
            ready_at = now
        time.sleep(0.05)
    time.sleep(1)  # let the audit log catch up with the last requests
    requests = [e for e in cluster.audit()[audit_start:] if e.get("userAgent", "").startswith(OPERATOR_AGENTS)
                and (e.get("objectRef") or {}).get("namespace") == namespace]
    kinds = Counter(f"{e['verb']} {e['objectRef']['resource']}"
                    + (f"/{e['objectRef']['subresource']}" if e["objectRef"].get("subresource") else "")
                    for e in requests)
    # Free the nodes for the next run (110 pods per node, as on a real one).
    cluster.api("DELETE", f"/api/v1/namespaces/{namespace}")
    while cluster.api("GET", f"/api/v1/namespaces/{namespace}")[0] == 200 and time.monotonic() < deadline + 60:
        time.sleep(0.5)
    return {"create_s": created - started,
            "reconciled_s": None if reconciled_at is None else reconciled_at - started,
            "ready_s": None if ready_at is None else ready_at - started,
            "requests_per_resource": len(requests) / count, "requests": dict(kinds.most_common())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--operator-log", type=Path, help="keep the operator's log here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as folder:
        cluster = LocalCluster(Path(folder), binaries()).start()
        operator = None
        try:
            cluster.kubectl("apply", "-f", str(CRD))
            for _ in range(100):
                if cluster.kubectl("wait", "--for=condition=Established", "crd/inferenceservices.kubeinfer.io",
                                   check=False).returncode == 0:
                    break
                time.sleep(0.1)
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
            env.pop("KUBERNETES_SERVICE_HOST", None)
            log = Path(folder) / "operator.log"
            with log.open("wb") as sink:
                operator = subprocess.Popen(
                    [sys.executable, "-m", "kubeinfer", "operator", "--listen-host", "127.0.0.1", "--metrics-port",
                     "0", "--liveness-port", str(free_port()), "--log-format", "json"],
                    env=env, stdout=sink, stderr=subprocess.STDOUT)
            time.sleep(5)  # kopf's start-up: CRD discovery and the first listings
            print(f"control plane up in {cluster.started_in:.1f}s; {args.count} InferenceServices per run")
            for index in range(args.runs):
                result = run_once(cluster, args.count, index)
                print(f"run {index + 1}: reconciled (children + status) {fmt(result['reconciled_s'])}, all Ready "
                      f"{fmt(result['ready_s'])} (creating them took {result['create_s']:.2f}s), "
                      f"{result['requests_per_resource']:.1f} operator requests per resource")
                print(f"    {result['requests']}")
        finally:
            if operator is not None:
                operator.terminate()
                operator.wait(30)
                if args.operator_log:
                    args.operator_log.write_bytes((Path(folder) / "operator.log").read_bytes())
            cluster.stop()
    return 0


def fmt(seconds: float | None) -> str:
    return "not within 120 s" if seconds is None else f"{seconds:.2f}s"


if __name__ == "__main__":
    sys.exit(main())
