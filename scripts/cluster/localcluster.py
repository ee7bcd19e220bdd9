"""A real Kubernetes control plane on 127.0.0.1, for trying kubeinfer on a laptop and for the test suite.

It runs etcd, kube-apiserver (RBAC and Node authorization, the default admission plugins), kube-controller-manager
(Deployments, ReplicaSets, the garbage collector, HPAs, ...) and kube-scheduler, all built from the Kubernetes Go
module by ``build.sh``, plus kwok playing the kubelets of fake nodes: CPU nodes and GPU nodes advertising
``nvidia.com/gpu`` and tainted with it. Pods on those nodes go Running and Ready, or fail on purpose when their
first container's image is one of ``FAILING_IMAGES`` (CrashLoopBackOff, ImagePullBackOff). The node ``local-0``
(label ``kubeinfer.io/local-node=true``, taint ``kubeinfer.io/local-node``) is kept alive by kwok but its pods
are left to a test's own fake kubelet, which runs the rendered container command as a local process.

    python scripts/cluster/localcluster.py up [--state DIR]   # runs until Ctrl-C or `down`
    python scripts/cluster/localcluster.py down [--state DIR]

Everything it writes lives in the state folder (default ``.cache/cluster``): certificates, etcd's data, logs and
``kubeconfig`` (an admin kubeconfig).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_STATE = ROOT / ".cache" / "cluster"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
GPU_RESOURCE = "nvidia.com/gpu"
LOCAL_NODE = "local-0"
LOCAL_NODE_LABEL = "kubeinfer.io/local-node"
# A pod whose first container runs one of these images fails the way a real kubelet would report it.
FAILING_IMAGES = {
    "kubeinfer.test/crashloop:1": "CrashLoopBackOff",
    "kubeinfer.test/imagepullbackoff:1": "ImagePullBackOff",
}
# ...and one that takes SLOW_START_SECONDS to become ready (a model that loads slowly), so a rollout can be watched.
SLOW_IMAGE = "kubeinfer.test/slow-start:1"
SLOW_START_SECONDS = 4
START_TIMEOUT = 120.0


class ClusterError(RuntimeError):
    """The control plane could not be started; the message names the component and its last log lines."""


@dataclass(frozen=True)
class NodeShape:
    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()


DEFAULT_NODES: tuple[NodeShape, ...] = (
    NodeShape("cpu-0"),
    NodeShape("cpu-1"),
    NodeShape("gpu-0", gpus=4, labels={"nvidia.com/gpu.present": "true"},
              taints=({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"},)),
    NodeShape("gpu-1", gpus=4, labels={"nvidia.com/gpu.present": "true"},
              taints=({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"},)),
    NodeShape(LOCAL_NODE, labels={LOCAL_NODE_LABEL: "true"},
              taints=({"key": LOCAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"},)),
)
# Beside a real node, kwok plays only the GPU nodes: a CPU pod then has one place to go, the real node, and runs
# there for real without any toleration; GPU pods still find (fake) GPUs.
REAL_NODE_KWOK_NODES: tuple[NodeShape, ...] = tuple(shape for shape in DEFAULT_NODES if shape.gpus)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binaries(build: bool = True) -> Path:
    """The folder of built binaries: build.sh builds them once and prints the folder."""
    done = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True,
                          stderr=None if build else subprocess.DEVNULL)
    if done.returncode != 0:
        raise ClusterError("building the control plane failed (scripts/cluster/build.sh); see the output above")
    return Path(done.stdout.strip().splitlines()[-1])


# -- certificates ------------------------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_ca(pki: Path, name: str = "ca", common_name: str = "kubeinfer-local-ca") -> None:
    """A self-signed CA, once (its certificates stay valid as long as it is kept)."""
    if (pki / f"{name}.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", "3650", "-subj", f"/CN={common_name}", cwd=pki)


def issue_certificate(pki: Path, name: str, subject: str, extension: str, ca: str = "ca") -> None:
    """NAME.crt/.key signed by the CA, with the extension lines given; made again when those lines changed."""
    ext = pki / f"{name}.ext"
    if (pki / f"{name}.crt").exists() and ext.exists() and ext.read_text() == extension + "\n":
        return
    make_ca(pki, ca, f"kubeinfer-local-{ca}")
    ext.write_text(extension + "\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
             subject, cwd=pki)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "3650", "-extfile", ext.name, cwd=pki)


def make_certificates(pki: Path, apiserver_ips: Sequence[str] = ()) -> None:
    """A CA, the API server's serving certificate (for 127.0.0.1, the `kubernetes` Service's IP and
    ``apiserver_ips``), an admin client certificate and the service-account keys; only what is missing."""
    make_ca(pki)
    ips = ",".join(f"IP:{ip}" for ip in ("127.0.0.1", "10.96.0.1", *apiserver_ips))
    sans = (f"subjectAltName={ips},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")
    issue_certificate(pki, "apiserver", "/CN=kube-apiserver", sans)
    issue_certificate(pki, "admin", "/O=system:masters/CN=kubernetes-admin", "extendedKeyUsage=clientAuth")
    if not (pki / "sa.pub").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Path, *, user: dict[str, str] | None = None,
                     namespace: str = "default", certificate: str = "admin") -> Path:
    """A kubeconfig with the CA embedded; a client certificate of the pki (the admin's) unless ``user`` is given
    (a token)."""
    credentials = user or {"client-certificate-data": _b64(pki / f"{certificate}.crt"),
                           "client-key-data": _b64(pki / f"{certificate}.key")}
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kubeinfer-local",
        "clusters": [{"name": "kubeinfer-local",
                      "cluster": {"server": server, "certificate-authority-data": _b64(pki / "ca.crt")}}],
        "users": [{"name": "kubeinfer-local", "user": credentials}],
        "contexts": [{"name": "kubeinfer-local",
                      "context": {"cluster": "kubeinfer-local", "user": "kubeinfer-local", "namespace": namespace}}],
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


# -- kwok's stages: what the fake kubelets do ------------------------------------------------------------------
def _pod_selector(*extra: dict[str, Any], images: Sequence[str] | None = None, failing: bool = False,
                  ) -> dict[str, Any]:
    expressions: list[dict[str, Any]] = [
        {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
        {"key": ".spec.nodeName", "operator": "NotIn", "values": [LOCAL_NODE]},
        {"key": ".spec.containers.[0].image", "operator": "In" if failing else "NotIn",
         "values": list(images if images is not None else FAILING_IMAGES)},
        *extra,
    ]
    return {"matchExpressions": expressions}


_CONTAINER_RUNNING = """
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  imageID: ""
  name: {{ .name | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  imageID: ""
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
"""

_CONTAINER_WAITING = """
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "False", reason: ContainersNotReady, lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "False", reason: ContainersNotReady, lastTransitionTime: {{ $now | Quote }}}
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  imageID: ""
  name: {{ .name | Quote }}
  ready: false
  started: false
  restartCount: RESTARTS
  LAST_STATE
  state:
    waiting:
      reason: REASON
      message: MESSAGE
{{ end }}
"""

_ADDRESSES = """
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) \
( or .metadata.namespace "" ) | Quote }}
phase: PHASE
startTime: {{ $now | Quote }}
"""


def _pod_template(body: str, phase: str = "Running", **replacements: str) -> str:
    text = "{{ $now := Now }}\n" + body + _ADDRESSES.replace("PHASE", phase)
    for key, value in replacements.items():
        text = text.replace(key, value)
    return text


# A fake kubelet's node conditions (Ready and the pressure conditions), stamped now: on start-up and each heartbeat.
_NODE_CONDITIONS = """{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
"""


def stages() -> list[dict[str, Any]]:
    """Node heartbeats; pods scheduled on fake nodes go Running and Ready, or fail as their image says."""
    node_initialize = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "node-initialize"},
        "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Node"},
                 "selector": {"matchExpressions": [{"key": '.status.conditions.[] | select( .type == "Ready" ) '
                                                           "| .status", "operator": "NotIn", "values": ["True"]}]},
                 "next": {"statusTemplate": _NODE_CONDITIONS + """addresses:
- {address: {{ NodeIP | Quote }}, type: InternalIP}
- {address: {{ NodeName | Quote }}, type: Hostname}
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  kubeletVersion: fake
  operatingSystem: linux
  containerRuntimeVersion: fake
phase: Running
"""}}}
    heartbeat = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "node-heartbeat-with-lease"},
        "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Node"},
                 "selector": {"matchExpressions": [{"key": '.status.conditions.[] | select( .type == "Ready" ) '
                                                           "| .status", "operator": "In", "values": ["True"]}]},
                 "delay": {"durationMilliseconds": 600000, "jitterDurationMilliseconds": 610000},
                 "next": {"statusTemplate": _NODE_CONDITIONS}, "immediateNextStage": True}}
    pod_ready = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "pod-ready"},
        "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                 "selector": _pod_selector(
                     {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                     {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status', "operator": "NotIn",
                      "values": ["True"]}, images=[*FAILING_IMAGES, SLOW_IMAGE]),
                 "delay": {"durationMilliseconds": 200, "jitterDurationMilliseconds": 400},
                 "next": {"statusTemplate": _pod_template(_CONTAINER_RUNNING)}}}
    slow_ready = json.loads(json.dumps(pod_ready))
    slow_ready["metadata"]["name"] = "pod-ready-slowly"
    slow_ready["spec"]["selector"] = _pod_selector(*pod_ready["spec"]["selector"]["matchExpressions"][3:],
                                                   images=[SLOW_IMAGE], failing=True)
    slow_ready["spec"]["delay"] = {"durationMilliseconds": SLOW_START_SECONDS * 1000}
    pod_delete = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "pod-delete"},
        "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                 "selector": {"matchExpressions": [
                     {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                     {"key": ".spec.nodeName", "operator": "NotIn", "values": [LOCAL_NODE]}]},
                 "next": {"finalizers": {"empty": True}, "delete": True}}}
    failing = []
    for image, reason in FAILING_IMAGES.items():
        crash = reason == "CrashLoopBackOff"
        last_state = ("lastState: {terminated: {exitCode: 1, reason: Error, message: "
                      "'kubeinfer serve: cannot load model: simulated crash',"
                      " startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}") if crash else "lastState: {}"
        message = ("back-off 40s restarting failed container" if crash
                   else f'Back-off pulling image \\"{image}\\"')
        slug = reason.lower()
        failing.append({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": f"pod-{slug}"},
            "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                     "selector": _pod_selector(
                         {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                         {"key": ".status.containerStatuses.[0].state.waiting.reason", "operator": "NotIn",
                          "values": [reason]},
                         images=[image], failing=True),
                     "delay": {"durationMilliseconds": 200},
                     "next": {"statusTemplate": _pod_template(
                         _CONTAINER_WAITING, phase="Pending", RESTARTS="3" if crash else "0",
                         LAST_STATE=last_state, REASON=reason, MESSAGE=f'"{message}"')}}})
    return [node_initialize, heartbeat, pod_ready, slow_ready, pod_delete, *failing]


def models_claim(namespace: str, folder: Path) -> list[dict[str, Any]]:
    """A PersistentVolume on a local folder, bound to a claim `models` in the namespace (the examples' pvc://)."""
    volume = f"models-{namespace}"
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadOnlyMany", "ReadWriteOnce"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "hostPath": {"path": str(folder)},
                  "claimRef": {"namespace": namespace, "name": "models"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": namespace},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": volume,
                  "resources": {"requests": {"storage": "10Gi"}}}},
    ]


def node_manifest(shape: NodeShape) -> dict[str, Any]:
    capacity = {"cpu": shape.cpu, "memory": shape.memory, "pods": "110"}
    if shape.gpus:
        capacity[GPU_RESOURCE] = str(shape.gpus)
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": shape.name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": shape.name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", **shape.labels}},
        "spec": {"taints": [dict(t) for t in shape.taints]},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


# -- processes --------------------------------------------------------------------------------------------------
@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalCluster:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on 127.0.0.1, in one state folder.

    With ``real_node=True`` (and ``node_bin``, the folder ``build.sh node`` makes) also a real node, ``real-0``
    (scripts/cluster/realnode.py): the API server then listens on the node's bridge address, where pods reach it,
    and kwok plays only the GPU nodes unless ``nodes`` says otherwise. ``self.node`` is the RealNode."""

    free_port = staticmethod(free_port)

    def __init__(self, state: Path, bin_dir: Path, nodes: Sequence[NodeShape] | None = None, *,
                 real_node: bool = False, node_bin: Path | None = None, load_project_images: bool = True) -> None:
        self.state = state
        self.bin = bin_dir
        self.nodes = tuple(nodes if nodes is not None else REAL_NODE_KWOK_NODES if real_node else DEFAULT_NODES)
        self.pki = state / "pki"
        self.logs = state / "logs"
        self.kubeconfig = state / "kubeconfig"
        self.audit_log = self.logs / "audit.log"
        self.components: list[Component] = []
        self.server = ""
        self.node: Any = None
        self.load_project_images = load_project_images
        if real_node:
            from realnode import RealNode, node_binaries

            self.node = RealNode(self, node_bin or node_binaries())

    # The API for tests and tools -------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
            token: str | None = None) -> tuple[int, Any]:
        """One HTTPS call to the API server as the admin (or with a bearer token)."""
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        headers = {"Accept": "application/json"}
        if token is None:
            context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        else:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                raw = response.read()
                try:
                    return response.status, json.loads(raw) if raw else None
                except ValueError:  # /readyz and friends answer in plain text
                    return response.status, raw.decode(errors="replace")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def kubectl(self, *args: str, stdin: str | None = None, kubeconfig: Path | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig),
               "KUBECACHEDIR": str(self.state / "kubectl-cache")}
        done = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)
        if check and done.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    # Lifecycle --------------------------------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        started = time.monotonic()
        for sub in ("logs", "etcd"):
            shutil.rmtree(self.state / sub, ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            make_certificates(self.pki, apiserver_ips=[self.node.address] if self.node else [])
            if self.node:
                self.node.certificates(lambda *args, **kwargs: issue_certificate(self.pki, *args, **kwargs))
                self.node.prepare()
            self._start_etcd()
            self._start_apiserver()
            write_kubeconfig(self.kubeconfig, self.server, self.pki)
            self._start("kube-controller-manager", self._controller_manager_args())
            self._start("kube-scheduler", [
                f"--kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}", "--leader-elect=false",
                "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "-v=1"])
            self._start_kwok()
            self._add_nodes()
            self._wait_ready()
            self.add_models_claim("default")
            if self.node:
                self.node.start(load_project_images=self.load_project_images)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        return self

    def _start(self, name: str, args: list[str]) -> Component:
        return self.start_component(name, args)

    def start_component(self, name: str, args: list[str], executable: str | None = None,
                        env: dict[str, str] | None = None) -> Component:
        """Run one of the cluster's processes (the binary NAME of the bin folder unless given; ``env`` added to
        this process's environment), logging to logs/NAME.log; it is watched by ``alive`` and ``wait_for`` and
        stopped by ``stop``."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([executable or str(self.bin / name), *args], stdout=sink,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, **env} if env else None)
        component = Component(name, process, log)
        self.components.append(component)
        if self.node:
            self.node.record(name, process.pid)
        return component

    def stop_component(self, name: str, timeout: float = 15) -> None:
        for component in [c for c in self.components if c.name == name]:
            _terminate(component, timeout)
            self.components.remove(component)

    def kubeconfig_for(self, path: Path, server: str, certificate: str) -> Path:
        """A kubeconfig authenticating with one of the pki's client certificates (a node's kubelet, kube-proxy)."""
        return write_kubeconfig(path, server, self.pki, certificate=certificate)

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._start("etcd", [
            f"--data-dir={self.state / 'etcd'}", f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}", "--unsafe-no-fsync=true",
            "--quota-backend-bytes=4294967296", "--log-level=warn"])
        self._wait(lambda: _http_ok(self.etcd_url + "/health"), "etcd", "/health")

    def _start_apiserver(self) -> None:
        port = free_port()
        # With a real node, on its bridge address: pods reach it there through the `kubernetes` Service.
        address = self.node.address if self.node else "127.0.0.1"
        self.server = f"https://{address}:{port}"
        pki = self.pki
        self._start("kube-apiserver", [
            f"--etcd-servers={self.etcd_url}", f"--bind-address={address}", f"--advertise-address={address}",
            f"--secure-port={port}", f"--cert-dir={self.state / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true", "--profiling=false",
            # Without a real node the apiserver cannot publish its loopback address as the `kubernetes` Service's
            # endpoint, and nothing reaches it through that Service anyway; with one, pods do.
            *(self.node.apiserver_args() if self.node else ["--endpoint-reconciler-type=none"]),
            "--event-ttl=30m", f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=100", "--audit-log-maxbackup=1", "--audit-log-format=json", "-v=1"])
        self._wait(lambda: self.api("GET", "/readyz")[0] == 200, "kube-apiserver", "/readyz")

    def _audit_policy(self) -> Path:
        """Every request at Metadata level (who did what to which resource, and the answer), for RBAC checks."""
        policy = self.state / "audit-policy.yaml"
        policy.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                      "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}]}))
        return policy

    def audit(self) -> list[dict[str, Any]]:
        """The audit events written so far (one JSON object per request)."""
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def _controller_manager_args(self) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--service-account-private-key-file={self.pki / 'sa.key'}", f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={self.pki / 'ca.crt'}", f"--cluster-signing-key-file={self.pki / 'ca.key'}",
            "--use-service-account-credentials=true", "--controllers=*",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allocate-node-cidrs=false",
            "--pvclaimbinder-sync-period=1s", "--horizontal-pod-autoscaler-sync-period=5s",
            "--horizontal-pod-autoscaler-downscale-stabilization=15s",
            "-v=1"]

    def _start_kwok(self) -> None:
        config = self.state / "kwok.yaml"
        documents = [{"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration",
                      "options": {"enableCRDs": [], "podPlayStageParallelism": 8, "nodePlayStageParallelism": 4,
                                  "nodeLeaseParallelism": 4}}, *stages()]
        config.write_text("\n---\n".join(json.dumps(doc) for doc in documents) + "\n")
        self._start("kwok", [
            f"--kubeconfig={self.kubeconfig}", f"--config={config}",
            "--manage-nodes-with-label-selector=type=kwok", f"--cidr={POD_CIDR}", "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{free_port()}", "--node-lease-duration-seconds=40"])

    def _add_nodes(self) -> None:
        for shape in self.nodes:
            status, body = self.api("POST", "/api/v1/nodes", node_manifest(shape))
            if status not in (201, 409):
                raise ClusterError(f"creating node {shape.name}: HTTP {status}: {body}")

    def add_models_claim(self, namespace: str) -> None:
        """The claim `models` the examples mount (pvc://models/...), backed by .cache/models."""
        paths = {"PersistentVolume": "/api/v1/persistentvolumes",
                 "PersistentVolumeClaim": f"/api/v1/namespaces/{namespace}/persistentvolumeclaims"}
        for obj in models_claim(namespace, ROOT / ".cache" / "models"):
            status, body = self.api("POST", paths[obj["kind"]], obj)
            if status not in (201, 409):
                raise ClusterError(f"creating {obj['kind']} for {namespace}: HTTP {status}: {body}")
        # The scheduler holds pods back until their claim is bound (the PV controller does that).
        claim = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/models"
        self._wait(lambda: (self.api("GET", claim)[1] or {}).get("status", {}).get("phase") == "Bound",
                   "kube-controller-manager", f"claim {namespace}/models bound", timeout=60)

    def _wait_ready(self) -> None:
        def nodes_ready() -> bool:
            status, body = self.api("GET", "/api/v1/nodes")
            if status != 200:
                return False
            ready = {node["metadata"]["name"] for node in body["items"]
                     if any(c["type"] == "Ready" and c["status"] == "True"
                            for c in (node.get("status") or {}).get("conditions") or [])}
            return ready >= {shape.name for shape in self.nodes}

        self._wait(nodes_ready, "kwok", "every node Ready")
        # Pods need the namespace's default ServiceAccount, made by the controller-manager.
        self._wait(lambda: self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
                   "kube-controller-manager", "the default ServiceAccount")

    def wait_for(self, check: Any, component: str, what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``check`` until true; a cluster process that exits meanwhile, or the timeout, raises ClusterError
        with the last lines of ``component``'s log."""
        self._wait(check, component, what, timeout)

    def _wait(self, check: Any, component: str, what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for running in self.components:
                if running.process.poll() is not None:
                    raise ClusterError(f"{running.name} exited with {running.process.returncode}:\n{running.tail()}")
            with contextlib.suppress(OSError, ValueError, ssl.SSLError):
                if check():
                    return
            time.sleep(0.2)
        owner = next((c for c in self.components if c.name == component), None)
        raise ClusterError(f"{component}: {what} not reached in {timeout:.0f}s\n{owner.tail() if owner else ''}")

    def alive(self) -> bool:
        return bool(self.components) and all(c.process.poll() is None for c in self.components)

    def stop(self) -> None:
        """Stop every process; a real node first, which also undoes what it did to the machine."""
        try:
            if self.node:
                self.node.stop()
        finally:
            for component in reversed(self.components):
                if component.process.poll() is None:
                    component.process.terminate()
            for component in reversed(self.components):
                _terminate(component, 15)
            self.components.clear()

    def pids(self) -> dict[str, int]:
        return {c.name: c.process.pid for c in self.components}


def _terminate(component: Component, timeout: float) -> None:
    if component.process.poll() is None:
        component.process.terminate()
    try:
        component.process.wait(timeout)
    except subprocess.TimeoutExpired:
        component.process.kill()
        component.process.wait(5)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


# -- the command line: make cluster / make cluster-down ---------------------------------------------------------
def _running(state: Path) -> dict[str, Any] | None:
    """The state file of a cluster whose supervisor is still alive, else None."""
    try:
        info = json.loads((state / "running.json").read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return info


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def up(state: Path, real_node: bool = False) -> int:
    info = _running(state)
    if info is not None:
        print(f"localcluster: a cluster already runs (pid {info['pid']}, {info['server']}); "
              f"`make cluster-down` stops it.\nexport KUBECONFIG={state / 'kubeconfig'}", file=sys.stderr)
        return 1
    bin_dir = binaries()
    with _signals_stop():
        try:
            cluster = LocalCluster(state, bin_dir, real_node=real_node)
            cluster.start()
        except (ClusterError, RuntimeError) as exc:  # the real node's NodeHostError and ImageError too
            print(f"localcluster: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        (state / "running.json").write_text(json.dumps({
            "pid": os.getpid(), "server": cluster.server, "components": cluster.pids(),
            "real_node": cluster.node.info() if cluster.node else None}))
        nodes = [n.name for n in cluster.nodes] + ([f"{cluster.node.name} (real)"] if cluster.node else [])
        print(f"localcluster: kube-apiserver {cluster.server} ready in {cluster.started_in:.1f}s; nodes: "
              + ", ".join(nodes), flush=True)
        if cluster.node:
            print(f"localcluster: real node {cluster.node.name} at {cluster.node.address}: "
                  + ", ".join(f"{k} {v}" for k, v in cluster.node.timings.items())
                  + "".join(f"\nlocalcluster: loaded {i['image']} ({i['bytes_sent'] >> 20} MiB new, "
                            f"{i['seconds']:.1f}s)" for i in cluster.node.loaded), flush=True)
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        try:
            while cluster.alive():
                time.sleep(1)
            dead = [c for c in cluster.components if c.process.poll() is not None]
            print(f"localcluster: {dead[0].name} exited:\n{dead[0].tail()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("localcluster: stopping", file=sys.stderr)
            return 0
        finally:
            cluster.stop()
            (state / "running.json").unlink(missing_ok=True)


def down(state: Path) -> int:
    info = _running(state)
    if info is None:
        print("localcluster: no cluster is running", file=sys.stderr)
        return 0
    os.kill(int(info["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + 90  # a real node's teardown included
    while time.monotonic() < deadline and _running(state) is not None:
        time.sleep(0.2)
    print("localcluster: stopped", file=sys.stderr)
    return 0


def load_images(state: Path, names: Sequence[str]) -> int:
    """Images from buildah's storage into the running cluster's real node (all of kubeinfer's when none named)."""
    from nodeimages import buildah_images, project_images
    from realnode import loader_from_info

    info = _running(state)
    if info is None or not info.get("real_node"):
        print("localcluster: no cluster with a real node is running (make cluster REAL_NODE=1)", file=sys.stderr)
        return 1
    loader = loader_from_info(info["real_node"])
    chosen = list(names) or project_images(buildah_images())
    if not chosen:
        print("localcluster: buildah's storage has no localhost/kubeinfer-operator:dev or "
              "localhost/kubeinfer-runtime:* image (make images)", file=sys.stderr)
        return 1
    for name in chosen:
        result = loader.load(name)
        print(f"localcluster: loaded {name}: {result['layers_sent']} of {result['layers']} layers new, "
              f"{result['bytes_sent'] >> 20} MiB, {result['seconds']}s ({result['how']})", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "build", "load-images"))
    parser.add_argument("images", nargs="*", help="load-images: the images (default: kubeinfer's in buildah)")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state folder (default .cache/cluster)")
    parser.add_argument("--real-node", action="store_true", help="up: also a real node (kubelet, containerd)")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(binaries())
        return 0
    args.state.mkdir(parents=True, exist_ok=True)
    if args.command == "load-images":
        return load_images(args.state, args.images)
    return up(args.state, args.real_node) if args.command == "up" else down(args.state)


if __name__ == "__main__":
    sys.exit(main())
