"""End to end: kubectl apply -> operator -> Deployment -> a local "kubelet" runs it -> the client detects.

The launcher below plays the node: it reads the Deployment the operator rendered, gives each volume a local
folder (emptyDir: a fresh folder, persistentVolumeClaim: the folder standing in for the claim), runs the init
containers' and the runtime container's command and args as local processes (paths under mounts mapped to
those folders, listening on free loopback ports instead of 8001/8080), probes gRPC health as the readiness
probe does, then records the Pod and the Deployment status as the kubelet and the Deployment controller
would. The client connects to the endpoint the InferenceService's status reports, resolved the way a
Service would resolve it: to the pod's address.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kube_emulator import EmulatedCluster
from operator_support import (
    CRD_PATH,
    Api,
    Kubectl,
    OperatorProcess,
    deployment_path,
    eventually,
    is_path,
    mark_deployment,
    pod_path,
    runtime_pod,
    write_kubeconfig,
)
from runtime_support import free_port, runtime_env

from kubeinfer.clients import Client
from kubeinfer.runtime.demo_models import synthetic_image

BIN = Path(sys.executable).parent  # the "image": its PATH holds the kubeinfer console script


@dataclass
class LocalPod:
    """One replica the launcher runs: its process, ports and log."""

    name: str
    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log: Path
    folders: dict[str, Path] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return int(self.process.returncode)


class Launcher:
    """Plays kubelet, Deployment controller and kube-proxy for one emulated node on loopback."""

    def __init__(self, api: Api, workdir: Path, claims: dict[str, Path]) -> None:
        self.api, self.workdir, self.claims = api, workdir, claims
        self.pods: list[LocalPod] = []
        self.services: dict[str, str] = {}  # "name.namespace.svc:8001" -> "127.0.0.1:PORT"

    def _volumes(self, pod_name: str, pod_spec: dict[str, Any]) -> dict[str, Path]:
        folders: dict[str, Path] = {}
        for volume in pod_spec.get("volumes") or []:
            if "emptyDir" in volume:
                folders[volume["name"]] = self.workdir / pod_name / "volumes" / volume["name"]
                folders[volume["name"]].mkdir(parents=True)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in self.claims, f"persistentvolumeclaim {claim!r} not found"
                folders[volume["name"]] = self.claims[claim]
            else:
                raise AssertionError(f"the launcher has no support for volume {volume}")
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

    def run(self, namespace: str, name: str) -> LocalPod:
        deployment = self.api.get(deployment_path(namespace, name))
        assert deployment is not None
        pod_name = f"{name}-{len(self.pods)}"
        pod_spec = deployment["spec"]["template"]["spec"]
        folders = self._volumes(pod_name, pod_spec)
        self.api.create(pod_path(namespace), runtime_pod(deployment, pod_name))  # the ReplicaSet's pod
        log = self.workdir / f"{pod_name}.log"
        for init in pod_spec.get("initContainers") or []:
            command, env = self._command(init, folders)
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"init container {init['name']} failed: {done.stderr}"
        (runtime,) = pod_spec["containers"]
        command, env = self._command(runtime, folders)
        grpc_port, http_port = free_port(), free_port()
        command = _override(command, {"--host": "127.0.0.1", "--grpc-port": str(grpc_port),
                                      "--http-port": str(http_port)})
        with log.open("wb") as sink:
            process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        pod = LocalPod(pod_name, process, grpc_port, http_port, log, folders)
        self.pods.append(pod)
        self._probe_until_ready(pod)
        self.api.patch(pod_path(namespace, pod_name, "status"), {"status": {
            "phase": "Running", "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": runtime["name"], "ready": True, "started": True, "restartCount": 0,
                                   "image": runtime["image"], "imageID": "",
                                   "state": {"running": {"startedAt": "2026-11-22T10:00:00Z"}}}]}})
        mark_deployment(self.api, namespace, name, ready=1)
        self.services[f"{name}.{namespace}.svc:8001"] = f"127.0.0.1:{grpc_port}"
        return pod

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

    def resolve(self, endpoint: str) -> str:
        return self.services[endpoint]

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()


def _override(command: list[str], values: dict[str, str]) -> list[str]:
    result = list(command)
    for flag, value in values.items():
        assert flag in result, f"{flag} missing from {result}"
        result[result.index(flag) + 1] = value
    return result


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


def test_apply_reconcile_run_and_detect(tmp_path: Path, detector_model: Path, model_server: str) -> None:
    emulated = EmulatedCluster().start()
    launcher = Launcher(Api(emulated.url), tmp_path / "node", claims={})
    operator: OperatorProcess | None = None
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulated.url)
        kubectl = Kubectl(kubeconfig, tmp_path / "kube-cache")
        kubectl("apply", "--validate=false", "-f", str(CRD_PATH))
        operator = OperatorProcess(["--listen-host", "127.0.0.1", "--metrics-port", "0", "--liveness-port", "0",
                                    "--runtime-image", "kubeinfer:e2e"], kubeconfig, tmp_path / "operator.log")
        resource = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                    "metadata": {"name": "rects", "namespace": "default"},
                    "spec": {"task": "detect", "model": {"uri": model_server},
                             "thresholds": {"confidence": 0.3, "iou": 0.5},
                             "batching": {"maxBatchSize": 4, "maxDelayMs": 5}, "grpc": {"workers": 2}}}
        kubectl("apply", "--validate=false", "-f", "-", stdin=json.dumps(resource))
        api = Api(emulated.url)
        eventually(lambda: api.get(deployment_path("default", "rects")), timeout=30,
                   what=f"the Deployment\n{operator.logs()}")
        pod = launcher.run("default", "rects")
        fetched = pod.folders["fetched"] / "model" / "detector.pt"
        assert fetched.read_bytes() == detector_model.read_bytes()  # the init container's download
        status = eventually(lambda: (s := (api.get(is_path("default", "rects")) or {}).get("status", {}))
                            .get("phase") == "Ready" and s, timeout=30, what=f"Ready\n{operator.logs()}")
        assert status["endpoint"] == "rects.default.svc:8001" and status["readyReplicas"] == 1

        rng = np.random.default_rng(4242)
        images = [synthetic_image(rng, 128) for _ in range(4)]
        with Client(launcher.resolve(status["endpoint"])) as client:
            assert client.model_info().model_name == "rects"  # --model-name is the resource's name
            results = client.detect([image.pixels for image in images])
        assert len(results) == 4
        for image, result in zip(images, results, strict=True):
            assert len(result.detections) == len(image.boxes), (image.boxes, result.detections)
            assert all(d.score >= 0.3 for d in result.detections)  # the spec's confidence is the default

        deployment = api.get(deployment_path("default", "rects"))
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        scrape_port = int(annotations["prometheus.io/port"])
        assert scrape_port == 8080  # the launcher maps 8080 to the pod's local HTTP port
        with urllib.request.urlopen(f"http://127.0.0.1:{pod.http_port}{annotations['prometheus.io/path']}") as r:
            assert b"kubeinfer" in r.read()

        kubectl("delete", "kisvc", "rects")
        eventually(lambda: api.get(deployment_path("default", "rects")) is None, what="the Deployment gone")
        assert pod.stop() == 0, pod.logs()  # the kubelet stops the pod; the runtime drains and exits cleanly
    finally:
        launcher.stop()
        if operator is not None:
            operator.stop()
        emulated.stop()
        shutil.rmtree(tmp_path / "node", ignore_errors=True)
