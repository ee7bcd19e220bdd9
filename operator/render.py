"""Pure rendering: an InferenceService spec becomes the dicts of its children. No I/O, no clock, no randomness.

Children of an InferenceService NAME: a Deployment NAME running ``kubeinfer serve``, a ClusterIP Service NAME,
a headless Service NAME-pods (clients balance gRPC per pod: a ClusterIP pins one HTTP/2 connection to one pod),
an HPA NAME when ``autoscaling`` is set (a KEDA ScaledObject NAME instead with ``autoscaling.engine: keda``) and a
PodDisruptionBudget NAME when more than one replica may run.
Each carries an owner reference to the InferenceService, so the cluster's garbage collector removes it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeinfer.operator.render_fetch import FETCH_ROOT, Download, NodeCache, fetch_containers
from kubeinfer.operator.runtime_choice import RuntimeChoice, choose_runtime
from kubeinfer.operator.scaling import SCALING_METRICS
from kubeinfer.operator.spec import (
    API_VERSION,
    DEFAULT_RESOURCES,
    DEFAULT_RUNTIME_CPU_IMAGE,
    DEFAULT_RUNTIME_IMAGE,
    KIND,
    ServiceSpec,
    Uri,
)

GRPC_PORT = 8001
HTTP_PORT = 8080
RUNTIME_CONTAINER = "runtime"
EXPORT_CONTAINER = "export"
PVC_ROOT = "/kubeinfer/pvc"
EXPORT_ROOT = "/kubeinfer/exported"
EXPORTED_MODEL = f"{EXPORT_ROOT}/model.onnx"
RUN_AS = 65532  # the distroless "nonroot" uid; the image's files are readable by it
# The runtime's drain on SIGTERM: SHUTDOWN_DELAY seconds reporting NOT_SERVING while still serving (endpoints and
# load balancers stop routing), then GRACE_PERIOD seconds for in-flight calls; it exits within their sum plus a
# second. The kubelet's SIGKILL must come later than that: TERMINATION_GRACE adds a margin.
# The delay outlasts DNS_TTL: a balancing client (Client.for_service) learns the pods of its headless Service from
# DNS answers that CoreDNS may cache that long, and when a rollout replaces every pod it knows, it must find one of
# the new pods before the last old one stops taking calls (with 5 s, such a client lost every call for the rest
# of those 30 s on the real node).
DNS_TTL = 30  # CoreDNS's usual `ttl 30` and `cache 30` for cluster names
SHUTDOWN_DELAY = DNS_TTL + 5
GRACE_PERIOD = 20
TERMINATION_GRACE = SHUTDOWN_DELAY + GRACE_PERIOD + 5
# The startup probe: every STARTUP_PERIOD seconds, for up to STARTUP_SECONDS (a gallery built at start may take long).
STARTUP_PERIOD = 1
STARTUP_SECONDS = 600
# Balancing clients (Client.for_service) resolve the headless Service again only when a connection closes: a
# connection age makes them find the pods a scale-up adds within this many seconds.
MAX_CONNECTION_AGE = 30

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_LABEL = "kubeinfer.io/inferenceservice"
REVISION_LABEL = "kubeinfer.io/revision"  # a rollout's revision of the pods (operator/render_rollout.py)
RUNTIME_NAME = "kubeinfer-runtime"
SCALED_OBJECT_API_VERSION = "keda.sh/v1alpha1"  # KEDA's ScaledObject, for autoscaling.engine keda
MANAGER = "kubeinfer-operator"

# Fields a spec change can remove, or a hand edit can add, that the rendered object never holds. A JSON merge patch
# keeps what it does not mention, so these are sent as null when the desired object lacks them (lists such as
# containers are replaced whole by a merge patch). A Deployment is never rendered paused: `paused: true` set by hand
# would hold every later rollout back, and the API server omits `paused: false`, so it is removed instead.
PRUNABLE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": (
        ("spec", "paused"),
        ("spec", "template", "spec", "initContainers"),
        ("spec", "template", "spec", "serviceAccountName"),
        ("spec", "template", "spec", "serviceAccount"),  # the deprecated alias the API server fills in
        ("spec", "template", "spec", "nodeSelector"),
        ("spec", "template", "spec", "tolerations"),
        ("spec", "template", "metadata", "labels", REVISION_LABEL),  # a rollout removed from the spec
    ),
}
# Maps whose every key matters (a selector with an extra key selects nothing): keys the desired object lacks
# are removed (sent as null), where elsewhere extra keys are left to whoever added them.
EXACT_MAPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": (("spec", "template", "spec", "nodeSelector"),),
    "Service": (("spec", "selector"),),
    "PodDisruptionBudget": (("spec", "selector", "matchLabels"),),
}


@dataclass(frozen=True)
class RuntimeDefaults:
    """What the operator fills in where a spec says nothing: its two runtime images (--runtime-gpu-image, the one
    with torch, and --runtime-cpu-image; ``runtime_choice`` picks per spec) and --default-resources."""

    image: str = DEFAULT_RUNTIME_IMAGE
    cpu_image: str = DEFAULT_RUNTIME_CPU_IMAGE
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_RESOURCES))
    node_cache: NodeCache | None = None  # --node-cache-path: s3:// and gs:// objects cached on each node

    @classmethod
    def single(cls, image: str) -> RuntimeDefaults:
        """One image for every spec (it holds torch and decides at start, as before the cpu image existed)."""
        return cls(image=image, cpu_image=image)

    def runtime(self, spec: ServiceSpec) -> RuntimeChoice:
        """The image and engine that serve ``spec``."""
        return choose_runtime(spec, self.cpu_image, self.image)


@dataclass(frozen=True)
class Owner:
    """The InferenceService that owns the children (its uid makes the owner reference valid)."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class ChildRef:
    """Identifies one child: enough to get, create, patch or delete it."""

    api_version: str
    kind: str
    name: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


@dataclass(frozen=True)
class Children:
    """What should exist (``present``) and what must not (``absent``) for one InferenceService."""

    present: list[dict[str, Any]]
    absent: list[ChildRef]
    # Children neither rendered nor to be deleted (a rollout's previous stable Deployment while it retires): any
    # other Deployment or Service the InferenceService owns and ``present`` lacks is deleted.
    kept: frozenset[tuple[str, str]] = frozenset()


def headless_name(name: str) -> str:
    return f"{name}-pods"


def selector_labels(name: str) -> dict[str, str]:
    """The immutable Deployment selector and the Services' selector: only this InferenceService's pods."""
    return {NAME_LABEL: RUNTIME_NAME, OWNER_LABEL: name}


def selector_string(name: str) -> str:
    return ",".join(f"{key}={value}" for key, value in selector_labels(name).items())


def common_labels(name: str) -> dict[str, str]:
    return {NAME_LABEL: RUNTIME_NAME, INSTANCE_LABEL: name, MANAGED_BY_LABEL: MANAGER, OWNER_LABEL: name}


def endpoint(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc:{GRPC_PORT}"


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def _metadata(owner: Owner, name: str | None = None) -> dict[str, Any]:
    return {"name": name or owner.name, "namespace": owner.namespace, "labels": common_labels(owner.name),
            "ownerReferences": [owner_reference(owner)]}


@dataclass(frozen=True)
class _Files:
    """Where each URI appears inside the runtime container, and the volumes that make it appear there."""

    paths: dict[str, str]  # role -> path in the container
    claims: list[str]  # claim names in order of first use; volume i is "pvc-i"
    downloads: list[Download]  # "DEST=URL" items for `kubeinfer fetch`


def _plan_files(spec: ServiceSpec) -> _Files:
    paths: dict[str, str] = {}
    claims: list[str] = []
    downloads: list[Download] = []
    for role, uri in spec.uris():
        paths[role] = _place(role, uri, claims, downloads)
    return _Files(paths, claims, downloads)


def _place(role: str, uri: Uri, claims: list[str], downloads: list[Download]) -> str:
    if uri.scheme == "pvc":
        assert uri.claim is not None
        if uri.claim not in claims:
            claims.append(uri.claim)
        return f"{PVC_ROOT}/{uri.claim}/{uri.path}"
    if uri.is_download:
        if role == "base-data" or uri.is_folder:  # a folder: an archive unpacked, or a prefix's objects, in it
            downloads.append(Download(f"{role}/={uri.raw}", uri))
            return f"{FETCH_ROOT}/{role}/{uri.basename}" if uri.file else f"{FETCH_ROOT}/{role}"
        downloads.append(Download(f"{role}/{uri.basename}={uri.raw}", uri))
        return f"{FETCH_ROOT}/{role}/{uri.basename}"
    return uri.path


def runtime_args(spec: ServiceSpec, name: str, paths: dict[str, str]) -> list[str]:
    """The `kubeinfer serve` flags for this spec: only those the task uses, so `kubectl describe` stays readable."""
    args = ["--task", spec.task, "--model-name", name]
    if "model" in paths:
        args += ["--model", paths["model"]]
    if "labels" in paths:
        args += ["--labels", paths["labels"]]
    if spec.task in ("detect", "video"):
        args += ["--confidence", _num(spec.confidence), "--iou", _num(spec.iou)]
    if spec.task in ("classify", "stream-classify", "recognize"):
        args += ["--top-k", str(spec.top_k)]
    if spec.task == "stream-classify" and spec.window is not None:
        args += ["--window", str(spec.window)]
    if spec.task == "recognize":
        args += ["--similarity-threshold", _num(spec.similarity)]
        if "embeddings" in paths:
            args += ["--embeddings", paths["embeddings"]]
        if "base-data" in paths:
            args += ["--base-data", paths["base-data"], "--gallery-batch-size", str(spec.gallery_batch_size)]
    args += ["--max-batch-size", str(spec.max_batch_size), "--max-batch-delay-ms", _num(spec.max_delay_ms),
             "--max-message-bytes", str(spec.max_message_bytes), "--workers", str(spec.workers)]
    if spec.instances is not None:
        args += ["--model-instances", str(spec.instances)]
    if spec.frontends > 1:
        args += ["--frontends", str(spec.frontends)]
    if spec.gpus > 0:
        args += ["--device", "cuda"]
    args += ["--shutdown-delay", str(SHUTDOWN_DELAY), "--grace-period", str(GRACE_PERIOD),
             "--grpc-max-connection-age", str(MAX_CONNECTION_AGE)]
    args += ["--host", "0.0.0.0", "--grpc-port", str(GRPC_PORT), "--http-port", str(HTTP_PORT)]
    return args


def _num(value: float) -> str:
    """Shortest exact text of a number: 0.5 -> '0.5', 2.0 -> '2'."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


# Writable places for a read-only root filesystem: libraries write caches under HOME and their config dirs.
_RUNTIME_ENV = [
    {"name": "HOME", "value": "/tmp"},
    {"name": "YOLO_CONFIG_DIR", "value": "/tmp/ultralytics"},
    {"name": "YOLO_OFFLINE", "value": "1"},
    {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
]


def _export_container(image: str, model: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The init container that exports a .pt detector (``model``, where the runtime would read it) to ONNX for the
    cpu image, from the image that has torch: the runtime's read-only mounts, the export folder writable."""
    return {
        "name": EXPORT_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["kubeinfer", "export"],
        "args": [model, "--out", EXPORTED_MODEL],
        "env": list(_RUNTIME_ENV),
        # torch and ultralytics load, then the model is traced once: more than fetching, bounded all the same
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "securityContext": _security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [*(dict(m) for m in mounts), {"name": "exported", "mountPath": EXPORT_ROOT}],
    }


def _probe(period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {"grpc": {"port": GRPC_PORT}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": timeout}


def _resources(spec: ServiceSpec, defaults: RuntimeDefaults) -> dict[str, Any]:
    chosen = spec.resources or defaults.resources
    resources = {kind: dict(values) for kind, values in chosen.items() if values}
    if spec.gpus > 0:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = spec.gpus
    return resources


def _tolerations(spec: ServiceSpec) -> list[dict[str, Any]]:
    tolerations = [dict(t) for t in spec.tolerations]
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    if spec.gpus > 0 and not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
        tolerations.append(gpu_taint)  # GPU nodes are commonly tainted so only GPU workloads land there
    return tolerations


def render_deployment(owner: Owner, spec: ServiceSpec, defaults: RuntimeDefaults | str) -> dict[str, Any]:
    """The runtime Deployment: hardened pod, gRPC probes, scrape annotations, volumes for every URI; the image
    ``defaults.runtime`` picks, and an init container that exports a .pt detector to ONNX first where the cpu image
    serves it.

    ``defaults`` may be just one image for every spec (then the built-in default resources apply).
    """
    defaults = RuntimeDefaults.single(defaults) if isinstance(defaults, str) else defaults
    files = _plan_files(spec)
    choice = defaults.runtime(spec)
    image = choice.image
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if spec.frontends > 1:  # the frontends' image slots: a container's own /dev/shm is often 64 MiB
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    for index, claim in enumerate(files.claims):
        volumes.append({"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"pvc-{index}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    init_containers: list[dict[str, Any]] = []
    if files.downloads:
        volumes.append({"name": "fetched", "emptyDir": {}})
        mounts.append({"name": "fetched", "mountPath": FETCH_ROOT, "readOnly": True})
        fetchers, secret_volumes = fetch_containers(files.downloads, image, _security_context(), defaults.node_cache)
        init_containers += fetchers
        volumes += secret_volumes  # mounted by the fetch containers alone
    paths = dict(files.paths)
    if choice.export_image:
        init_containers.append(_export_container(choice.export_image, paths["model"], mounts))
        volumes.append({"name": "exported", "emptyDir": {}})
        mounts.append({"name": "exported", "mountPath": EXPORT_ROOT, "readOnly": True})
        paths["model"] = EXPORTED_MODEL

    container: dict[str, Any] = {
        "name": RUNTIME_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["kubeinfer", "serve"],
        "args": runtime_args(spec, owner.name, paths),
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": [*_RUNTIME_ENV, *(dict(e) for e in spec.env)],
        "resources": _resources(spec, defaults),
        # Loading a model or building a gallery may take minutes: the startup probe holds liveness back. It asks
        # every second (a health check is cheap), so that a pod is Ready about a second after its model is rather
        # than at the kubelet's next 5 s tick (the kubelet probes readiness at once when startup succeeds); the
        # same 10 minutes in all as before.
        "startupProbe": _probe(period=STARTUP_PERIOD, failures=STARTUP_SECONDS // STARTUP_PERIOD, timeout=1),
        "readinessProbe": _probe(period=5, failures=2, timeout=2),
        "livenessProbe": _probe(period=10, failures=6, timeout=5),
        "securityContext": _security_context(),
        # A crash's last log line becomes the termination message, which status shows as the reason.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the runtime never talks to the API
        "enableServiceLinks": False,  # a Service named kubeinfer-* would inject KUBEINFER_* variables
        "terminationGracePeriodSeconds": TERMINATION_GRACE,  # longer than the runtime's whole drain
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if spec.service_account_name:  # its cloud identity (IRSA, workload identity) reads the model's bucket
        pod_spec["serviceAccountName"] = spec.service_account_name
        # The deprecated alias, which the API server fills in from serviceAccountName: rendered equal, so the live
        # template matches (a missing one would be pruned on every reconciliation and filled in again).
        pod_spec["serviceAccount"] = spec.service_account_name
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    tolerations = _tolerations(spec)
    if tolerations:
        pod_spec["tolerations"] = tolerations

    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(owner.name)},
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": 900,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {
                "labels": common_labels(owner.name),
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(HTTP_PORT),
                                "prometheus.io/path": "/metrics",
                                "kubectl.kubernetes.io/default-container": RUNTIME_CONTAINER},
            },
            "spec": pod_spec,
        },
    }
    if spec.autoscaling is None:  # with an HPA the HPA owns the replica count
        deployment_spec["replicas"] = spec.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(owner), "spec": deployment_spec}


def _service_ports() -> list[dict[str, Any]]:
    return [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
            {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}]


def render_service(owner: Owner) -> dict[str, Any]:
    """ClusterIP Service NAME: the stable endpoint reported in status."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(owner),
            "spec": {"type": "ClusterIP", "selector": selector_labels(owner.name), "ports": _service_ports()}}


def render_headless_service(owner: Owner) -> dict[str, Any]:
    """Headless Service NAME-pods: DNS returns every ready pod, so gRPC clients can balance per request."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(owner, headless_name(owner.name)),
            # Only ready pods are published (publishNotReadyAddresses is false, the default; the API server
            # omits false booleans, so it is not sent: a sent false would never read back as applied).
            "spec": {"clusterIP": "None", "selector": selector_labels(owner.name), "ports": _service_ports()}}


def render_hpa(owner: Owner, spec: ServiceSpec) -> dict[str, Any]:
    """An autoscaling/v2 HPA: on CPU use, or on a Pods metric of the custom metrics API (the chart's adapter rules
    serve it from Prometheus) averaged over the replicas."""
    scaling = spec.autoscaling
    assert scaling is not None
    if scaling.metric == "cpu":
        metric: dict[str, Any] = {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": scaling.target_cpu_utilization}}}
    else:
        assert scaling.target is not None
        target = {"type": "AverageValue", "averageValue": quantity(scaling.target)}
        metric = {"type": "Pods", "pods": {"metric": {"name": SCALING_METRICS[scaling.metric].name}, "target": target}}
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _metadata(owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [metric],
        },
    }


def render_scaled_object(owner: Owner, spec: ServiceSpec) -> dict[str, Any]:
    """A KEDA ScaledObject with one prometheus trigger; KEDA makes (and owns) the HPA, so none of ours exists."""
    scaling = spec.autoscaling
    assert scaling is not None and scaling.target is not None and scaling.prometheus_address is not None
    metric = SCALING_METRICS[scaling.metric]
    return {
        "apiVersion": SCALED_OBJECT_API_VERSION, "kind": "ScaledObject", "metadata": _metadata(owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "triggers": [{"type": "prometheus", "metricType": metric.keda_metric_type, "metadata": {
                "serverAddress": scaling.prometheus_address,
                "query": metric.keda_query(owner.namespace, owner.name),
                "threshold": _num(scaling.target)}}],
        },
    }


def quantity(value: float) -> str:
    """A positive number as the API server writes the quantity back (canonical form), so a re-read object equals
    the rendered one: 4 -> '4', 0.25 -> '250m', 1.5 -> '1500m', 4000 -> '4k', 0.0001 -> '100u'."""
    nano = round(value * 1_000_000_000)
    if nano <= 0:
        raise ValueError(f"a target quantity must be positive, got {value}")
    for suffix, scale in (("E", 10**27), ("P", 10**24), ("T", 10**21), ("G", 10**18), ("M", 10**15), ("k", 10**12),
                          ("", 10**9), ("m", 10**6), ("u", 10**3)):
        if nano % scale == 0:
            return f"{nano // scale}{suffix}"
    return f"{nano}n"


def render_pdb(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(owner),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner.name)}}}


def child_refs(name: str) -> list[ChildRef]:
    """Every child an InferenceService can have, present or not."""
    return [ChildRef("apps/v1", "Deployment", name), ChildRef("v1", "Service", name),
            ChildRef("v1", "Service", headless_name(name)),
            ChildRef("autoscaling/v2", "HorizontalPodAutoscaler", name),
            ChildRef("policy/v1", "PodDisruptionBudget", name),
            ChildRef(SCALED_OBJECT_API_VERSION, "ScaledObject", name)]


def render_children(owner: Owner, spec: ServiceSpec, defaults: RuntimeDefaults | str) -> Children:
    """All children for the spec, plus the optional ones that must go (HPA, ScaledObject, PDB) when the spec no
    longer wants them."""
    present = [render_deployment(owner, spec, defaults), render_service(owner), render_headless_service(owner)]
    keda = spec.autoscaling is not None and spec.autoscaling.engine == "keda"
    if spec.autoscaling is not None and not keda:
        present.append(render_hpa(owner, spec))
    if spec.max_replicas > 1:
        present.append(render_pdb(owner))
    if keda:  # last: on a cluster without KEDA's CRD only this one fails, after everything else is in place
        present.append(render_scaled_object(owner, spec))
    wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in present}
    absent = [ref for ref in child_refs(owner.name) if (ref.kind, ref.name) not in wanted]
    return Children(present=present, absent=absent)
