"""The user flows of issue #29 on the real node: what the end-to-end tests share.

A user's path, on a cluster with the real node ``real-0`` (tests/real_node_support.py): the images built by
scripts/images.py and loaded into the node's containerd, ``helm install`` of the chart (the operator then runs as
a pod from ``localhost/kubeinfer-operator:dev`` with the chart's ServiceAccount), InferenceServices made from
the examples, models downloaded by the pods' ``kubeinfer fetch`` init container from a server this module runs on
the node's bridge address (10.85.0.1 only, where pods reach it) or mounted from a PersistentVolume on a host
folder, and clients through the Services (kube-proxy) and CoreDNS.

Traffic goes only to 10.85.0.1, to pod IPs in 10.85.0.0/24 and to Service IPs that kube-proxy maps to them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import http.server
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import e2e_load
from chart_support import CHART, helm
from cluster_support import ROOT, Api, Kubectl, LocalCluster, new_namespace
from localcluster import models_claim
from operator_support import EXAMPLES, is_path, load_yaml
from real_node_support import NODE_NAME, condition, need, pod_exec, pods, wait_until
from runtime_support import metric_sum

from kubeinfer.runtime.digests import sha256_of

OPERATOR_IMAGE = "localhost/kubeinfer-operator:dev"
CPU_IMAGE = "localhost/kubeinfer-runtime:cpu"
GPU_IMAGE = "localhost/kubeinfer-runtime:gpu"  # never built in CI: only kwok's (fake) GPU pods name it
E2E = ROOT / ".cache" / "e2e"
IMAGE_TOOLS = ("buildah", "podman", "runc", "debootstrap")
# Small requests, so that every example and three replicas fit the node's 2 cores beside the control plane.
SMALL = {"requests": {"cpu": "50m", "memory": "192Mi"}, "limits": {"memory": "1Gi"}}
RUNTIME_SELECTOR = "app.kubernetes.io/name=kubeinfer-runtime"
GRPC_PORT = 8001
METRICS_PORT = 8080


# -- figures ----------------------------------------------------------------------------------------------------
FIGURES: list[str] = []  # what the tests measured; tests/conftest.py prints them at the end of the run
FIGURES_LOG = E2E / "figures.log"


def record(what: str, **values: Any) -> None:
    """A measured figure: kept for the run's summary and appended to .cache/e2e/figures.log."""
    line = f"{what}: " + ", ".join(f"{key}={value}" for key, value in values.items())
    FIGURES.append(line)
    print(f"e2e: {line}", flush=True)
    FIGURES_LOG.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES_LOG.open("a") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


# -- images -----------------------------------------------------------------------------------------------------
def build_images() -> float:
    """The operator and cpu runtime images, as `make images` builds them (cached layers: about a minute after
    tests/test_images.py built them); the seconds it took."""
    missing = [tool for tool in IMAGE_TOOLS if shutil.which(tool) is None]
    if missing:
        need(f"missing {', '.join(missing)} (bash scripts/install-test-tools.sh image_tools)")
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "images.py"), "--only", "operator", "--only",
                           "runtime-cpu", "--no-run"], capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, f"scripts/images.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return time.monotonic() - began


# -- models -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFiles:
    """The folder the HTTP server serves and the folder behind the ``models`` PersistentVolume."""

    served: Path
    volume: Path

    def sha256(self, served: str) -> str:
        return sha256_of(self.served / served)


def _readable_by_all(path: Path) -> None:
    """Folders 0755 and files 0644 below ``path``; its parents must let uid 65532 through."""
    for parent in path.parents:
        assert parent.stat().st_mode & 0o001, f"{parent} is not searchable by others: the runtime (uid 65532) " \
                                              "could not reach the models volume"
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def prepare_models() -> ModelFiles:
    """Every model of the examples on CPU, from the suite's cached models (trained or exported on first use):
    the demo detector's ONNX export, the colour classifier (ONNX) with its labels, the logo encoder (ONNX), a brand
    gallery built from it with `kubeinfer gallery build`, and a base-data archive."""
    from classify_support import colour_models, write_labels
    from recognize_support import ALL_BRANDS, logo_encoders, write_base_data

    from kubeinfer.runtime.demo_models import train_detector
    from kubeinfer.runtime.models.backend import onnx_export

    shutil.rmtree(E2E / "models", ignore_errors=True)
    served, volume = E2E / "models" / "served", E2E / "models" / "volume"
    detector = onnx_export(train_detector(ROOT / ".cache" / "models" / "detector.pt"), ROOT / ".cache" / "models",
                           None)
    _copy(detector, served / "detector.onnx")
    _copy(detector, volume / "detector" / "detector.onnx")
    colour = colour_models().onnx
    for folder in ("colour", "activity"):
        _copy(colour, volume / folder / "classifier.onnx")
        _copy(colour.with_suffix(".json"), volume / folder / "classifier.json")
    write_labels(volume / "colour", "txt")
    write_labels(volume / "activity", "npy-onehot")
    for suffix in (".npy", ".txt"):
        (volume / "activity" / f"labels{suffix}").rename(volume / "activity" / f"labels-onehot{suffix}")
    encoder = logo_encoders().onnx
    for folder in ("brands", "screening"):
        _copy(encoder, volume / folder / "embedder.onnx")
        _copy(encoder.with_suffix(".json"), volume / folder / "embedder.json")
    base_data = write_base_data(E2E / "models" / "base-data", ALL_BRANDS)
    (served / "brands").mkdir(parents=True)
    gallery = subprocess.run([str(Path(sys.executable).parent / "kubeinfer"), "gallery", "build", "--model",
                              str(volume / "brands" / "embedder.onnx"), "--base-data", str(base_data), "--out",
                              str(served / "brands" / "gallery.npz")], capture_output=True, text=True, timeout=300)
    assert gallery.returncode == 0, gallery.stderr
    (served / "screening").mkdir(parents=True)
    with tarfile.open(served / "screening" / "base-data.tar.gz", "w:gz") as archive:
        archive.add(base_data, arcname="base-data")
    _readable_by_all(E2E / "models")
    return ModelFiles(served, volume)


class ModelServer:
    """The model files over plain HTTP on the node's bridge address only (pods reach the host there; nothing
    else on the machine's other addresses listens), recording each request: who fetched what, and the answer."""

    def __init__(self, folder: Path, address: str) -> None:
        self.requests: list[tuple[str, str, int]] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                log.append((self.client_address[0], self.path, int(code) if str(code).isdigit() else 0))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer((address, 0), handler)
        self.server.daemon_threads = True
        self.address = address
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}/{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def add_models_volume(api: Api, namespace: str, folder: Path) -> None:
    """The claim ``models`` the examples mount (pvc://models/...), bound to a PersistentVolume on ``folder``
    (hostPath: the kubelet bind-mounts it read-only into the runtime's pods)."""
    paths = {"PersistentVolume": "/api/v1/persistentvolumes",
             "PersistentVolumeClaim": f"/api/v1/namespaces/{namespace}/persistentvolumeclaims"}
    for obj in models_claim(namespace, folder):
        api.create(paths[obj["kind"]], obj)
    claim = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/models"
    wait_until(lambda: (api.get(claim) or {}).get("status", {}).get("phase") == "Bound", "the models claim bound")


# -- the chart ---------------------------------------------------------------------------------------------------
@dataclass
class Chart:
    """A release of charts/kubeinfer with the local images; the operator runs as its pod on real-0."""

    release: str
    namespace: str
    output: str
    seconds: float

    @property
    def operator_selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release}"


def chart_values(release: str) -> dict[str, Any]:
    """The local images (IfNotPresent: containerd has them, there is no registry) and small runtime defaults."""
    cpu_repo, cpu_tag = CPU_IMAGE.rsplit(":", 1)
    gpu_repo, gpu_tag = GPU_IMAGE.rsplit(":", 1)
    op_repo, op_tag = OPERATOR_IMAGE.rsplit(":", 1)
    return {
        "operator": {"image": {"repository": op_repo, "tag": op_tag, "pullPolicy": "IfNotPresent"},
                     "logFormat": "plain"},
        "runtime": {"images": {"cpu": {"repository": cpu_repo, "tag": cpu_tag},
                               "gpu": {"repository": gpu_repo, "tag": gpu_tag}},
                    "defaultResources": SMALL},
    }


def install_chart(cluster: LocalCluster, release: str, namespace: str, folder: Path) -> Chart:
    """``helm install --wait``: done when the operator's pod is Ready by its kubelet's readiness probe."""
    values = folder / f"{release}-values.json"
    values.write_text(json.dumps(chart_values(release)))
    began = time.monotonic()
    done = helm("install", release, str(CHART), "--namespace", namespace, "--create-namespace", "--values",
                str(values), "--wait", "--timeout", "180s", "--kubeconfig", str(cluster.kubeconfig))
    return Chart(release, namespace, done.stdout, time.monotonic() - began)


def uninstall_chart(cluster: LocalCluster, chart: Chart) -> None:
    helm("uninstall", chart.release, "--namespace", chart.namespace, "--wait", "--timeout", "60s", "--kubeconfig",
         str(cluster.kubeconfig), check=False)


# -- InferenceServices from the examples ---------------------------------------------------------------------------
def example(file: str, name: str | None = None, **spec: Any) -> dict[str, Any]:
    """An example of examples/ with ``spec`` changes (a None value removes the key) and the small resources."""
    doc = load_yaml(EXAMPLES / file)
    if name:
        doc["metadata"]["name"] = name
    doc["spec"]["resources"] = copy.deepcopy(SMALL)
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


def detect_on_cpu(model_url: str, replicas: int = 1, name: str = "detect-cpu") -> dict[str, Any]:
    """The GPU detection example without its GPU: the demo detector's ONNX export, fetched over HTTP."""
    return example("yolo-detection-gpu.yaml", name, gpus=None, nodeSelector=None, replicas=replicas,
                   model={"uri": model_url})


def cpu_examples(server: ModelServer, files: ModelFiles) -> dict[str, dict[str, Any]]:
    """Every example that fits a CPU node but the detector (``detect_on_cpu``), with this cluster's models:
    downloads from ``server`` (checked by sha256) and files on the ``models`` claim."""
    gallery = "brands/gallery.npz"
    classify = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": "classify"},
                "spec": {"task": "classify", "model": {"uri": "pvc://models/colour/classifier.onnx"},
                         "labels": {"uri": "pvc://models/colour/labels.txt"}, "topK": 3, "replicas": 1,
                         "resources": copy.deepcopy(SMALL)}}
    return {
        "classify": classify,
        "stream-classification": example(
            "stream-classification.yaml", model={"uri": "pvc://models/activity/classifier.onnx"},
            labels={"uri": "pvc://models/activity/labels-onehot.npy"}, replicas=3),
        "brand-recognition": example(
            "brand-recognition.yaml", model={"uri": "pvc://models/brands/embedder.onnx"},
            embeddings={"uri": f"{server.url(gallery)}#sha256={files.sha256(gallery)}"},
            autoscaling=None, replicas=1),  # autoscaling for real: tests/test_real_node_disruptions.py
        "classification-clustering": example(
            "classification-clustering.yaml", model={"uri": "pvc://models/screening/embedder.onnx"},
            baseData={"uri": server.url("screening/base-data.tar.gz"), "batchSize": 64}),
        "video-processing": example("video-processing.yaml", model={"uri": "pvc://models/detector/detector.onnx"}),
    }


def apply(kubectl: Kubectl, namespace: str, *objects: dict[str, Any]) -> None:
    """``kubectl apply -f -`` as a user applies a file."""
    kubectl.apply({"apiVersion": "v1", "kind": "List", "items": list(objects)}, "-n", namespace)


def status(api: Api, namespace: str, name: str) -> dict[str, Any]:
    return ((api.get(is_path(namespace, name)) or {}).get("status")) or {}


def wait_ready(api: Api, namespace: str, name: str, replicas: int | None = None, timeout: float = 240.0
               ) -> dict[str, Any]:
    """The InferenceService's status once the operator reports it Ready (with ``replicas`` ready ones)."""
    def ready() -> dict[str, Any] | None:
        found = status(api, namespace, name)
        if found.get("phase") != "Ready":
            return None
        if replicas is not None and found.get("readyReplicas") != replicas:
            return None
        return found

    return wait_until(ready, f"{namespace}/{name} Ready", timeout, 0.5)


def runtime_pods(kubectl: Kubectl, namespace: str, name: str, ready_only: bool = True) -> list[dict[str, Any]]:
    found = pods(kubectl, namespace, f"kubeinfer.io/inferenceservice={name}")
    live = [p for p in found if not p["metadata"].get("deletionTimestamp")]
    return [p for p in live if condition(p, "Ready") == "True"] if ready_only else live


def wait_pods(kubectl: Kubectl, namespace: str, name: str, count: int, timeout: float = 240.0
              ) -> list[dict[str, Any]]:
    """Exactly ``count`` pods of the InferenceService, none terminating, all Ready."""
    def settled() -> list[dict[str, Any]]:
        every = pods(kubectl, namespace, f"kubeinfer.io/inferenceservice={name}")
        ready = runtime_pods(kubectl, namespace, name)
        return ready if len(every) == len(ready) == count else []

    return wait_until(settled, f"{count} ready pods of {namespace}/{name}", timeout, 0.5)


def service_ip(kubectl: Kubectl, namespace: str, name: str) -> str:
    return kubectl.json("get", "service", "-n", namespace, name)["spec"]["clusterIP"]


# -- metrics ------------------------------------------------------------------------------------------------------
def scrape(pod_ip: str) -> str:
    """A runtime pod's /metrics, straight from its IP on the pod network."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{pod_ip}:{METRICS_PORT}/metrics", timeout=5) as answer:
        return answer.read().decode()


def answered(pod_ips: list[str], rpc: str) -> dict[str, float]:
    """Successful calls of ``rpc`` each pod counted (kubeinfer_requests_total{code="OK"})."""
    return {ip: metric_sum(scrape(ip), "kubeinfer_requests_total", rpc=rpc, code="OK") for ip in pod_ips}


# -- timing pods --------------------------------------------------------------------------------------------------
@dataclass
class PodWatch:
    """The API server's watch of a namespace's pods, timed on arrival: when each pod was first seen (its creation)
    and when it was first seen Ready."""

    created: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)
    existing: set[str] = field(default_factory=set)  # pods there before the watch began

    def new_ready(self) -> dict[str, float]:
        """Seconds from created to Ready of each pod created while watching that became Ready."""
        return {name: self.ready[name] - self.created[name] for name in self.created
                if name not in self.existing and name in self.ready}


@contextlib.contextmanager
def watching_pods(kubectl: Kubectl, namespace: str, selector: str) -> Iterator[PodWatch]:
    """``kubectl get pods --watch`` of the pods ``selector`` picks, each event timed as it arrives; stopped when the
    block ends."""
    record = PodWatch()
    process = subprocess.Popen(["kubectl", "get", "pods", "-n", namespace, "-l", selector, "--watch",
                                "--output-watch-events", "-o", "json"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=kubectl.env)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:  # one event per line
            now = time.monotonic()
            with contextlib.suppress(ValueError, KeyError):
                event = json.loads(line)
                pod = event["object"]
                name = pod["metadata"]["name"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    record.created.setdefault(name, now)
                    if pod["spec"].get("nodeName"):
                        record.nodes[name] = pod["spec"]["nodeName"]
                    if condition(pod, "Ready") == "True":
                        record.ready.setdefault(name, now)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1.0)  # the watch's initial list of existing pods comes first
    record.existing = set(record.created)
    try:
        yield record
    finally:
        process.terminate()
        process.wait(10)
        reader.join(5)


# -- a client pod -------------------------------------------------------------------------------------------------
def client_pod(name: str = "client") -> dict[str, Any]:
    """A pod of the cpu runtime image that only waits: the tests run Python in it with ``kubectl exec``."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"automountServiceAccountToken": False, "enableServiceLinks": False,
                     "terminationGracePeriodSeconds": 1,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
                     "containers": [{
                         "name": "client", "image": CPU_IMAGE, "imagePullPolicy": "IfNotPresent",
                         "command": ["python", "-c", "import time; time.sleep(3600)"],
                         "env": [{"name": "HOME", "value": "/tmp"}],
                         "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                                       "limits": {"memory": "512Mi"}},
                         "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}},
                         "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                     "volumes": [{"name": "tmp", "emptyDir": {}}]}}


LOAD_SCRIPT = Path(e2e_load.__file__)


def in_pod(kubectl: Kubectl, namespace: str, pod: str, *args: str) -> subprocess.Popen[str]:
    """tests/e2e_load.py run by the pod's Python (``kubectl exec -i ... python - ARGS``, the script on stdin)."""
    process = subprocess.Popen(["kubectl", "exec", "-i", "-n", namespace, pod, "--", "python", "-", *args],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=kubectl.env)
    assert process.stdin is not None
    process.stdin.write(LOAD_SCRIPT.read_text())
    process.stdin.close()
    process.stdin = None  # written whole: communicate() has nothing more to send
    return process


def pod_result(process: subprocess.Popen[str], timeout: float) -> str:
    """The last line the pod's script printed (its JSON report)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the script in the pod ran past {timeout:.0f}s: {err[-2000:]}") from None
    assert process.returncode == 0, f"the script in the pod failed ({process.returncode}):\n{err[-3000:]}"
    return out.strip().splitlines()[-1]


def stop_pod_load(kubectl: Kubectl, namespace: str, pod: str) -> None:
    pod_exec(kubectl, namespace, pod, "touch", e2e_load.STOP_FILE)


def steady_load(stage: Stage, rate: float, seconds: float, service: str = "detect-cpu"
                ) -> tuple[e2e_load.Background, subprocess.Popen[str]]:
    """``rate`` Detects a second through the ClusterIP Service from the host (kube-proxy pins its one connection
    to a pod) and ``rate`` through ``Client.for_service`` from the pod ``client`` (CoreDNS, the headless Service),
    for at most ``seconds``; ``stop_load`` ends both and returns their reports."""
    image = e2e_load.detect_image()
    client = stage.detect_client(service, timeout=10)

    def call() -> None:
        if not client.detect([image])[0].detections:
            raise AssertionError("no detection")

    host = e2e_load.Background(call, rate, seconds, on_exit=client.close)
    inside = in_pod(stage.kubectl, stage.namespace, "client", "detect-load", service, stage.namespace,
                    "--rate", str(rate), "--seconds", str(seconds))
    return host, inside


def stop_load(stage: Stage, host: e2e_load.Background, inside: subprocess.Popen[str]
              ) -> tuple[e2e_load.LoadReport, e2e_load.LoadReport]:
    host.stop()
    stop_pod_load(stage.kubectl, stage.namespace, "client")
    return host.join(), e2e_load.LoadReport.from_json(pod_result(inside, 120))


# -- the namespace of a module ------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One module's cluster, chart, model files and server, and its namespace with the ``models`` claim."""

    cluster: LocalCluster
    api: Api
    kubectl: Kubectl
    chart: Chart
    files: ModelFiles
    server: ModelServer
    namespace: str
    timings: dict[str, float] = field(default_factory=dict)

    def detect_client(self, name: str = "detect-cpu", **options: Any) -> Any:
        """A ``Client`` of the InferenceService's ClusterIP Service, from the host (kube-proxy picks the pod)."""
        from kubeinfer.clients import Client

        return Client(f"{service_ip(self.kubectl, self.namespace, name)}:{GRPC_PORT}", **options)


@contextlib.contextmanager
def staged(cluster: LocalCluster, prefix: str, folder: Path) -> Iterator[Stage]:
    """Images built and loaded, models prepared and served, the chart installed, a namespace with ``models``;
    all of it undone afterwards (unless the cluster is gone already)."""
    timings: dict[str, float] = {}
    began = time.monotonic()
    timings["images_build_s"] = build_images()
    for image in (OPERATOR_IMAGE, CPU_IMAGE):
        loaded = cluster.node.load_image(image)
        timings[f"load {image}_s"] = loaded["seconds"]
    step = time.monotonic()
    files = prepare_models()
    timings["models_s"] = time.monotonic() - step
    server = ModelServer(files.served, cluster.node.address)
    api = Api(cluster)
    kubectl = Kubectl(cluster.kubeconfig, cluster.state / "kubectl-cache")
    chart: Chart | None = None
    namespace = ""
    try:
        chart = install_chart(cluster, f"kubeinfer-{prefix}", f"kubeinfer-{prefix}-system", folder)
        timings["helm_install_s"] = chart.seconds
        namespace = new_namespace(api, prefix)
        add_models_volume(api, namespace, files.volume)
        timings["staged_s"] = time.monotonic() - began
        yield Stage(cluster, api, kubectl, chart, files, server, namespace, timings)
    finally:
        server.close()
        if cluster.alive():
            if namespace:
                kubectl("delete", "namespace", namespace, "--wait=false", check=False)
                kubectl("delete", "pv", f"models-{namespace}", "--wait=false", check=False)
            if chart is not None:
                uninstall_chart(cluster, chart)
                kubectl("delete", "namespace", chart.namespace, "--wait=false", check=False)


def first_answer(call: Callable[[], Any], timeout: float, interval: float = 0.2) -> float:
    """Seconds until ``call()`` first returns without raising (it is retried until then)."""
    began = time.monotonic()
    deadline = began + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            call()
            return time.monotonic() - began
        except Exception as exc:  # not answering yet, whatever the reason
            last = exc
            time.sleep(interval)
    raise AssertionError(f"no answer in {timeout:.0f}s: {last!r}")


__all__ = ["CPU_IMAGE", "FIGURES", "GPU_IMAGE", "GRPC_PORT", "NODE_NAME", "OPERATOR_IMAGE", "Chart", "ModelFiles",
           "ModelServer", "PodWatch", "Stage", "answered", "apply", "build_images", "client_pod",
           "cpu_examples", "detect_on_cpu", "example", "first_answer", "in_pod", "install_chart", "pod_exec",
           "pod_result", "prepare_models", "record", "runtime_pods", "scrape", "service_ip", "staged", "status",
           "steady_load", "stop_load", "stop_pod_load", "wait_pods", "wait_ready", "watching_pods"]
