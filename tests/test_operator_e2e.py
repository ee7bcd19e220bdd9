"""End to end: kubectl apply -> operator -> real Deployment, ReplicaSet, scheduler -> a local kubelet runs it -> Detect.

Everything but the node is real: the API server validates the InferenceService, the Deployment controller makes a
ReplicaSet and a Pod, the scheduler binds the Pod to the node ``local-0`` (the spec's nodeSelector and toleration
send it there). That node's kubelet is played here: it sees the Pod bound to it, gives each volume a local folder,
runs the init container's and the runtime container's command and args as local processes (paths under mounts
mapped to those folders, loopback ports instead of 8001/8080), probes gRPC health as the readiness probe does,
and writes the Pod's status as a kubelet would. The Deployment controller then counts the Pod ready, the operator
reports Ready with the endpoint, and the client reaches the endpoint through the Pod's local address. Deleting the
InferenceService lets the garbage collector delete the Pod; the kubelet stops the process, which drains and exits.
"""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cluster_support import LOCAL_NODE, LOCAL_NODE_LABEL, Api, Kubectl, LocalCluster, install_crd, new_namespace
from grpc_health.v1 import health_pb2, health_pb2_grpc
from operator_support import OperatorProcess, deployment_path, eventually, is_path, pod_path
from runtime_support import free_port, runtime_env

from kubeinfer.clients import Client
from kubeinfer.runtime.demo_models import synthetic_image

BIN = Path(sys.executable).parent  # the "image": its PATH holds the kubeinfer console script


@dataclass
class LocalPod:
    """One pod the kubelet runs: its process, ports and log."""

    namespace: str
    name: str
    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log: Path
    folders: dict[str, Path] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self, grace: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return int(self.process.returncode)


class LocalKubelet:
    """Plays the kubelet of node local-0: runs the Pods the scheduler binds there as local processes."""

    def __init__(self, api: Api, workdir: Path, claims: dict[str, Path]) -> None:
        self.api, self.workdir, self.claims = api, workdir, claims
        self.pods: dict[tuple[str, str], LocalPod] = {}
        self.exit_codes: dict[tuple[str, str], int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> LocalKubelet:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # a test thread: keep the reason for the failure message
                self.errors.append(repr(exc))
            self._stop.wait(0.3)

    def _sync(self) -> None:
        listed = self.api.get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{LOCAL_NODE}")
        assert listed is not None
        seen = set()
        for pod in listed["items"]:
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            seen.add(key)
            if pod["metadata"].get("deletionTimestamp"):
                self._terminate(key, pod)
            elif key not in self.pods and key not in self.exit_codes:
                self._start(pod)
        for key in [k for k in self.pods if k not in seen]:
            self.exit_codes[key] = self.pods.pop(key).stop()

    def _terminate(self, key: tuple[str, str], pod: dict[str, Any]) -> None:
        running = self.pods.pop(key, None)
        if running is not None:
            self.exit_codes[key] = running.stop(float(pod["spec"].get("terminationGracePeriodSeconds", 30)))
        # The kubelet removes the Pod object once its containers stopped.
        self.api.call("DELETE", pod_path(*key) + "?gracePeriodSeconds=0")

    def _volumes(self, pod_name: str, pod_spec: dict[str, Any]) -> dict[str, Path]:
        folders: dict[str, Path] = {}
        for volume in pod_spec.get("volumes") or []:
            if "emptyDir" in volume:
                folders[volume["name"]] = self.workdir / pod_name / "volumes" / volume["name"]
                folders[volume["name"]].mkdir(parents=True)
            elif "persistentVolumeClaim" in volume:
                folders[volume["name"]] = self.claims[volume["persistentVolumeClaim"]["claimName"]]
            else:
                raise AssertionError(f"the local kubelet has no support for volume {volume}")
        return folders

    @staticmethod
    def _mapper(container: dict[str, Any], folders: dict[str, Path]) -> Any:
        mounts = sorted(container.get("volumeMounts") or [], key=lambda m: len(m["mountPath"]), reverse=True)

        def local(text: str) -> str:
            for mount in mounts:
                root = mount["mountPath"].rstrip("/")
                if text == root or text.startswith(root + "/"):
                    return str(folders[mount["name"]]) + text[len(root):]
            return text

        return local

    def _command(self, container: dict[str, Any], folders: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
        local = self._mapper(container, folders)
        command = [str(BIN / container["command"][0]), *container["command"][1:]]
        args = [local(arg) for arg in container.get("args") or []]
        env = runtime_env()
        for variable in container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = local(variable["value"])
        return [*command, *args], env

    def _start(self, pod: dict[str, Any]) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        spec = pod["spec"]
        folders = self._volumes(name, spec)
        for init in spec.get("initContainers") or []:
            command, env = self._command(init, folders)
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"init container {init['name']} failed: {done.stderr}"
        (runtime,) = spec["containers"]
        command, env = self._command(runtime, folders)
        grpc_port, http_port = free_port(), free_port()
        command = _override(command, {"--host": "127.0.0.1", "--grpc-port": str(grpc_port),
                                      "--http-port": str(http_port)})
        log = self.workdir / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        local = LocalPod(namespace, name, process, grpc_port, http_port, log, folders)
        self.pods[(namespace, name)] = local
        started = _now()
        self._report(local, runtime, started, ready=False)
        self._probe_until_ready(local)
        self._report(local, runtime, started, ready=True)

    def _report(self, pod: LocalPod, runtime: dict[str, Any], started: str, ready: bool) -> None:
        flag = "True" if ready else "False"
        self.api.patch(pod_path(pod.namespace, pod.name, "status"), {"status": {
            "phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1", "startTime": started,
            "conditions": [{"type": t, "status": s, "lastTransitionTime": _now()} for t, s in (
                ("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", flag), ("Ready", flag))],
            "containerStatuses": [{"name": runtime["name"], "ready": ready, "started": True, "restartCount": 0,
                                   "image": runtime["image"], "imageID": "",
                                   "state": {"running": {"startedAt": started}}}]}})

    @staticmethod
    def _probe_until_ready(pod: LocalPod, timeout: float = 180.0) -> None:
        """The readinessProbe: grpc.health.v1 Check on the gRPC port until SERVING."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{pod.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert pod.process.poll() is None, f"the runtime exited:\n{pod.logs()}"
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.3)
        raise AssertionError(f"the runtime never became ready:\n{pod.logs()}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for pod in self.pods.values():
            pod.stop()


def _override(command: list[str], values: dict[str, str]) -> list[str]:
    result = list(command)
    for flag, value in values.items():
        assert flag in result, f"{flag} missing from {result}"
        result[result.index(flag) + 1] = value
    return result


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Models(http.server.BaseHTTPRequestHandler):
    files: dict[str, Path] = {}

    def do_GET(self) -> None:
        path = self.files.get(self.path.split("?", 1)[0])
        if path is None:
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def model_server(detector_model: Path) -> Iterator[str]:
    _Models.files = {"/models/detector.pt": detector_model}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    digest = hashlib.sha256(detector_model.read_bytes()).hexdigest()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/models/detector.pt#sha256={digest}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow
def test_apply_schedule_run_and_detect(kube_cluster: LocalCluster, tmp_path: Path, detector_model: Path,
                                       model_server: str) -> None:
    api = Api(kube_cluster)
    kubectl = Kubectl(kube_cluster.kubeconfig, tmp_path / "kube-cache")
    install_crd(kubectl)
    ns = new_namespace(api, "e2e")
    kubelet = LocalKubelet(api, tmp_path / "node", claims={}).start()
    operator = OperatorProcess(["--listen-host", "127.0.0.1", "--metrics-port", "0", "--liveness-port", "0",
                                "--runtime-image", "kubeinfer:e2e"], kube_cluster.kubeconfig,
                               tmp_path / "operator.log")
    try:
        resource = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                    "metadata": {"name": "rects", "namespace": ns},
                    "spec": {"task": "detect", "model": {"uri": model_server},
                             "thresholds": {"confidence": 0.3, "iou": 0.5},
                             "batching": {"maxBatchSize": 4, "maxDelayMs": 5}, "grpc": {"workers": 2},
                             "nodeSelector": {LOCAL_NODE_LABEL: "true"},
                             "tolerations": [{"key": LOCAL_NODE_LABEL, "operator": "Exists",
                                              "effect": "NoSchedule"}]}}
        kubectl.apply(resource)

        def ready() -> dict[str, Any] | None:
            assert not kubelet.errors, kubelet.errors
            current = ((api.get(is_path(ns, "rects")) or {}).get("status")) or {}
            return current if current.get("phase") == "Ready" else None

        status = eventually(ready, timeout=240, what=f"Ready\n{operator.logs()[-4000:]}")
        assert status["endpoint"] == f"rects.{ns}.svc:8001" and status["readyReplicas"] == 1
        ((key, pod),) = kubelet.pods.items()
        bound = api.get(pod_path(*key))
        assert bound is not None and bound["spec"]["nodeName"] == LOCAL_NODE  # bound by the real scheduler
        owner = bound["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "ReplicaSet"  # made by the real Deployment controller
        fetched = pod.folders["fetched"] / "model" / "detector.pt"
        assert fetched.read_bytes() == detector_model.read_bytes()  # the init container's download

        rng = np.random.default_rng(4242)
        images = [synthetic_image(rng, 128) for _ in range(4)]
        with Client(f"{bound['status']['podIP']}:{pod.grpc_port}") as client:  # the Service resolves to the pod
            assert client.model_info().model_name == "rects"  # --model-name is the resource's name
            results = client.detect([image.pixels for image in images])
        assert len(results) == 4
        for image, result in zip(images, results, strict=True):
            assert len(result.detections) == len(image.boxes), (image.boxes, result.detections)
            assert all(d.score >= 0.3 for d in result.detections)  # the spec's confidence is the default

        deployment = api.get(deployment_path(ns, "rects"))
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == 8080  # the kubelet maps 8080 to the local HTTP port
        with urllib.request.urlopen(f"http://127.0.0.1:{pod.http_port}{annotations['prometheus.io/path']}") as r:
            assert b"kubeinfer" in r.read()

        kubectl("delete", "kisvc", "rects", "-n", ns, "--wait=false")
        eventually(lambda: key in kubelet.exit_codes, timeout=90, what="the garbage collector to delete the pod")
        assert kubelet.exit_codes[key] == 0, pod.logs()  # the runtime drained and exited cleanly
        eventually(lambda: api.get(deployment_path(ns, "rects")) is None and api.get(pod_path(*key)) is None,
                   timeout=60, what="the Deployment and Pod gone")
    finally:
        kubelet.stop()
        operator.stop()
