"""KEDA and a Prometheus for the runtime pods, run as host processes beside a cluster with a real node.

Issue #29's queue-depth autoscaling for real: ``autoscaling.engine: keda`` makes the operator render a KEDA
ScaledObject whose prometheus trigger asks a Prometheus for the InferenceService's queue depth. Here every part of
that chain is the real program:

- KEDA v2.21.0's operator and metrics adapter, built from KEDA's Go module by scripts/keda/build.sh (cached), with
  all of KEDA's CRDs; both run on the host against the cluster's API server with the admin kubeconfig. The operator
  serves KEDA's metrics gRPC service on loopback, the adapter is its client; they authenticate each other with one
  certificate (server and client use) of a CA made here: KEDA reads ca.crt, tls.crt and tls.key from ``--cert-dir``.
- The adapter is the APIService ``v1beta1.external.metrics.k8s.io``: a Service without selector whose endpoints are
  the node's address 10.85.0.1 and the adapter's port (the API server routes to endpoints,
  --enable-aggregator-routing), TLS not verified (``insecureSkipTLSVerify``: the adapter's certificate is not the
  cluster CA's). The API server's front-proxy certificate authenticates the requests it forwards.
- A Prometheus (Debian's binary) scrapes the pods of one namespace, found through the API server as its Kubernetes
  discovery (role pod) would (Debian builds it without that discovery: a file_sd file written here), and labels
  them with the chart's own PodMonitor relabelings, so the ScaledObject's query finds the ``namespace`` and
  ``model`` labels the chart's monitoring gives; pod IPs (10.85.0.0/24) are reachable from here.

The HPA that KEDA makes is run by the cluster's own HPA controller (sync 5 s, scale-down stabilization 15 s:
localcluster.py), which reads the metric through the API server, the adapter and the operator.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chart_support import (
    FULL_VALUES,
    Prometheus,
    find,
    prometheus_binary,
    prometheus_relabel_configs,
    render,
    sanitize,
)
from cluster_support import ROOT, Api, LocalCluster
from localcluster import free_port, issue_certificate, make_ca
from real_node_support import need, wait_until

KEDA_BUILD = ROOT / "scripts" / "keda" / "build.sh"
NAMESPACE = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"
ADAPTER_SERVICE = "keda-metrics-apiserver"
SCALED_OBJECT_LABEL = "scaledobject.keda.sh/name"


def keda_binaries() -> Path:
    """scripts/keda/build.sh's folder: keda-operator, keda-adapter, crds/ (built once, ~10 min on 2 cores)."""
    done = subprocess.run(["bash", str(KEDA_BUILD)], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        need(f"scripts/keda/build.sh failed: {done.stderr.strip()[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@dataclass
class Keda:
    """KEDA's two processes on this cluster and how to read what the adapter serves."""

    cluster: LocalCluster
    api: Api
    bin: Path
    adapter_port: int

    def external_metric(self, namespace: str, scaled_object: str) -> list[dict[str, Any]]:
        """The adapter's answer for a ScaledObject's first trigger, through the API server (as the HPA asks)."""
        path = (f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/s0-prometheus"
                f"?labelSelector={SCALED_OBJECT_LABEL}%3D{scaled_object}")
        status, body = self.cluster.api("GET", path)
        assert status == 200, f"{path}: {status} {body}"
        return list(body["items"])

    def log(self, component: str, lines: int = 40) -> str:
        path = self.cluster.logs / f"keda-{component}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _certificates(pki: Path) -> None:
    """ca.crt and one certificate (tls.crt/.key) the operator serves gRPC with and the adapter presents to it."""
    make_ca(pki, "ca", "kubeinfer-keda-ca")
    issue_certificate(pki, "tls", "/CN=keda", "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName="
                      "IP:127.0.0.1,DNS:localhost,DNS:keda-operator.keda.svc,DNS:keda-metrics-apiserver.keda.svc")


def _adapter_endpoints(address: str, port: int) -> list[dict[str, Any]]:
    """The APIService and a selector-less Service whose only endpoint is the adapter on the host (the aggregator's
    endpoint routing reads EndpointSlices: kube-aggregator's proxy.ResolveEndpoint)."""
    meta = {"name": ADAPTER_SERVICE, "namespace": NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{ADAPTER_SERVICE}-host", "namespace": NAMESPACE,
                      "labels": {"kubernetes.io/service-name": ADAPTER_SERVICE,
                                 "endpointslice.kubernetes.io/managed-by": "kubeinfer-tests"}},
         "addressType": "IPv4", "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
         "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": APISERVICE},
         "spec": {"service": {"name": ADAPTER_SERVICE, "namespace": NAMESPACE, "port": 443},
                  "group": "external.metrics.k8s.io", "version": "v1beta1", "insecureSkipTLSVerify": True,
                  "groupPriorityMinimum": 100, "versionPriority": 100}},
    ]


def _available(api: Api) -> bool:
    found = api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}") or {}
    return any(c["type"] == "Available" and c["status"] == "True"
               for c in (found.get("status") or {}).get("conditions") or [])


@contextlib.contextmanager
def running_keda(cluster: LocalCluster, api: Api, folder: Path) -> Iterator[Keda]:
    """KEDA's CRDs, operator and adapter (the APIService Available); the APIService and both processes are gone
    afterwards (a ScaledObject left behind keeps KEDA's finalizer: delete them first)."""
    bin_dir = keda_binaries()
    cluster.kubectl("apply", "--server-side", "-f", str(bin_dir / "crds"))
    for crd in sorted((bin_dir / "crds").glob("*.yaml")):
        name = crd.name.split("_", 1)[1].removesuffix(".yaml") + "." + crd.name.split("_", 1)[0]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    pki = folder / "keda-pki"
    _certificates(pki)
    env = {"KUBECONFIG": str(cluster.kubeconfig), "WATCH_NAMESPACE": "", "POD_NAMESPACE": NAMESPACE,
           "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE}
    grpc_port, probe_port, adapter_port, adapter_metrics = (free_port() for _ in range(4))
    address = cluster.node.address
    keda = Keda(cluster, api, bin_dir, adapter_port)
    try:
        cluster.start_component("keda-operator", [
            "--leader-elect=false", "--metrics-bind-address=0", f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc_port}", f"--cert-dir={pki}",
            "--enable-cert-rotation=false", f"--ca-dir={pki}", "--zap-log-level=info", "--zap-encoder=console"],
            executable=str(bin_dir / "keda-operator"), env=env)
        _wait_running(keda, "operator", lambda: _http_ok(f"http://127.0.0.1:{probe_port}/readyz"),
                      "KEDA's operator ready", 60)
        cluster.start_component("keda-adapter", [
            f"--secure-port={adapter_port}", f"--bind-address={address}", f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'tls.crt'}", f"--tls-private-key-file={pki / 'tls.key'}",
            f"--lister-kubeconfig={cluster.kubeconfig}", f"--authentication-kubeconfig={cluster.kubeconfig}",
            f"--authorization-kubeconfig={cluster.kubeconfig}", f"--metrics-service-address=127.0.0.1:{grpc_port}",
            f"--port={adapter_metrics}", "--zap-log-level=info", "--zap-encoder=console"],
            executable=str(bin_dir / "keda-adapter"), env=env)
        for obj in _adapter_endpoints(address, adapter_port):
            cluster.kubectl("apply", "-f", "-", stdin=_json(obj))
        _wait_running(keda, "adapter", lambda: _available(api), f"APIService {APISERVICE} Available", 90)
        yield keda
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", check=False)
        cluster.stop_component("keda-adapter")
        cluster.stop_component("keda-operator")


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj)


def _wait_running(keda: Keda, component: str, check: Callable[[], bool], what: str, timeout: float) -> None:
    """Until ``check()``; KEDA's ``component`` exiting meanwhile fails at once, with its log."""
    process = next(c.process for c in keda.cluster.components if c.name == f"keda-{component}")

    def done() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"keda-{component} exited ({process.returncode}):\n{keda.log(component)}")
        return check()

    wait_until(done, what, timeout, 0.5)


def pod_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Prometheus's Kubernetes discovery (role pod) makes of ``pods``, as file_sd target groups: one target
    per declared container port of each pod that has an IP, with the ``__meta_kubernetes_*`` labels the chart's
    PodMonitor relabelings read."""
    groups = []
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
        labels = {"__meta_kubernetes_namespace": pod["metadata"]["namespace"],
                  "__meta_kubernetes_pod_name": pod["metadata"]["name"], "__meta_kubernetes_pod_ip": ip,
                  "__meta_kubernetes_pod_ready": str(ready).lower()}
        for key, value in (pod["metadata"].get("labels") or {}).items():
            labels[f"__meta_kubernetes_pod_label_{sanitize(key)}"] = value
            labels[f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}"] = "true"
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": {
                    **labels, "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"])}})
    return groups


@contextlib.contextmanager
def pod_prometheus(cluster: LocalCluster, api: Api, namespace: str, folder: Path,
                   scrape_interval: str = "2s", host: str = "127.0.0.1") -> Iterator[Prometheus]:
    """Prometheus on ``host`` (the node's address: pods reach it) scraping the runtime pods of ``namespace`` with
    the chart's PodMonitor relabelings.

    Debian's prometheus (2.42.0+ds) is built without Kubernetes discovery ("field kubernetes_sd_configs not found
    in type config.ScrapeConfig"), so the pods are discovered here, the way it would: the namespace's pods, read
    from the API server every second, written as a file_sd file that Prometheus re-reads when it changes."""
    prometheus_binary()
    monitor = find(render(values=FULL_VALUES), "PodMonitor")
    folder.mkdir(parents=True, exist_ok=True)
    targets = folder / "pods.json"
    targets.write_text("[]")
    config = [{"job_name": "kubeinfer-runtimes", "metrics_path": "/metrics",
               "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "5s"}],
               "relabel_configs": prometheus_relabel_configs(monitor)}]
    stop = threading.Event()

    def discover() -> None:
        written = ""
        while not stop.wait(1.0):
            with contextlib.suppress(Exception):  # an API server busy a moment: the next round
                found = api.get(f"/api/v1/namespaces/{namespace}/pods") or {}
                text = json.dumps(pod_targets(found.get("items") or []), sort_keys=True)
                if text != written:
                    partial = targets.with_suffix(".partial")
                    partial.write_text(text)
                    partial.rename(targets)  # whole: Prometheus never reads half a file
                    written = text

    server = Prometheus(folder, free_port(), config, scrape_interval=scrape_interval, host=host)
    discovery = threading.Thread(target=discover, daemon=True)
    discovery.start()
    try:
        server.wait_ready()
        yield server
    finally:
        stop.set()
        discovery.join(10)
        server.stop()


__all__ = ["APISERVICE", "Keda", "keda_binaries", "pod_prometheus", "pod_targets", "running_keda"]
