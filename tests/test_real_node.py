"""A real node in the local cluster: a real kubelet, containerd, runc, CNI bridge, kube-proxy, CoreDNS and
metrics-server run the pods of these tests (scripts/cluster/realnode.py). Nothing is emulated: probes are the
kubelet's, Services are kube-proxy's iptables rules, names are CoreDNS's answers, numbers are metrics-server's.

The last test stops the node and proves the machine is as it was before (links, routes, iptables, mounts,
cgroups, kernel settings, folders), since CI and later sessions reuse the machine.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import Api, Kubectl, new_namespace
from real_node_support import (
    DNS_SERVICE_IP,
    NODE_NAME,
    REAL_NODE_LABEL,
    build_test_image,
    condition,
    events,
    image_with_top_layer,
    nodehost,
    pod_exec,
    pods,
    ready_pods,
    remove_image,
    require_real_node,
    wait_until,
)

QUICK_PROBE = {"periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1, "timeoutSeconds": 1}
NON_ROOT = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}


def _container(name: str, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "imagePullPolicy": "Never", "command": command,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}, **extra}


def _pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": containers, "securityContext": NON_ROOT, "terminationGracePeriodSeconds": 1,
                     **spec}}


def _deployment(name: str, replicas: int, pod: dict[str, Any]) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": name}}, "spec": pod["spec"]}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template}}


def _service(name: str, selector: str, port: int, target: int, headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": selector}, "ports": [{"port": port, "targetPort": target}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def web(image: str) -> dict[str, Any]:
    """httpd serving what its init container wrote into an emptyDir as uid 1000; readiness by httpGet and gRPC."""
    fill = _container("fill", image, ["sh", "-c", 'echo "hello from $(hostname) as $(id -u)" > /www/index.html '
                                                  "&& echo ok > /www/ready"],
                      volumeMounts=[{"name": "www", "mountPath": "/www"}])
    httpd = _container("httpd", image, ["httpd", "-f", "-vv", "-p", "8080", "-h", "/www"],
                       ports=[{"containerPort": 8080}], volumeMounts=[{"name": "www", "mountPath": "/www"}],
                       readinessProbe={"httpGet": {"path": "/ready", "port": 8080}, **QUICK_PROBE})
    httpd["securityContext"]["readOnlyRootFilesystem"] = True
    grpc = _container("grpc", image, ["grpc-health", "-listen", ":9090"], ports=[{"containerPort": 9090}],
                      readinessProbe={"grpc": {"port": 9090}, **QUICK_PROBE})
    pod = _pod("web", [httpd, grpc], initContainers=[fill], volumes=[{"name": "www", "emptyDir": {}}])
    return _deployment("web", 2, pod)


def workloads(image: str, volume_path: Path, namespace: str) -> list[dict[str, Any]]:
    """Everything the tests look at, applied at once so the pods start together."""
    sleeper = ["sh", "-c", "echo client-started-$(hostname); exec sleep 100000"]
    burner = _pod("burner", [_container("burn", image, ["sh", "-c", "while :; do :; done"])])
    burner["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "20m"}, "limits": {"cpu": "100m"}}
    wrong_grpc = _container("grpc", image, ["grpc-health", "-listen", ":9090"],
                            readinessProbe={"grpc": {"port": 9090, "service": "nope"}, **QUICK_PROBE})
    lively = _container("main", image, ["sleep", "100000"],
                        livenessProbe={"exec": {"command": ["sh", "-c", "test ! -f /tmp/dead"]}, **QUICK_PROBE})
    writer = _container("main", image, ["sh", "-c", "echo written-by-$(hostname) > /data/proof.txt; "
                                                    "exec sleep 100000"],
                        volumeMounts=[{"name": "data", "mountPath": "/data"}])
    ghost = _deployment("ghost", 1, _pod("ghost", [{
        "name": "main", "image": "kubeinfer.test/ghost:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]))
    volume = f"real-local-{namespace}"
    return [
        web(image), _service("web", "web", 80, 8080), _service("web-headless", "web", 8080, 8080, headless=True),
        _pod("client", [_container("main", image, sleeper)]),
        _pod("wrong-grpc", [wrong_grpc]), _pod("lively", [lively]),
        _deployment("burner", 1, burner),
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "burner"},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burner"},
                  "minReplicas": 1, "maxReplicas": 2,
                  "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                      "type": "Utilization", "averageUtilization": 50}}}],
                  "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0}}}},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "real-local",
                  "persistentVolumeReclaimPolicy": "Retain", "local": {"path": str(volume_path)},
                  "claimRef": {"namespace": namespace, "name": "data"},
                  "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                      {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
         "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "real-local", "volumeName": volume,
                  "resources": {"requests": {"storage": "1Gi"}}}},
        _pod("writer", [writer], volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]),
        ghost, _service("ghost", "ghost", 80, 8080),
        _pod("gpu-on-real", [{"name": "main", "image": image, "imagePullPolicy": "Never",
                              "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
             nodeSelector={"kubernetes.io/hostname": NODE_NAME},
             tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]),
    ]


class Scene:
    """The module's cluster, namespace and clients."""

    def __init__(self, cluster: Any, namespace: str, image: str) -> None:
        self.cluster = cluster
        self.node = cluster.node
        self.namespace = namespace
        self.image = image
        self.api = Api(cluster)
        self.kubectl = Kubectl(cluster.kubeconfig, cluster.state / "kubectl-cache")

    def pod(self, name: str) -> dict[str, Any]:
        return self.kubectl.json("get", "pod", "-n", self.namespace, name)

    def exec(self, pod: str, *command: str, container: str | None = None, check: bool = True) -> str:
        return pod_exec(self.kubectl, self.namespace, pod, *command, container=container, check=check).stdout

    def service_ip(self, name: str) -> str:
        return self.kubectl.json("get", "service", "-n", self.namespace, name)["spec"]["clusterIP"]

    def web_pods(self) -> list[dict[str, Any]]:
        return ready_pods(self.kubectl, self.namespace, "app=web", 2)


@pytest.fixture(scope="module")
def scene(real_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    began = time.monotonic()
    image = build_test_image(real_cluster.node.bin)
    loaded = real_cluster.node.load_image(image)
    namespace = new_namespace(Api(real_cluster), "real")
    volume_path = tmp_path_factory.mktemp("local-volume")
    volume_path.chmod(0o777)
    scene = Scene(real_cluster, namespace, image)
    scene.kubectl.apply({"apiVersion": "v1", "kind": "List", "items": workloads(image, volume_path, namespace)},
                        "-n", namespace)
    scene.web_pods()
    ready_pods(scene.kubectl, namespace, "app=client", 1)
    print(f"\nreal node: cluster {real_cluster.started_in:.1f}s ({real_cluster.node.timings}), test image "
          f"{loaded}, workloads ready {time.monotonic() - began:.1f}s")
    yield scene
    if real_cluster.alive():  # the session's cluster may serve later tests: free what this module started
        scene.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        scene.kubectl("delete", "pv", f"real-local-{namespace}", "--wait=false", check=False)


def _http(url: str, timeout: float = 5) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as answer:
        return answer.read().decode()


def test_the_node_is_a_real_kubelet_and_the_only_place_for_cpu_pods(scene: Scene) -> None:
    nodes = {n["metadata"]["name"]: n for n in scene.kubectl.json("get", "nodes")["items"]}
    node = nodes[NODE_NAME]
    info = node["status"]["nodeInfo"]
    built = scene.node.bin.name.split("-node-")[0]  # the folder build.sh named after the Kubernetes version
    assert info["kubeletVersion"] == built and info["containerRuntimeVersion"].startswith("containerd://")
    assert condition(node, "Ready") == "True"
    assert {"type": "InternalIP", "address": scene.node.address} in node["status"]["addresses"]
    assert node["metadata"]["labels"][REAL_NODE_LABEL] == "true"
    assert not node["spec"].get("taints") and "nvidia.com/gpu" not in node["status"]["capacity"]
    # kwok plays only GPU nodes here, tainted: a CPU pod without tolerations can only go to real-0
    fake = {name for name, n in nodes.items() if n["metadata"].get("labels", {}).get("type") == "kwok"}
    assert fake == {"gpu-0", "gpu-1"}
    assert all(any(t["key"] == "nvidia.com/gpu" for t in nodes[name]["spec"]["taints"]) for name in fake)
    # the API server listens where pods reach it and publishes that as the `kubernetes` Service's endpoint
    endpoints = scene.kubectl.json("get", "endpointslices", "-n", "default", "-l",
                                   "kubernetes.io/service-name=kubernetes")["items"][0]
    assert endpoints["endpoints"][0]["addresses"] == [scene.node.address]


def test_pods_run_in_containerd_with_init_containers_writing_an_empty_dir_as_non_root(scene: Scene) -> None:
    for pod in scene.web_pods():
        status = pod["status"]
        assert pod["spec"]["nodeName"] == NODE_NAME and status["podIP"].startswith("10.85.0.")
        assert all(c["containerID"].startswith("containerd://") for c in status["containerStatuses"])
        assert status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        name = pod["metadata"]["name"]
        assert scene.exec(name, "cat", "/www/index.html", container="httpd").strip() == f"hello from {name} as 1000"
        assert scene.exec(name, "id", "-u", container="httpd").strip() == "1000"
        # readOnlyRootFilesystem is enforced by runc, not just recorded
        denied = pod_exec(scene.kubectl, scene.namespace, name, "touch", "/etc/x", container="httpd", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr + denied.stdout


def test_gpu_pods_never_land_on_the_real_node(scene: Scene) -> None:
    ghost = wait_until(lambda: [p for p in pods(scene.kubectl, scene.namespace, "app=ghost")
                                if p["spec"].get("nodeName")], "the GPU pod scheduled")[0]
    assert ghost["spec"]["nodeName"] in ("gpu-0", "gpu-1")
    refused = wait_until(lambda: [c for c in scene.pod("gpu-on-real")["status"].get("conditions", [])
                                  if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"],
                         "the GPU pod pinned to real-0 Unschedulable")[0]
    assert "Insufficient nvidia.com/gpu" in refused["message"]


def test_readiness_probes_are_run_by_the_kubelet(scene: Scene) -> None:
    name = scene.web_pods()[0]["metadata"]["name"]
    # the kubelet probes from the node's address; httpd -vv logs each request
    logs = scene.kubectl("logs", "-n", scene.namespace, name, "-c", "httpd").stdout
    assert re.search(rf"{re.escape(scene.node.address)}\]?:\d+: url:/ready", logs), logs[-500:]
    scene.exec(name, "rm", "/www/ready", container="httpd")
    wait_until(lambda: condition(scene.pod(name), "Ready") == "False", "httpGet readiness failing", 20)
    slice_ = scene.kubectl.json("get", "endpointslices", "-n", scene.namespace, "-l",
                                "kubernetes.io/service-name=web")["items"][0]
    unready = [e for e in slice_["endpoints"] if e.get("targetRef", {}).get("name") == name]
    assert unready and unready[0]["conditions"]["ready"] is False
    scene.exec(name, "sh", "-c", "echo ok > /www/ready", container="httpd")
    wait_until(lambda: condition(scene.pod(name), "Ready") == "True", "httpGet readiness passing again", 20)
    # gRPC health: SERVING for "" (the web pods' grpc containers are ready), NotFound for an unknown service
    wrong = wait_until(lambda: scene.pod("wrong-grpc")["status"]["phase"] == "Running" and scene.pod("wrong-grpc"),
                       "the pod with the wrong gRPC service running", 30)
    assert condition(wrong, "Ready") == "False"
    wait_until(lambda: [e for e in events(scene.kubectl, scene.namespace, "wrong-grpc")
                        if "Readiness probe failed" in e], "a failed gRPC readiness probe event", 20)


def test_a_failing_liveness_probe_restarts_the_container(scene: Scene) -> None:
    ready_pods(scene.kubectl, scene.namespace, "app=lively", 1)
    scene.exec("lively", "touch", "/tmp/dead")
    restarted = wait_until(lambda: (scene.pod("lively")["status"]["containerStatuses"][0]["restartCount"] >= 1
                                    and scene.pod("lively")), "a restart by the liveness probe", 30)
    assert restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"] in ("Error", "Completed")
    assert any("Liveness probe failed" in e for e in events(scene.kubectl, scene.namespace, "lively"))
    ready_pods(scene.kubectl, scene.namespace, "app=lively", 1)  # the new container has a fresh /tmp


def test_a_cluster_ip_service_reaches_the_pods_from_the_host_and_from_a_pod(scene: Scene) -> None:
    names = {p["metadata"]["name"] for p in scene.web_pods()}
    address = scene.service_ip("web")
    # from the host: kube-proxy's DNAT picks either pod
    seen = {_http(f"http://{address}/index.html").split()[2] for _ in range(30)}
    assert seen == names
    # from a pod, by name: CoreDNS (through the kube-dns Service) and kube-proxy
    answer = scene.exec("client", "wget", "-qO-", f"http://web.{scene.namespace}.svc.cluster.local/index.html")
    assert answer.split()[2] in names
    assert f"nameserver {DNS_SERVICE_IP}" in scene.exec("client", "cat", "/etc/resolv.conf")


def test_a_headless_service_resolves_to_every_ready_pod(scene: Scene) -> None:
    addresses = {p["status"]["podIP"] for p in scene.web_pods()}
    lookup = scene.exec("client", "nslookup", f"web-headless.{scene.namespace}.svc.cluster.local")
    answered = set(re.findall(r"Address: (10\.85\.0\.\d+)", lookup))
    assert answered == addresses, lookup
    # nothing outside the cluster domain is answered (CoreDNS forwards nowhere)
    outside = scene.exec("client", "nslookup", "example.com.", check=False)
    assert "NXDOMAIN" in outside or "can't find" in outside


def test_pods_reach_the_api_server_with_their_service_account_token(scene: Scene) -> None:
    # the `kubernetes` Service leads a pod to the API server (busybox's TLS cannot talk to it: plain HTTP gets the
    # Go TLS server's own answer)
    answer = scene.exec("client", "sh", "-c", r"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 kubernetes.default.svc 443")
    assert "Client sent an HTTP request to an HTTPS server" in answer
    # CoreDNS and metrics-server run with in-cluster configuration (KUBERNETES_SERVICE_HOST=10.96.0.1, their token):
    # the audit log shows their requests, authenticated as their ServiceAccounts, coming from their pod IPs
    for account, label in (("coredns", "kube-dns"), ("metrics-server", "metrics-server")):
        pod = pods(scene.kubectl, "kube-system", f"k8s-app={label}")[0]
        user = f"system:serviceaccount:kube-system:{account}"
        seen = [e for e in scene.cluster.audit() if e.get("user", {}).get("username") == user
                and e.get("sourceIPs", [""])[0] == pod["status"]["podIP"] and e.get("responseStatus", {})
                .get("code") == 200]
        assert seen, f"no authenticated request of {user} from {pod['status']['podIP']}"


def test_kubectl_logs_and_exec_go_through_the_kubelet(scene: Scene) -> None:
    logs = scene.kubectl("logs", "-n", scene.namespace, "client").stdout
    assert logs.strip() == "client-started-client"
    assert scene.exec("client", "sh", "-c", "echo $((6 * 7))").strip() == "42"
    piped = scene.kubectl("exec", "-i", "-n", scene.namespace, "client", "--", "wc", "-c", stdin="x" * 1000)
    assert piped.stdout.strip() == "1000"


def test_a_local_persistent_volume_is_mounted_into_the_pod(scene: Scene) -> None:
    claim = wait_until(lambda: scene.kubectl.json("get", "pvc", "-n", scene.namespace, "data")["status"]
                       .get("phase") == "Bound", "the claim bound")
    assert claim
    ready_pods(scene.kubectl, scene.namespace, "app=writer", 1)
    volume = scene.kubectl.json("get", "pv", f"real-local-{scene.namespace}")["spec"]["local"]["path"]
    proof = wait_until(lambda: (Path(volume) / "proof.txt").read_text(), "the pod's file on the host")
    assert proof.strip() == "written-by-writer"


def test_only_changed_layers_are_loaded_and_pods_run_the_new_image(scene: Scene) -> None:
    marker = f"top-{time.time_ns()}"
    changed = image_with_top_layer(scene.image, "top", marker)
    try:
        result = scene.node.load_image(changed)
    finally:
        remove_image(changed)
    print(f"\nreal node: changed top layer loaded: {result}")
    assert result["layers_sent"] == 1 and result["layers"] == 2 and result["bytes_sent"] < 64 << 10
    reader = _pod("reader", [_container("main", changed, ["sh", "-c", "cat /etc/top.txt; exec sleep 100000"])])
    scene.kubectl.apply(reader, "-n", scene.namespace)
    ready_pods(scene.kubectl, scene.namespace, "app=reader", 1)
    wait_until(lambda: scene.kubectl("logs", "-n", scene.namespace, "reader").stdout.strip() == marker,
               "the new layer's file in the pod's log", 20)


def test_kwok_pod_ips_and_the_outside_are_unreachable_from_the_node(scene: Scene) -> None:
    ghost = wait_until(lambda: [p for p in pods(scene.kubectl, scene.namespace, "app=ghost")
                                if (p.get("status") or {}).get("podIP")], "the kwok pod's IP")[0]
    ghost_ip = ghost["status"]["podIP"]
    assert ghost_ip.startswith("10.244.")
    # kube-proxy DNATs the ghost Service to an IP that exists nowhere: the route is a blackhole, never eth0
    assert nodehost.route_of(ghost_ip).startswith(("RTNETLINK answers: Invalid argument", "blackhole"))
    with pytest.raises(OSError):
        socket.create_connection((scene.service_ip("ghost"), 80), timeout=2).close()
    # what a pod sends anywhere but the bridge is dropped on the way in (the bridge's own routing table)
    client_ip = scene.pod("client")["status"]["podIP"]
    for outside in ("192.0.2.1", "1.1.1.1", ghost_ip):
        assert "Invalid argument" in nodehost.route_from_bridge(outside, client_ip)
    failed = pod_exec(scene.kubectl, scene.namespace, "client", "nc", "-z", "-w", "2", "ghost", "80", check=False)
    assert failed.returncode != 0
    # and the machine forwards nothing that comes in elsewhere than the bridge (pods need forwarding on)
    mangle = nodehost.run("iptables-save", "-t", "mangle").stdout.splitlines()
    first = next(line for line in mangle if line.startswith("-A PREROUTING"))
    assert first == f"-A PREROUTING -j {nodehost.INGRESS_CHAIN}"
    assert f"-A {nodehost.INGRESS_CHAIN} -j DROP" in mangle


def test_metrics_server_serves_kubectl_top_and_a_cpu_hpa(scene: Scene) -> None:
    scene.node.wait_metrics()
    top = scene.kubectl("top", "node", NODE_NAME, "--no-headers").stdout.split()
    assert top[0] == NODE_NAME and top[1].endswith("m") and top[3].endswith("Mi")
    usage = wait_until(lambda: [line for line in scene.kubectl("top", "pod", "-n", scene.namespace, "--no-headers",
                                                                check=False).stdout.splitlines()
                                if line.startswith("web-")], "pod metrics", 60)
    assert all(re.match(r"web-\S+\s+\d+m\s+\d+Mi", line) for line in usage)
    # the burner uses ~100m of its 20m request: the HPA, from metrics-server's numbers, wants 2 replicas
    def scaled() -> dict[str, Any] | None:
        hpa = scene.kubectl.json("get", "hpa", "-n", scene.namespace, "burner")
        current = (hpa.get("status") or {}).get("currentMetrics") or []
        return hpa if current and hpa["status"].get("desiredReplicas") == 2 else None

    hpa = wait_until(scaled, "the HPA scaling the burner from its CPU", 90)
    assert hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"] > 50
    scene.kubectl("delete", "deployment", "-n", scene.namespace, "burner", "--wait=false")


@pytest.mark.last
def test_the_teardown_leaves_the_machine_as_it_was(real_cluster: Any) -> None:
    node = real_cluster.node
    before, node_dir = node.machine_before, node.dir
    began = time.monotonic()
    real_cluster.stop()
    print(f"\nreal node: teardown {time.monotonic() - began:.1f}s")
    assert nodehost.differences(before, nodehost.machine_state()) == []
    assert nodehost.node_processes(node_dir) == []
    assert not node_dir.exists() and not nodehost.LEDGER.exists() and not nodehost.LOCK.exists()


@pytest.mark.last
def test_a_killed_run_is_cleaned_up_afterwards(real_cluster: Any, tmp_path: Path) -> None:
    """A run killed with its node up leaves the kubelet, containerd, pods, the bridge and the control plane
    behind; `realnode.py cleanup` (and the next node's start) undoes all of it, from the ledger."""
    real_cluster.stop()  # (already stopped by the test before, where it ran)
    require_real_node()
    before = nodehost.machine_state()
    state = tmp_path / "killed"
    script = Path(__file__).resolve().parents[1] / "scripts" / "cluster"
    with (tmp_path / "up.log").open("w+") as log:
        up = subprocess.Popen([sys.executable, str(script / "localcluster.py"), "up", "--real-node", "--state",
                               str(state)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: "export KUBECONFIG" in (tmp_path / "up.log").read_text() or up.poll() is not None,
                       "the cluster up", 180)
            assert up.poll() is None, (tmp_path / "up.log").read_text()
        finally:
            up.kill()
            up.wait()
    left = nodehost.processes_mentioning(str(state))
    assert len(left) >= 8 and nodehost.LEDGER.exists()  # control plane, containerd, shims, kubelet, kube-proxy
    assert nodehost.differences(before, nodehost.machine_state())
    began = time.monotonic()
    cleanup = subprocess.run([sys.executable, str(script / "realnode.py"), "cleanup"], capture_output=True,
                             text=True, timeout=180)
    assert cleanup.returncode == 0, cleanup.stderr
    print(f"\nreal node: cleanup after a kill {time.monotonic() - began:.1f}s")
    assert nodehost.differences(before, nodehost.machine_state()) == []
    assert nodehost.processes_mentioning(str(state)) == []
    assert not (state / "node").exists() and not nodehost.LEDGER.exists() and not nodehost.LOCK.exists()
