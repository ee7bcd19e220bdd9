"""A real node for the local cluster: containerd, a kubelet and kube-proxy on this machine, CoreDNS and
metrics-server as pods on it. Nothing is emulated: the kubelet runs pods with runc, probes them, mounts their
volumes, streams their logs and exec sessions; kube-proxy programs iptables for every Service.

    node = RealNode(cluster, node_binaries())  # LocalCluster(state, bin, real_node=True) does all of this
    node.prepare()          # before the API server: the machine's before-state, the bridge, the certificates
    node.apiserver_args()   # what the API server needs for a real node (kubelet client, aggregation)
    node.start()            # containerd, images, kubelet, kube-proxy, CoreDNS, metrics-server
    node.load_image("localhost/kubeinfer-runtime:cpu")   # from buildah's storage into containerd
    node.stop()             # and the machine is as it was (nodehost.cleanup)

The node ``real-0`` (label ``kubeinfer.io/real-node=true``, no taint) has the bridge's gateway address
``10.85.0.1`` as its IP (this kernel has no dummy links; the kubelet refuses loopback), where the kubelet serves
(:10250) and where the API server listens, so that pods reach it through the ``kubernetes`` Service (10.96.0.1:443).
Pods get addresses in 10.85.0.0/24 from the CNI bridge plugin; the cluster DNS is CoreDNS behind ``kube-dns``
(10.96.0.10), serving ``cluster.local`` only (nothing is forwarded anywhere). It has no ``nvidia.com/gpu``, so GPU
pods never fit on it; CPU pods need no toleration. Every file the node writes lives in ``STATE/node`` except what
the kubelet, containerd and the CNI plugins put in fixed places (see nodehost.FIXED_DIRS); ``stop`` removes all.

    python scripts/cluster/realnode.py cleanup   # undo a killed node's leftovers (idempotent)
    python scripts/cluster/realnode.py state     # the machine state the tests compare, as JSON
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nodehost
from nodehost import BRIDGE, BRIDGE_CIDR, NODE_IP, Ledger, NodeHostError
from nodeimages import (
    Containerd,
    ImageError,
    ImageLoader,
    buildah_images,
    project_images,
    scratch_image_archive,
    split_name,
)

if TYPE_CHECKING:
    from localcluster import LocalCluster

HERE = Path(__file__).resolve().parent
NODE_NAME = "real-0"
REAL_NODE_LABEL = "kubeinfer.io/real-node"
KUBELET_PORT = 10250
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN = Path("/usr/lib/cni")
CONTAINERD = "/usr/bin/containerd"
# containerd's sockets: a unix socket's path must stay under 104 bytes, which a state folder in pytest's temporary
# folders exceeds; one node per machine, so a fixed place (removed by the cleanup, see nodehost.FIXED_DIRS)
SOCKET_DIR = nodehost.SOCKET_DIR
# What a real node needs on the machine (Debian packages: containerd, runc, containernetworking-plugins, iptables,
# nftables, skopeo; scripts/install-test-tools.sh real_node installs them).
NODE_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "ip6tables", "nft", "ip",
              "mount", "umount", "skopeo")
NODE_READY_TIMEOUT = 90.0
ADDON_READY_TIMEOUT = 120.0


def node_binaries(build: bool = True) -> Path:
    """The folder of the node's binaries (kubelet, kube-proxy, coredns, metrics-server, pause, grpc-health)."""
    done = subprocess.run(["bash", str(HERE / "build.sh"), "node"], stdout=subprocess.PIPE, text=True,
                          stderr=None if build else subprocess.DEVNULL)
    if done.returncode != 0:
        raise NodeHostError("building the node's binaries failed (scripts/cluster/build.sh node); see above")
    return Path(done.stdout.strip().splitlines()[-1])


def kwok_pod_cidr() -> str:
    """The CIDR kwok's fake pods get their IPs from: routed nowhere on a machine with a real node."""
    from localcluster import POD_CIDR

    return POD_CIDR


def missing_tools() -> list[str]:
    missing = [tool for tool in NODE_TOOLS if shutil.which(tool) is None]
    missing += [f"{CNI_BIN}/{p}" for p in ("bridge", "host-local", "loopback") if not (CNI_BIN / p).exists()]
    return missing


def _version_of(bin_dir: Path, component: str) -> str:
    """The version a node binary folder was built at, from its name (``...-coredns-v1.15.0-...``)."""
    found = re.search(rf"{component}-(v[0-9][^-]*)", bin_dir.name)
    return found.group(1) if found else "local"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# -- certificates -----------------------------------------------------------------------------------------------
def node_certificates(pki: Path, issue: Any) -> None:
    """The certificates a real node adds to the cluster's (``issue(name, subject, extension, ca)``)."""
    issue("kubelet-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}", "extendedKeyUsage=clientAuth")
    issue("kubelet-serving", f"/CN={NODE_NAME}",
          f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}")
    issue("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
          "extendedKeyUsage=clientAuth")
    issue("kube-proxy", "/CN=system:kube-proxy", "extendedKeyUsage=clientAuth")
    # Aggregation (metrics.k8s.io): the API server proxies to metrics-server with a front-proxy client certificate.
    issue("front-proxy-client", "/CN=front-proxy-client", "extendedKeyUsage=clientAuth", ca="front-proxy-ca")
    issue("metrics-server", "/CN=metrics-server", "extendedKeyUsage=serverAuth\nsubjectAltName="
          "DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.cluster.local")


def apiserver_args(pki: Path) -> list[str]:
    """The API server's flags for a real node: talk to the kubelet, aggregate metrics-server, publish itself."""
    return [
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        "--enable-aggregator-routing=true",
    ]


# -- configuration files ----------------------------------------------------------------------------------------
def containerd_config(node_dir: Path, sandbox_image: str) -> str:
    """containerd 1.6's config: its own folders and socket, the CRI with runc on cgroupfs and overlayfs."""
    base = node_dir / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{SOCKET_DIR / 'containerd.sock'}"

[ttrpc]
  address = "{SOCKET_DIR / 'containerd.sock.ttrpc'}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the caller's
  restrict_oom_score_adj = true
  # pods may bind ports below 1024 as non-root (a sysctl of the pod's network namespace only)
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{node_dir / 'cni' / 'net.d'}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
"""


def cni_config(node_dir: Path) -> dict[str, Any]:
    """The bridge plugin on the node's bridge, no masquerade (pods talk to the bridge and the host only)."""
    return {"cniVersion": "0.4.0", "name": "kubeinfer", "plugins": [{
        "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": BRIDGE_CIDR, "gateway": NODE_IP}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(node_dir / "cni" / "ipam")}}]}


def kubelet_config(node_dir: Path, pki: Path, healthz_port: int) -> dict[str, Any]:
    """The kubelet's configuration: webhook authn/authz, cgroupfs on cgroup v1, the cluster DNS."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True, "cacheTTL": "10s"},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook",
                          "webhook": {"cacheAuthorizedTTL": "10s", "cacheUnauthorizedTTL": "5s"}},
        "containerRuntimeEndpoint": f"unix://{SOCKET_DIR / 'containerd.sock'}",
        # cgroup v1 here: the kubelet refuses it unless told, and swap may be on
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "clusterDNS": [DNS_SERVICE_IP], "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "",  # pods never learn the machine's resolver
        "podLogsDir": str(node_dir / "pod-logs"),
        # no registry to pull from again: never garbage-collect images; evict only when the disk is really full
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                         "imagefs.available": "1%", "imagefs.inodesFree": "1%"},
        "makeIPTablesUtilChains": False, "oomScoreAdj": 0, "shutdownGracePeriod": "0s",
        "serializeImagePulls": False, "rotateCertificates": False, "serverTLSBootstrap": False,
        "containerLogMaxSize": "10Mi", "containerLogMaxFiles": 2,
        # A mounted ConfigMap changes in the pods at the kubelet's next sync of each pod (default every minute): a
        # rollout's traffic table (kubeinfer.operator.render_rollout) then reaches the replicas within ~10 s here.
        "syncFrequency": "10s",
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    """kube-proxy in iptables mode, touching no sysctl it can leave alone, NodePorts on the bridge only."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME, "bindAddress": NODE_IP, "clusterCIDR": BRIDGE_CIDR, "mode": "iptables",
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "30s",
                     "minSyncPeriod": "0s"},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                      "udpTimeout": "0s", "udpStreamTimeout": "0s"},
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "healthzBindAddress": f"127.0.0.1:{healthz_port}", "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "oomScoreAdj": 0,
    }


# -- the cluster add-ons: CoreDNS and metrics-server ------------------------------------------------------------
COREFILE = f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    errors
    health {{
        lameduck 2s
    }}
    ready
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loadbalance
    reload
}}
.:53 {{
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def _meta(name: str, namespace: str | None = "kube-system", **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels} if labels else {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _restricted(user: int) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": user, "runAsGroup": user, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def coredns_manifests(image: str) -> list[dict[str, Any]]:
    """CoreDNS as a real cluster runs it: a Deployment behind the ``kube-dns`` Service (10.96.0.10)."""
    labels = {"k8s-app": "kube-dns"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("coredns")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("system:coredns", None),
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("system:coredns", None),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("coredns"), "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("coredns", **labels),
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {
                 "serviceAccountName": "coredns", "dnsPolicy": "Default",
                 "priorityClassName": "system-cluster-critical",
                 "nodeSelector": {REAL_NODE_LABEL: "true"},
                 "containers": [{
                     "name": "coredns", "image": image, "imagePullPolicy": "Never",
                     "args": ["-conf", "/etc/coredns/Corefile"],
                     "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                               {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
                     "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                     "securityContext": _restricted(65532),
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                     "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10,
                                       "failureThreshold": 5},
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2}}],
                 "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta("kube-dns", **labels),
         "spec": {"clusterIP": DNS_SERVICE_IP, "selector": labels,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}},
    ]


def metrics_server_manifests(image: str, pki: Path) -> list[dict[str, Any]]:
    """metrics-server as the ``v1beta1.metrics.k8s.io`` APIService; it verifies the kubelet's serving certificate
    with the cluster CA, and the API server verifies metrics-server's with it."""
    labels = {"k8s-app": "metrics-server"}
    sa = [{"kind": "ServiceAccount", "name": "metrics-server", "namespace": "kube-system"}]
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("metrics-server")},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole", "metadata": _meta("system:metrics-server", None),
         "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding", "metadata": _meta("system:metrics-server", None),
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "system:metrics-server"}, "subjects": sa},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("metrics-server:system:auth-delegator", None),
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "system:auth-delegator"}, "subjects": sa},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding", "metadata": _meta("metrics-server-auth-reader"),
         "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "extension-apiserver-authentication-reader"},
         "subjects": sa},
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta("metrics-server-tls"), "type": "kubernetes.io/tls",
         "data": {"tls.crt": _b64(pki / "metrics-server.crt"), "tls.key": _b64(pki / "metrics-server.key")}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("metrics-server", **labels),
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {
                 "serviceAccountName": "metrics-server", "priorityClassName": "system-cluster-critical",
                 "nodeSelector": {REAL_NODE_LABEL: "true"},
                 "containers": [{
                     "name": "metrics-server", "image": image, "imagePullPolicy": "Never",
                     "args": ["--cert-dir=/tmp", "--secure-port=10250",
                              "--tls-cert-file=/etc/metrics-server/tls.crt",
                              "--tls-private-key-file=/etc/metrics-server/tls.key",
                              "--kubelet-preferred-address-types=InternalIP", "--kubelet-use-node-status-port",
                              "--kubelet-certificate-authority=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                              f"--node-selector={REAL_NODE_LABEL}=true", "--metric-resolution=10s",
                              "--kubelet-request-timeout=5s"],
                     "ports": [{"name": "https", "containerPort": 10250, "protocol": "TCP"}],
                     "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                     "securityContext": _restricted(65534),
                     "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                      {"name": "tls", "mountPath": "/etc/metrics-server", "readOnly": True}],
                     "readinessProbe": {"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"},
                                        "periodSeconds": 2},
                     "livenessProbe": {"httpGet": {"path": "/livez", "port": "https", "scheme": "HTTPS"},
                                       "periodSeconds": 10}}],
                 "volumes": [{"name": "tmp", "emptyDir": {}},
                             {"name": "tls", "secret": {"secretName": "metrics-server-tls"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta("metrics-server", **labels),
         "spec": {"selector": labels, "ports": [{"name": "https", "port": 443, "targetPort": "https"}]}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": _meta("v1beta1.metrics.k8s.io", None),
         "spec": {"service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                  "group": "metrics.k8s.io", "version": "v1beta1", "caBundle": _b64(pki / "ca.crt"),
                  "groupPriorityMinimum": 100, "versionPriority": 100}},
    ]


# -- the node ---------------------------------------------------------------------------------------------------
class RealNode:
    """containerd, kubelet and kube-proxy for node ``real-0`` of a LocalCluster, and the add-ons on it."""

    name = NODE_NAME
    label = REAL_NODE_LABEL

    def __init__(self, cluster: LocalCluster, bin_dir: Path) -> None:
        self.cluster = cluster
        self.bin = bin_dir
        self.dir = cluster.state / "node"
        self.socket = SOCKET_DIR / "containerd.sock"
        self.containerd = Containerd(self.socket)
        self.images = ImageLoader(self.containerd, work=self.dir)
        self.pause_image = f"localhost/kubeinfer-pause:{_version_of(bin_dir, 'node')}"
        self.coredns_image = f"localhost/kubeinfer-coredns:{_version_of(bin_dir, 'coredns')}"
        self.metrics_server_image = f"localhost/kubeinfer-metrics-server:{_version_of(bin_dir, 'metrics-server')}"
        self.ledger: Ledger | None = None
        # nodehost.machine_state() before the node changed anything (after a killed node's leftovers were undone)
        self.machine_before: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.loaded: list[dict[str, Any]] = []
        self._lock = contextlib.ExitStack()

    @property
    def address(self) -> str:
        """The node's InternalIP: where the kubelet and the API server listen, the pods' gateway."""
        return NODE_IP

    # Before the API server ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Take the machine's node lock, undo a killed node's leftovers, record the before-state, make the bridge."""
        missing = missing_tools()
        if missing:
            raise NodeHostError(f"a real node needs {', '.join(missing)} "
                                "(bash scripts/install-test-tools.sh real_node)")
        self._lock.enter_context(nodehost.node_lock())
        leftover = Ledger.load()
        if leftover is not None:  # a killed node's
            nodehost.cleanup(leftover, kwok_pod_cidr(), log=self._log)
        self.machine_before = nodehost.machine_state()
        from localcluster import SERVICE_CIDR

        nodehost.check_network_free(kwok_pod_cidr(), SERVICE_CIDR)
        nodehost.remove_tree(self.dir)
        self.ledger = Ledger.begin(self.dir, self.bin)
        nodehost.create_network(kwok_pod_cidr(), SERVICE_CIDR)
        SOCKET_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)

    def certificates(self, issue: Any) -> None:
        node_certificates(self.cluster.pki, issue)

    def apiserver_args(self) -> list[str]:
        return apiserver_args(self.cluster.pki)

    # After the control plane ---------------------------------------------------------------------------------
    def start(self, load_project_images: bool = True) -> None:
        """containerd, the node's images, kubelet (until Ready), kube-proxy, CoreDNS (until Ready), metrics-server."""
        began = time.monotonic()
        self._write_configs()
        self._start_containerd()
        self._import_system_images()
        self._start_kubelet()
        self.cluster.wait_for(self._node_ready, "kubelet", f"node {NODE_NAME} Ready", NODE_READY_TIMEOUT)
        self.timings["node_ready_s"] = round(time.monotonic() - began, 2)
        self._start_kube_proxy()
        self._apply(coredns_manifests(self.coredns_image) +
                    metrics_server_manifests(self.metrics_server_image, self.cluster.pki))
        self.cluster.wait_for(lambda: self._pods_ready("k8s-app=kube-dns"), "kubelet", "CoreDNS Ready",
                              ADDON_READY_TIMEOUT)
        self.timings["dns_ready_s"] = round(time.monotonic() - began, 2)
        if load_project_images:
            self.load_project_images()

    def _write_configs(self) -> None:
        pki = self.cluster.pki
        (self.dir / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "net.d" / "10-kubeinfer.conflist").write_text(json.dumps(cni_config(self.dir)))
        (self.dir / "containerd.toml").write_text(containerd_config(self.dir, self.pause_image))
        free_port = self.cluster.free_port
        (self.dir / "kubelet.json").write_text(json.dumps(kubelet_config(self.dir, pki, free_port())))
        proxy_config = self.dir / "kube-proxy.json"
        proxy_config.write_text(json.dumps(kube_proxy_config(self.dir / "kube-proxy.kubeconfig", free_port(),
                                                             free_port())))
        server = self.cluster.server
        self.cluster.kubeconfig_for(self.dir / "kubelet.kubeconfig", server, "kubelet-client")
        self.cluster.kubeconfig_for(self.dir / "kube-proxy.kubeconfig", server, "kube-proxy")
        assert self.ledger is not None
        self.ledger.kube_proxy_config = str(proxy_config)
        self.ledger.save()

    def _started(self, name: str, args: list[str], executable: str | None = None) -> None:
        self.cluster.start_component(name, args, executable)

    def record(self, name: str, pid: int) -> None:
        """Note a process of the cluster in the ledger: a later cleanup stops it should this run be killed."""
        if self.ledger is not None:
            self.ledger.started(name, pid)

    def _start_containerd(self) -> None:
        self._started("containerd", ["--config", str(self.dir / "containerd.toml")], CONTAINERD)
        self.cluster.wait_for(self._containerd_serves, "containerd", "its socket")

    def _containerd_serves(self) -> bool:
        try:
            return self.containerd.ctr("version", timeout=10) != ""
        except (ImageError, subprocess.TimeoutExpired):
            return False

    def _import_system_images(self) -> None:
        """pause, CoreDNS and metrics-server images FROM scratch, each a static binary."""
        began = time.monotonic()
        for name, binary, entrypoint in ((self.pause_image, "pause", ["/pause"]),
                                         (self.coredns_image, "coredns", ["/coredns"]),
                                         (self.metrics_server_image, "metrics-server", ["/metrics-server"])):
            archive = scratch_image_archive(name, {f"/{binary}": self.bin / binary}, entrypoint, user="65534")
            self.containerd.import_archive(archive, split_name(name)[0])
        self.timings["system_images_s"] = round(time.monotonic() - began, 2)

    def _start_kubelet(self) -> None:
        self._started("kubelet", [
            f"--config={self.dir / 'kubelet.json'}", f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.dir / 'kubelet'}", f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
            f"--node-labels={REAL_NODE_LABEL}=true", "--v=1"], str(self.bin / "kubelet"))

    def _start_kube_proxy(self) -> None:
        self._started("kube-proxy", [f"--config={self.dir / 'kube-proxy.json'}", "--v=1"],
                      str(self.bin / "kube-proxy"))

    def _apply(self, objects: list[dict[str, Any]]) -> None:
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                             stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))

    def _node_ready(self) -> bool:
        status, body = self.cluster.api("GET", f"/api/v1/nodes/{NODE_NAME}")
        return status == 200 and any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in (body.get("status") or {}).get("conditions") or [])

    def _pods_ready(self, selector: str, namespace: str = "kube-system") -> bool:
        status, body = self.cluster.api("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")
        pods = body.get("items", []) if status == 200 else []
        return bool(pods) and all(any(c["type"] == "Ready" and c["status"] == "True"
                                      for c in (p.get("status") or {}).get("conditions") or []) for p in pods)

    def wait_metrics(self, timeout: float = 90.0) -> None:
        """Until metrics-server answers for the node (its first scrapes take ~10-20 s after it starts)."""
        def served() -> bool:
            status, body = self.cluster.api("GET", f"/apis/metrics.k8s.io/v1beta1/nodes/{NODE_NAME}")
            return status == 200 and bool((body or {}).get("usage"))

        self.cluster.wait_for(served, "kubelet", "node metrics from metrics-server", timeout)

    # Images -------------------------------------------------------------------------------------------------
    def load_image(self, name: str) -> dict[str, Any]:
        """One image from buildah's storage into the node's containerd (pods: imagePullPolicy Never/IfNotPresent)."""
        result = self.images.load(name)
        self.loaded.append(result)
        return result

    def load_project_images(self) -> list[dict[str, Any]]:
        """kubeinfer's operator and runtime images, those buildah's storage has."""
        if shutil.which("buildah") is None:
            return []
        return [self.load_image(name) for name in project_images(buildah_images())]

    # Teardown -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the node's processes and undo everything it did to the machine (also what a start left half-done)."""
        try:
            if self.ledger is not None:
                began = time.monotonic()
                for name in ("kubelet", "kube-proxy", "containerd"):
                    self.cluster.stop_component(name, timeout=5)
                if time.monotonic() - began > 5:
                    self._log(f"stopping kubelet, kube-proxy and containerd took {time.monotonic() - began:.1f}s")
                nodehost.cleanup(self.ledger, kwok_pod_cidr(), log=self._log, whole_cluster=False)
                self.ledger = None
        finally:
            self._lock.close()

    @staticmethod
    def _log(message: str) -> None:
        print(f"realnode: {message}", file=sys.stderr, flush=True)

    def info(self) -> dict[str, Any]:
        """What a client of the running cluster needs to know about the node (running.json)."""
        return {"name": NODE_NAME, "address": NODE_IP, "containerd": str(self.socket), "work": str(self.dir),
                "timings": self.timings}


def loader_from_info(info: dict[str, Any]) -> ImageLoader:
    """An ImageLoader for a node another process runs (from running.json's ``real_node``)."""
    return ImageLoader(Containerd(Path(info["containerd"])), work=Path(info["work"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("cleanup", "state"))
    args = parser.parse_args(argv)
    if args.command == "state":
        print(json.dumps(nodehost.machine_state(), indent=1))
        return 0
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(nodehost.node_lock())  # a killed node's lock file goes when this releases it
        except NodeHostError:
            print("realnode: a real node runs (its lock is held): left alone; its own teardown cleans up",
                  file=sys.stderr)
            return 0
        ledger = Ledger.load()
        nodehost.cleanup(ledger, kwok_pod_cidr(), log=RealNode._log)
    print("realnode: clean" if ledger is None else f"realnode: cleaned up after {ledger.node_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
