"""The whole flow on the real node: object store -> fetch init container -> runtime pod -> Detect.

SeaweedFS (S3) and fake-gcs-server (GCS) listen on the node's bridge address, where pods reach them. The operator
renders the pods; the real kubelet runs the fetch init container from the lean cpu image with the Secret's keys,
then the runtime from the same image, and the kubelet's own probes make it Ready. A new ?versionId= rolls out
with no pod left on the old model. A wrong key or a missing object ends in status reason FetchFailed with the
fetch's one line, taken from the init container's termination message, and an Event; the secret is nowhere in
status, Events, logs or the operator's metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cluster_support import Api, Kubectl, install_crd, new_namespace
from object_store_support import READER, CountingRelay, FakeGcs, SeaweedS3, free_port
from operator_support import OperatorProcess, eventually, is_path
from real_node_support import condition, pods

from kubeinfer.clients import Client
from kubeinfer.runtime.demo_models import synthetic_image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "cluster"))
from nodehost import NODE_IP  # noqa: E402
from nodeimages import buildah_images  # noqa: E402

CPU_IMAGE = "localhost/kubeinfer-runtime:cpu"
WRONG_SECRET = "not-the-reader-secret-0123456789"
pytestmark = pytest.mark.slow


@dataclass
class Flow:
    """The module's cluster clients, stores, namespace and operator."""

    api: Api
    kubectl: Kubectl
    namespace: str
    s3: SeaweedS3
    gcs: FakeGcs
    operator: OperatorProcess
    metrics_port: int
    model: bytes

    def apply(self, name: str, model: dict[str, Any]) -> None:
        self.kubectl.apply({"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                            "metadata": {"name": name, "namespace": self.namespace},
                            "spec": {"task": "detect", "model": model, "thresholds": {"confidence": 0.3},
                                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}})

    def status(self, name: str) -> dict[str, Any]:
        return dict((self.api.get(is_path(self.namespace, name)) or {}).get("status") or {})

    def ready(self, name: str, timeout: float = 240.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            current = self.status(name)
            return current if current.get("phase") == "Ready" else None

        return eventually(check, timeout=timeout, interval=1.0,
                          what=f"{name} Ready\n{self.describe(name)}")

    def describe(self, name: str) -> str:
        found = self.kubectl("describe", "pods", "-n", self.namespace, "-l", f"kubeinfer.io/inferenceservice={name}",
                             check=False)
        return f"status {self.status(name)}\n{found.stdout[-4000:]}\n{self.operator.logs()[-3000:]}"

    def pods(self, name: str) -> list[dict[str, Any]]:
        return [p for p in pods(self.kubectl, self.namespace, f"kubeinfer.io/inferenceservice={name}")
                if not p["metadata"].get("deletionTimestamp")]

    def events(self, name: str) -> list[dict[str, Any]]:
        listed = self.kubectl.json("get", "events", "-n", self.namespace, "--field-selector",
                                   f"involvedObject.name={name}")
        return list(listed["items"])

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return response.read().decode()


def cpu_image() -> str:
    """The lean runtime image of this tree, in buildah's storage: built as `make images` builds it (cached steps,
    ~30 s after a code change, less when tests/test_images.py built it already), so the pods run this code."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "images.py"), "--only", "runtime-cpu", "--no-run"],
                   check=True, timeout=1800, stdout=subprocess.DEVNULL)
    assert CPU_IMAGE in buildah_images()
    return CPU_IMAGE


def onnx_detector(detector: Path) -> bytes:
    """The demo detector exported to ONNX (cached), as the cpu image serves it."""
    from kubeinfer.runtime.models.backend import onnx_export

    return onnx_export(detector, ROOT / ".cache" / "exports", None).read_bytes()


@pytest.fixture(scope="module")
def flow(real_cluster: Any, detector_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    began = time.monotonic()
    loaded = real_cluster.node.load_image(cpu_image())
    model = onnx_detector(detector_model)
    state = tmp_path_factory.mktemp("storage-real-node")
    s3 = SeaweedS3(state / "s3", host=NODE_IP).start()
    gcs = FakeGcs(state / "gcs", host=NODE_IP).start()
    api = Api(real_cluster)
    kubectl = Kubectl(real_cluster.kubeconfig, state / "kubectl-cache")
    install_crd(kubectl)
    namespace = new_namespace(api, "storage")
    operator = None
    try:
        s3.create_bucket("models", versioned=True)
        gcs.create_bucket("models")
        s3.put("models", "detector/model.onnx", model)
        gcs.put("models", "detector/model.onnx", model)
        for name, secret in (("s3-reader", READER[1]), ("s3-wrong", WRONG_SECRET)):
            kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                           "stringData": {"AWS_ACCESS_KEY_ID": READER[0], "AWS_SECRET_ACCESS_KEY": secret}})
        metrics_port = free_port("127.0.0.1")
        operator = OperatorProcess(["--namespace", namespace, "--listen-host", "127.0.0.1", "--metrics-port",
                                    str(metrics_port), "--liveness-port", "0", "--runtime-cpu-image", CPU_IMAGE,
                                    "--runtime-gpu-image", "localhost/kubeinfer-runtime:gpu"],
                                   real_cluster.kubeconfig, state / "operator.log")
        print(f"\nstorage on the real node: image {loaded}, stores and operator up in "
              f"{time.monotonic() - began:.1f}s")
        yield Flow(api, kubectl, namespace, s3, gcs, operator, metrics_port, model)
    finally:
        if real_cluster.alive():
            kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        if operator is not None:
            operator.stop()
        s3.stop()
        gcs.stop()


def detect_through(pod: dict[str, Any]) -> None:
    """Detect on the pod's own address: the runtime the kubelet started answers with the fetched model."""
    rng = np.random.default_rng(4242)  # the images test_operator_e2e's detector finds every rectangle in
    images = [synthetic_image(rng, 128) for _ in range(4)]
    with Client(f"{pod['status']['podIP']}:8001") as client:
        results = client.detect([image.pixels for image in images])
    assert [len(r.detections) for r in results] == [len(image.boxes) for image in images]


def fetched_record(flow: Flow, pod: dict[str, Any]) -> dict[str, Any]:
    text = flow.kubectl("exec", "-n", flow.namespace, pod["metadata"]["name"], "-c", "runtime", "--", "cat",
                        "/kubeinfer/fetched/.kubeinfer-fetched.json").stdout
    return dict(json.loads(text))


def test_an_s3_model_with_a_secret_serves_and_a_new_version_rolls_out(flow: Flow) -> None:
    endpoint = flow.s3.endpoint
    first = flow.s3.put("models", "yolo/model.onnx", flow.model)
    model = {"uri": f"s3://models/yolo/model.onnx?versionId={first['version']}", "storage": {"endpoint": endpoint},
             "credentials": {"secretName": "s3-reader"}}
    flow.apply("s3-detect", model)
    began = time.monotonic()
    flow.ready("s3-detect")
    print(f"s3 model Ready in {time.monotonic() - began:.1f}s")
    (pod,) = flow.pods("s3-detect")
    detect_through(pod)
    assert fetched_record(flow, pod)["model/model.onnx"]["version"] == first["version"]
    (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "fetch"]
    runtime = pod["spec"]["containers"][0]
    assert any("secretKeyRef" in (e.get("valueFrom") or {}) for e in init["env"])
    assert not any("valueFrom" in e for e in runtime.get("env") or [])  # the runtime never sees the Secret
    fetch_log = flow.kubectl("logs", "-n", flow.namespace, pod["metadata"]["name"], "-c", "fetch").stdout
    assert f"version {first['version']}" in fetch_log and READER[1] not in fetch_log

    # The object behind the URI changes: a new version, named in the spec, rolls out like any spec change.
    second = flow.s3.put("models", "yolo/model.onnx", flow.model)
    flow.apply("s3-detect", {**model, "uri": f"s3://models/yolo/model.onnx?versionId={second['version']}"})
    generation = flow.api.get(is_path(flow.namespace, "s3-detect"))["metadata"]["generation"]

    def rolled_out() -> dict[str, Any] | None:
        status = flow.status("s3-detect")
        return status if status.get("phase") == "Ready" and status.get("observedGeneration") == generation else None

    eventually(rolled_out, timeout=240, interval=1.0, what=f"the new version Ready\n{flow.describe('s3-detect')}")
    current = flow.pods("s3-detect")
    assert len(current) == 1 and condition(current[0], "Ready") == "True"
    assert fetched_record(flow, current[0])["model/model.onnx"]["version"] == second["version"]  # none on the old
    detect_through(current[0])


def test_a_gcs_model_through_an_emulator_serves(flow: Flow) -> None:
    flow.apply("gs-detect", {"uri": "gs://models/detector/model.onnx", "storage": {"endpoint": flow.gcs.endpoint}})
    flow.ready("gs-detect")
    (pod,) = flow.pods("gs-detect")
    detect_through(pod)


@pytest.mark.parametrize(("case", "expected"), [
    ("wrong secret", "bad credentials (SignatureDoesNotMatch): the store does not accept them"),
    ("missing key", "no such key 'detector/absent.onnx'"),
])
def test_a_failed_fetch_is_fetch_failed_in_status_and_events_and_the_secret_nowhere(flow: Flow, case: str,
                                                                                     expected: str) -> None:
    name = "wrong-secret" if case == "wrong secret" else "missing-key"
    key = "detector/model.onnx" if case == "wrong secret" else "detector/absent.onnx"
    flow.apply(name, {"uri": f"s3://models/{key}", "storage": {"endpoint": flow.s3.endpoint},
                      "credentials": {"secretName": "s3-wrong" if case == "wrong secret" else "s3-reader"}})

    def failed() -> dict[str, Any] | None:
        status = flow.status(name)
        reason = (status.get("conditions") or [{}])[0].get("reason")
        return status if status.get("phase") == "Failed" and reason == "FetchFailed" else None

    status = eventually(failed, timeout=180, interval=1.0, what=f"{name} FetchFailed\n{flow.describe(name)}")
    message = status["conditions"][0]["message"]
    assert message.endswith(f"init container fetch: kubeinfer fetch: s3://models/{key}: {expected}"), message
    warnings = [e for e in flow.events(name) if e.get("reason") == "FetchFailed"]
    assert warnings and expected in warnings[0]["message"] and warnings[0]["type"] == "Warning"
    (pod,) = flow.pods(name)
    logs = flow.kubectl("logs", "-n", flow.namespace, pod["metadata"]["name"], "-c", "fetch", check=False).stdout
    everything = json.dumps(status) + json.dumps(flow.events(name)) + logs + flow.operator.logs() + flow.metrics()
    for secret in (READER[1], WRONG_SECRET):
        assert secret not in everything


def fetch_seconds(pod: dict[str, Any]) -> float:
    """How long the pod's fetch init container ran, as the kubelet recorded it (whole seconds)."""
    (state,) = [s["state"]["terminated"] for s in pod["status"]["initContainerStatuses"] if s["name"] == "fetch"]
    started, finished = (time.mktime(time.strptime(state[key], "%Y-%m-%dT%H:%M:%SZ"))
                         for key in ("startedAt", "finishedAt"))
    return finished - started


def test_a_second_pod_of_a_model_on_the_node_starts_from_the_node_cache(flow: Flow, real_cluster: Any,
                                                                        tmp_path_factory: pytest.TempPathFactory
                                                                        ) -> None:
    """Pod start (apply to Ready) of a 200 MiB model folder from a store at 100 MiB/s: without the cache, then
    twice with it (a cold cache, then a second pod of the same model on the node). Printed; the second copies
    from the node's disk, and the bytes on the wire show it."""
    weights = tmp_path_factory.mktemp("weights") / "model.onnx.data"
    with weights.open("wb") as out:
        block = np.random.default_rng(1).bytes(1024 * 1024)
        for index in range(200):
            out.write(block[index:] + block[:index])
    flow.s3.put("models", "big/model.onnx", flow.model)
    flow.s3.put("models", "big/model.onnx.data", weights)  # a sibling the model would load (ONNX external data)
    # The pods reach the store through a relay passing 100 MiB/s: a store across a network, not on this machine.
    relay = CountingRelay(NODE_IP, (NODE_IP, flow.s3.ports["s3"]), rate=100 * 1024 * 1024)
    model = {"uri": "s3://models/big/", "file": "model.onnx",
             "storage": {"endpoint": f"http://{NODE_IP}:{relay.port}"}, "credentials": {"secretName": "s3-reader"}}

    def start(name: str, into: Flow) -> tuple[float, dict[str, Any]]:
        began = time.monotonic()
        into.apply(name, model)
        into.ready(name)
        (pod,) = into.pods(name)
        detect_through(pod)
        return time.monotonic() - began, pod

    without, pod = start("uncached", flow)
    assert "from the node cache" not in flow.kubectl("logs", "-n", flow.namespace, pod["metadata"]["name"],
                                                     "-c", "fetch").stdout
    cache = tmp_path_factory.mktemp("node-cache")
    cache.chmod(0o755)
    subprocess.run(["chown", "65532:65532", str(cache)], check=True)  # the pods' uid writes it
    namespace = new_namespace(flow.api, "cached")
    flow.kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-reader", "namespace": namespace},
                        "stringData": {"AWS_ACCESS_KEY_ID": READER[0], "AWS_SECRET_ACCESS_KEY": READER[1]}})
    operator = OperatorProcess(["--namespace", namespace, "--listen-host", "127.0.0.1", "--metrics-port", "0",
                                "--liveness-port", "0", "--runtime-cpu-image", CPU_IMAGE, "--node-cache-path",
                                str(cache)], real_cluster.kubeconfig, cache.parent / "cached-operator.log")
    cached = Flow(flow.api, flow.kubectl, namespace, flow.s3, flow.gcs, operator, 0, flow.model)
    try:
        cold, cold_pod = start("cache-cold", cached)
        warm, warm_pod = start("cache-warm", cached)
        log = flow.kubectl("logs", "-n", namespace, warm_pod["metadata"]["name"], "-c", "fetch").stdout
        assert "2 from the node cache" in log, log
        assert len(list((cache / "objects").iterdir())) == 2
        print(f"200 MiB model folder at 100 MiB/s, pod apply->Ready: without the node cache {without:.1f}s (fetch "
              f"{fetch_seconds(pod):.0f}s), cold cache {cold:.1f}s (fetch {fetch_seconds(cold_pod):.0f}s), "
              f"a second pod from the cache {warm:.1f}s (fetch {fetch_seconds(warm_pod):.0f}s)")
        assert relay.received < 2 * 212 * 1024 * 1024 + 1024 * 1024  # twice (uncached, cold), not three times
    finally:
        operator.stop()
        relay.close()
        flow.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
