"""How fast the operator brings a burst of InferenceServices to their children and a status, on a real API server.

    .venv/bin/python benchmarks/bench_operator.py [--count 100] [--runs 3]

Starts the local control plane (scripts/cluster/localcluster.py: kube-apiserver, controller-manager, scheduler,
etcd, kwok nodes) in a temporary folder, installs the CRD, runs `kubeinfer operator` as a process, then creates
COUNT InferenceServices at once (POSTed by 16 threads) and measures, from the first POST:

- reconciled: every resource has its Deployment and both Services and a status (the operator's own work);
- ready: every resource reports phase Ready (includes the Deployment controller, scheduler and fake kubelets).

It prints those times, the operator's API requests per resource (from the API server's audit log) and the CPU
seconds each process (control plane, operator, this script) spent until every resource was reconciled, for each run
in a fresh namespace, with the machine's load average. The goal on a 2-core machine: 100 resources reconciled in at
most 3 s.

With --floor no operator runs: each POSTing thread sends, right after its resource, the writes a reconciliation
cannot do without (its Deployment, both Services, a status) through the operator's own client (kube.py). That
time is what this control plane on this machine allows any operator.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "cluster"))

from localcluster import LocalCluster, binaries, free_port  # noqa: E402

from kubeinfer.operator.kube import Kube  # noqa: E402
from kubeinfer.operator.render import Owner, RuntimeDefaults, render_children  # noqa: E402
from kubeinfer.operator.spec import parse_spec  # noqa: E402

CRD = ROOT / "crds" / "inferenceservices.kubeinfer.io.yaml"
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")


def resource(name: str) -> dict[str, Any]:
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
            "spec": {"task": "detect", "model": {"uri": "/opt/kubeinfer/models/detector.onnx"}, "replicas": 1,
                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}}


class Progress:
    """Follows the namespace through three watches (not polling: a LIST of 100 Deployments every 50 ms would cost
    the API server, which shares the cores with the operator, more than the operator's own requests).

    ``reconciled_at``: when every resource first had its Deployment, both Services and a status phase;
    ``ready_at``: when every resource first showed phase Ready.
    """

    PATHS = {"inferenceservices": "/apis/kubeinfer.io/v1alpha1/namespaces/{ns}/inferenceservices",
             "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
             "services": "/api/v1/namespaces/{ns}/services"}

    def __init__(self, cluster: LocalCluster, namespace: str, count: int) -> None:
        self.count = count
        self.phases: dict[str, str] = {}
        self.deployments: set[str] = set()
        self.services: set[str] = set()
        self.reconciled_at: float | None = None
        self.ready_at: float | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPSConnection] = []
        self._threads: list[threading.Thread] = []
        context = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
        context.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
        host = urllib.parse.urlsplit(cluster.server).netloc
        for kind, template in self.PATHS.items():
            path = template.format(ns=namespace)
            code, listed = cluster.api("GET", path)
            for _ in range(100):  # a new CRD's storage answers 429 for a moment
                if code == 200:
                    break
                time.sleep(0.3)
                code, listed = cluster.api("GET", path)
            version = listed["metadata"]["resourceVersion"]
            connection = http.client.HTTPSConnection(host, context=context, timeout=180)
            connection.request("GET", f"{path}?watch=1&resourceVersion={version}", headers={"Accept":
                                                                                          "application/json"})
            response = connection.getresponse()
            assert response.status == 200, (kind, response.status, response.read())
            self._connections.append(connection)
            thread = threading.Thread(target=self._follow, args=(kind, response), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _follow(self, kind: str, response: http.client.HTTPResponse) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError, http.client.HTTPException):
            for line in response:
                event = json.loads(line)
                if event.get("type") not in ("ADDED", "MODIFIED"):
                    continue
                obj = event["object"]
                name = obj["metadata"]["name"]
                with self._lock:
                    if kind == "inferenceservices":
                        phase = (obj.get("status") or {}).get("phase")
                        if phase:
                            self.phases[name] = phase
                    else:
                        (self.deployments if kind == "deployments" else self.services).add(name)
                    self._check(time.monotonic())

    def _check(self, now: float) -> None:
        if self.reconciled_at is None and len(self.phases) == self.count and all(
                name in self.deployments and {name, f"{name}-pods"} <= self.services for name in self.phases):
            self.reconciled_at = now
            self.done.set()
        if self.ready_at is None and len(self.phases) == self.count and all(
                phase == "Ready" for phase in self.phases.values()):
            self.ready_at = now

    def wait_ready(self, deadline: float) -> None:
        while self.ready_at is None and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        for connection in self._connections:
            with contextlib.suppress(OSError):
                if connection.sock is not None:
                    connection.sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        for connection in self._connections:
            connection.close()


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (from /proc; 0 for one that is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            used[name] = 0.0
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return used


def minimal_reconciler(kube: Kube, namespace: str) -> Callable[[dict[str, Any]], None]:
    """For --floor: the writes a reconciliation of a new resource cannot do without, and nothing else."""

    def reconcile(body: dict[str, Any]) -> None:
        meta = body["metadata"]
        children = render_children(Owner(meta["name"], namespace, meta["uid"]), parse_spec(body["spec"]),
                                   RuntimeDefaults())
        for child in children.present:
            kube.create(child)
        kube.patch_status(namespace, meta["name"], {"phase": "Pending"})

    return reconcile


def run_once(cluster: LocalCluster, count: int, index: int, pids: dict[str, int],
             floor: Kube | None = None) -> dict[str, Any]:
    namespace = f"bench-{index}"
    cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": namespace}})
    audit_start = len(cluster.audit())
    path = f"/apis/kubeinfer.io/v1alpha1/namespaces/{namespace}/inferenceservices"
    progress = Progress(cluster, namespace, count)
    cpu_before = cpu_seconds(pids)
    started = time.monotonic()
    reconcile = minimal_reconciler(floor, namespace) if floor is not None else None

    def create(i: int) -> int:
        code, body = cluster.api("POST", path, resource(f"svc-{i}"))
        if reconcile is not None and code == 201:
            reconcile(body)
        return int(code)

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(create, range(count)))
    created = time.monotonic()
    assert codes == [201] * count, Counter(codes)
    deadline = started + 120
    reconciled = progress.done.wait(max(0.0, deadline - time.monotonic()))
    cpu_after = cpu_seconds(pids)
    cpu = {name: used - cpu_before[name] for name, used in cpu_after.items()}
    if floor is None:  # without an operator nothing ever reports Ready
        progress.wait_ready(deadline)
    progress.close()
    reconciled_at = progress.reconciled_at if reconciled else None
    ready_at = progress.ready_at
    time.sleep(1)  # let the audit log catch up with the last requests
    audit = cluster.audit()[audit_start:]
    requests = [e for e in audit if e.get("userAgent", "").startswith(OPERATOR_AGENTS)
                and (e.get("objectRef") or {}).get("namespace") == namespace]
    # Everyone's requests until every resource was reconciled: what else kept the API server busy.
    until = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
        seconds=time.monotonic() - (reconciled_at or time.monotonic()))
    clients = Counter(e.get("userAgent", "?").split("/")[0].split(" ")[0] for e in audit
                      if e.get("stage") == "ResponseComplete"
                      and datetime.datetime.fromisoformat(e["requestReceivedTimestamp"]) <= until)
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
            "requests_per_resource": len(requests) / count, "requests": dict(kinds.most_common()), "cpu": cpu,
            "clients": dict(clients.most_common()),
            "load": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--operator-log", type=Path, help="keep the operator's log here")
    parser.add_argument("--floor", action="store_true",
                        help="no operator: the minimal writes sent by the benchmark itself (what any operator needs)")
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
            os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
            os.environ.pop("KUBERNETES_SERVICE_HOST", None)
            floor = Kube.from_environment() if args.floor else None
            pids = {**cluster.pids(), "bench": os.getpid()}
            if not args.floor:
                with (Path(folder) / "operator.log").open("wb") as sink:
                    operator = subprocess.Popen(
                        [sys.executable, "-m", "kubeinfer", "operator", "--listen-host", "127.0.0.1",
                         "--metrics-port", "0", "--liveness-port", str(free_port()), "--log-format", "json"],
                        stdout=sink, stderr=subprocess.STDOUT)
                pids["operator"] = operator.pid
            time.sleep(5)  # kopf's start-up: CRD discovery and the first listings
            print(f"control plane up in {cluster.started_in:.1f}s; {args.count} InferenceServices per run"
                  + ("; no operator: the minimal writes only (--floor)" if args.floor else ""))
            for index in range(args.runs):
                result = run_once(cluster, args.count, index, pids, floor)
                ready = "(no operator)" if args.floor else fmt(result["ready_s"])
                print(f"run {index + 1}: reconciled (children + status) {fmt(result['reconciled_s'])}, all Ready "
                      f"{ready} (creating them took {result['create_s']:.2f}s), "
                      f"{result['requests_per_resource']:.1f} operator requests per resource")
                print(f"    {result['requests']}")
                print(f"    load average {result['load']:.2f}; CPU seconds until reconciled: "
                      + ", ".join(f"{name} {used:.1f}" for name, used in sorted(result["cpu"].items(),
                                                                             key=lambda item: -item[1])))
                print(f"    API requests until reconciled, by client: {result['clients']}")
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
