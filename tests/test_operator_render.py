"""Rendering is pure: every child of every example (and of the edge cases) is a valid Kubernetes object.

Objects are checked against the real Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields
fail) for the oldest supported version (1.28, the chart's kubeVersion) and the newest the library knows. The
runtime's own argument parser reads the rendered args, so a flag the runtime does not have cannot slip in.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from operator_support import EXAMPLE_FILES, load_yaml

from kubeinfer.operator.render import (
    EXPORT_ROOT,
    EXPORTED_MODEL,
    FETCH_ROOT,
    GRPC_PORT,
    HTTP_PORT,
    PVC_ROOT,
    Owner,
    RuntimeDefaults,
    endpoint,
    render_children,
    selector_string,
)
from kubeinfer.operator.spec import SpecError, parse_spec, parse_uri, validate_name
from kubeinfer.runtime import fetch
from kubeinfer.runtime.commands import serve as serve_command

KUBE_VERSIONS = ("1.28", kubernetes_validate.latest_version())  # the chart's kubeVersion, and the newest
OWNER = Owner(name="svc", namespace="team-a", uid="6f1c3f5e-0000-4000-8000-000000000001")
IMAGE = "registry.example.com/kubeinfer:1.2.3"  # the gpu image (torch)
CPU_IMAGE = "registry.example.com/kubeinfer:1.2.3-cpu"
DEFAULTS = RuntimeDefaults(image=IMAGE, cpu_image=CPU_IMAGE)


def validate(obj: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def children(spec: dict[str, Any], owner: Owner = OWNER) -> dict[str, dict[str, Any]]:
    rendered = render_children(owner, parse_spec(spec), DEFAULTS)
    for obj in rendered.present:
        validate(obj)
    return {f"{obj['kind']}/{obj['metadata']['name']}": obj for obj in rendered.present}


def runtime(objs: dict[str, dict[str, Any]], name: str = "svc") -> dict[str, Any]:
    return objs[f"Deployment/{name}"]["spec"]["template"]["spec"]["containers"][0]


def serve_args(args: list[str]) -> argparse.Namespace:
    """Parse with `kubeinfer serve`'s own parser: unknown flags or bad values fail here."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    serve_command.add_arguments(parser)
    return parser.parse_args(args)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_every_example_renders_valid_objects_the_runtime_accepts(path: Path) -> None:
    doc = load_yaml(path)
    owner = Owner(doc["metadata"]["name"], "default", "0b5e7a34-1111-4000-8000-000000000002")
    objs = children(doc["spec"], owner)
    container = runtime(objs, owner.name)
    parsed = serve_args(container["args"])
    assert parsed.task == doc["spec"]["task"]
    assert parsed.model_name == owner.name
    assert (parsed.host, parsed.grpc_port, parsed.http_port) == ("0.0.0.0", GRPC_PORT, HTTP_PORT)
    assert container["command"] == ["kubeinfer", "serve"]
    for obj in objs.values():
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "name": owner.name,
            "uid": owner.uid, "controller": True, "blockOwnerDeletion": True}]
        assert obj["metadata"]["labels"]["kubeinfer.io/inferenceservice"] == owner.name
    assert set(objs) >= {f"Deployment/{owner.name}", f"Service/{owner.name}", f"Service/{owner.name}-pods"}


def test_detect_with_gpus_gets_limits_device_toleration_and_thresholds() -> None:
    objs = children({"task": "detect", "model": {"uri": "pvc://models/yolo/best.pt"}, "gpus": 2,
                     "thresholds": {"confidence": 0.5, "iou": 0.3}, "replicas": 3})
    container = runtime(objs)
    parsed = serve_args(container["args"])
    assert parsed.device == "cuda"
    assert (parsed.confidence, parsed.iou) == (0.5, 0.3)
    assert str(parsed.model) == f"{PVC_ROOT}/models/yolo/best.pt"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    pod = objs["Deployment/svc"]["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert objs["Deployment/svc"]["spec"]["replicas"] == 3
    assert objs["PodDisruptionBudget/svc"]["spec"]["maxUnavailable"] == 1
    assert "HorizontalPodAutoscaler/svc" not in objs


def test_cpu_only_has_no_gpu_limit_device_or_toleration() -> None:
    objs = children({"task": "detect", "model": {"uri": "/models/m.onnx"}})
    container = runtime(objs)
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "--device" not in container["args"]
    assert "tolerations" not in objs["Deployment/svc"]["spec"]["template"]["spec"]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}  # the documented default
    chart_defaults = RuntimeDefaults(IMAGE, resources={"requests": {"cpu": "1"}, "limits": {"memory": "4Gi"}})
    rendered = render_children(OWNER, parse_spec({"task": "detect", "model": {"uri": "/m.pt"}, "gpus": 1}),
                               chart_defaults).present[0]
    validate(rendered)
    assert rendered["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "1"}, "limits": {"memory": "4Gi", "nvidia.com/gpu": 1}}
    assert chart_defaults.resources["limits"] == {"memory": "4Gi"}  # the defaults themselves are not altered
    assert "PodDisruptionBudget/svc" not in objs  # one replica: a PDB would block node drains


def test_pod_is_hardened_probed_and_scraped() -> None:
    deployment = children({"task": "detect", "model": {"uri": "/models/m.pt"}})["Deployment/svc"]
    template = deployment["spec"]["template"]
    pod, container = template["spec"], template["spec"]["containers"][0]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(HTTP_PORT)
    assert template["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": GRPC_PORT}  # the standard gRPC health service
    # Ready about a second after the model (the real node measured 6 s from pod created to Ready with a 5 s startup
    # period, where the model is served 2-3 s after the pod is created), still 10 minutes to load it.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] == 1 and startup["timeoutSeconds"] == 1
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # writable despite read-only root
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": GRPC_PORT, "http": HTTP_PORT}
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kubeinfer-runtime", "kubeinfer.io/inferenceservice": "svc"}
    labels = template["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/name": "kubeinfer-runtime", "app.kubernetes.io/instance": "svc",
                      "app.kubernetes.io/managed-by": "kubeinfer-operator", "kubeinfer.io/inferenceservice": "svc"}


def test_the_kubelet_waits_longer_than_the_runtime_drains() -> None:
    deployment = children({"task": "detect", "model": {"uri": "/models/m.pt"}})["Deployment/svc"]
    pod = deployment["spec"]["template"]["spec"]
    parsed = serve_args(pod["containers"][0]["args"])
    # The runtime exits within shutdown delay + grace period + 1 s; SIGKILL must not come before.
    assert pod["terminationGracePeriodSeconds"] >= parsed.shutdown_delay + parsed.grace_period + 2


def test_a_draining_pod_serves_longer_than_dns_answers_are_cached() -> None:
    """Balancing clients learn the pods from the headless Service's DNS, which CoreDNS caches for up to 30 s: an old
    pod of a rollout keeps taking calls until every answer lists its successors (tests/test_real_node_e2e.py)."""
    deployment = children({"task": "detect", "model": {"uri": "/models/m.pt"}})["Deployment/svc"]
    parsed = serve_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert parsed.shutdown_delay > 30
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_connections_age_so_balancing_clients_find_new_pods() -> None:
    deployment = children({"task": "detect", "model": {"uri": "/models/m.pt"}})["Deployment/svc"]
    parsed = serve_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert 0 < parsed.grpc_max_connection_age <= 60


def test_services_expose_grpc_and_http_and_the_headless_one_lists_pods() -> None:
    objs = children({"task": "detect", "model": {"uri": "/models/m.pt"}})
    service, headless = objs["Service/svc"], objs["Service/svc-pods"]
    assert service["spec"]["type"] == "ClusterIP"
    assert headless["spec"]["clusterIP"] == "None"
    for svc in (service, headless):
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["grpc"]["port"] == GRPC_PORT and ports["grpc"]["appProtocol"] == "grpc"
        assert ports["http"]["port"] == HTTP_PORT
        assert svc["spec"]["selector"] == objs["Deployment/svc"]["spec"]["selector"]["matchLabels"]
    assert endpoint("svc", "team-a") == "svc.team-a.svc:8001"
    assert selector_string("svc") == "app.kubernetes.io/name=kubeinfer-runtime,kubeinfer.io/inferenceservice=svc"


def test_http_uris_are_fetched_by_an_init_container_into_the_paths_the_runtime_reads() -> None:
    objs = children({
        "task": "recognize",
        "model": {"uri": "https://models.example.com/v2/embedder.onnx?sig=abc#sha256=" + "a" * 64},
        "labels": {"uri": "https://models.example.com/v2/labels.txt"},
        "baseData": {"uri": "https://data.example.com/gallery.tar.gz", "batchSize": 8},
        "thresholds": {"similarity": 0.6}, "topK": 3,
    })
    pod = objs["Deployment/svc"]["spec"]["template"]["spec"]
    init, container = pod["initContainers"][0], pod["containers"][0]
    assert init["image"] == container["image"] == CPU_IMAGE  # an ONNX encoder: the lean image fetches and serves
    assert init["command"] == ["kubeinfer", "fetch"]
    assert init["args"][:2] == ["--into", FETCH_ROOT]
    items = {str(item.dest): item for item in map(fetch.parse_item, init["args"][2:])}
    parsed = serve_args(container["args"])
    assert str(parsed.model) == f"{FETCH_ROOT}/{items['model/embedder.onnx'].dest}"
    assert items["model/embedder.onnx"].sha256 == "a" * 64
    assert items["model/embedder.onnx"].url == "https://models.example.com/v2/embedder.onnx?sig=abc"
    assert str(parsed.labels) == f"{FETCH_ROOT}/labels/labels.txt"
    assert str(parsed.base_data) == f"{FETCH_ROOT}/base-data" and items["base-data"].unpack
    assert parsed.gallery_batch_size == 8 and parsed.similarity_threshold == 0.6 and parsed.top_k == 3
    assert {"name": "fetched", "emptyDir": {}} in pod["volumes"]
    assert {"name": "fetched", "mountPath": FETCH_ROOT, "readOnly": True} in container["volumeMounts"]
    assert {"name": "fetched", "mountPath": FETCH_ROOT} in init["volumeMounts"]


def test_claims_are_mounted_read_only_once_each() -> None:
    objs = children({"task": "stream-classify", "model": {"uri": "pvc://shared/cls/model.pt"},
                     "labels": {"uri": "pvc://shared/cls/labels.npy"}, "window": 4, "topK": 2})
    pod = objs["Deployment/svc"]["spec"]["template"]["spec"]
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"name": "pvc-0", "persistentVolumeClaim": {"claimName": "shared", "readOnly": True}}]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "pvc-0", "mountPath": f"{PVC_ROOT}/shared", "readOnly": True} in mounts
    assert "initContainers" not in pod
    parsed = serve_args(pod["containers"][0]["args"])
    assert (parsed.window, parsed.top_k) == (4, 2)


def test_autoscaling_renders_an_hpa_and_leaves_replicas_to_it() -> None:
    objs = children({"task": "detect", "model": {"uri": "/m.pt"},
                     "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilization": 65}})
    hpa = objs["HorizontalPodAutoscaler/svc"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "svc"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 65
    assert "replicas" not in objs["Deployment/svc"]["spec"]
    assert "PodDisruptionBudget/svc" in objs


def test_unwanted_optional_children_are_listed_for_removal() -> None:
    rendered = render_children(OWNER, parse_spec({"task": "detect", "model": {"uri": "/m.pt"}, "replicas": 1}),
                               DEFAULTS)
    assert sorted(ref.kind for ref in rendered.absent) == ["HorizontalPodAutoscaler", "PodDisruptionBudget",
                                                           "ScaledObject"]


def test_video_without_model_and_user_settings_pass_through() -> None:
    objs = children({
        "task": "video", "image": "example.org/custom:7", "nodeSelector": {"zone": "a"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "vision", "effect": "NoSchedule"}],
        "env": [{"name": "KUBEINFER_JPEG_QUALITY", "value": "70"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        "resources": {"requests": {"cpu": 1, "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "grpc": {"maxMessageBytes": 1 << 25, "workers": 3}, "batching": {"maxBatchSize": 4, "maxDelayMs": 0.5},
    })
    pod = objs["Deployment/svc"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    parsed = serve_args(container["args"])
    assert parsed.model is None and parsed.task == "video"
    assert (parsed.max_message_bytes, parsed.workers, parsed.max_batch_size) == (1 << 25, 3, 4)
    assert parsed.max_batch_delay_ms == 0.5
    assert container["image"] == "example.org/custom:7"
    assert pod["nodeSelector"] == {"zone": "a"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "vision",
                                   "effect": "NoSchedule"}]
    assert {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} in container["env"]
    assert container["resources"] == {"requests": {"cpu": 1, "memory": "512Mi"}, "limits": {"memory": "1Gi"}}


def test_model_instances_pass_through_and_unset_leaves_the_runtime_default() -> None:
    def args(spec: dict) -> list[str]:
        return children(spec)["Deployment/svc"]["spec"]["template"]["spec"]["containers"][0]["args"]

    chosen = args({"task": "detect", "model": {"uri": "/m.pt"}, "batching": {"instances": 3}})
    assert serve_args(chosen).model_instances == 3
    assert "--model-instances" not in args({"task": "detect", "model": {"uri": "/m.pt"}})


def test_frontends_get_their_flag_and_a_shared_memory_volume() -> None:
    objs = children({"task": "detect", "model": {"uri": "/m.pt"}, "grpc": {"frontends": 4}})
    pod = objs["Deployment/svc"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert serve_args(container["args"]).frontends == 4
    assert {"name": "shm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    one = runtime(children({"task": "detect", "model": {"uri": "/m.pt"}}))
    assert "--frontends" not in one["args"] and all(m["name"] != "shm" for m in one["volumeMounts"])
    classifier = runtime(children({"task": "classify", "model": {"uri": "/c.pt"}, "labels": {"uri": "/l.txt"},
                                   "grpc": {"frontends": 2}}))
    assert serve_args(classifier["args"]).frontends == 2
    video = runtime(children({"task": "video", "grpc": {"frontends": 3}}))  # every task: state stays per frontend
    assert serve_args(video["args"]).frontends == 3


@pytest.mark.parametrize(("spec", "variant", "engine", "exported"), [
    ({"task": "detect", "model": {"uri": "/m.onnx"}}, "cpu", "onnx", False),
    ({"task": "detect", "model": {"uri": "pvc://models/yolo/m.pt"}}, "cpu", "onnx", True),
    ({"task": "detect", "model": {"uri": "pvc://models/yolo/m.pt"}, "gpus": 1}, "gpu", "torch", False),
    ({"task": "detect", "model": {"uri": "/m.torchscript"}}, "gpu", "torch", False),
    ({"task": "video", "model": {"uri": "https://models.example.com/m.PT?sig=1"}}, "cpu", "onnx", True),
    ({"task": "video"}, "cpu", "none", False),
    ({"task": "video", "gpus": 1}, "gpu", "none", False),
    ({"task": "classify", "model": {"uri": "/c.pt"}, "labels": {"uri": "/l.txt"}}, "gpu", "torch", False),
    ({"task": "classify", "model": {"uri": "/c.onnx"}, "labels": {"uri": "/l.txt"}}, "cpu", "onnx", False),
    ({"task": "stream-classify", "model": {"uri": "/c.ts"}, "labels": {"uri": "/l.txt"}}, "gpu", "torch", False),
    ({"task": "recognize", "model": {"uri": "/e.onnx"}, "embeddings": {"uri": "/g.npz"}}, "cpu", "onnx", False),
    ({"task": "recognize", "model": {"uri": "/e.jit"}, "embeddings": {"uri": "/g.npz"}}, "gpu", "torch", False),
])
def test_the_image_and_engine_follow_the_model_and_the_gpus(spec: dict[str, Any], variant: str, engine: str,
                                                            exported: bool) -> None:
    """The cpu image wherever ONNX Runtime runs the model; the gpu image for GPUs and models only torch loads; a
    .pt detector without GPUs exported by an init container from the gpu image. The status says which."""
    objs = children(spec)
    pod = objs["Deployment/svc"]["spec"]["template"]["spec"]
    image = {"cpu": CPU_IMAGE, "gpu": IMAGE}[variant]
    assert runtime(objs)["image"] == image
    choice = DEFAULTS.runtime(parse_spec(spec))
    assert choice.status() == {"image": image, "variant": variant, "engine": engine,
                               **({"exportedBy": IMAGE} if exported else {})}
    inits = [c["name"] for c in pod.get("initContainers", [])]
    assert ("export" in inits) == exported


def test_a_pt_detector_on_the_cpu_image_is_exported_first_from_the_gpu_image() -> None:
    """Downloaded, then exported next to it (the runtime's read-only mounts, a writable export folder), then served
    from the export by the image without torch."""
    objs = children({"task": "detect", "model": {"uri": "https://models.example.com/yolo/best.pt"}})
    pod = objs["Deployment/svc"]["spec"]["template"]["spec"]
    fetch_init, export_init = pod["initContainers"]
    container = pod["containers"][0]
    assert (fetch_init["name"], fetch_init["image"]) == ("fetch", CPU_IMAGE)
    assert (export_init["name"], export_init["image"], export_init["command"]) == ("export", IMAGE,
                                                                                   ["kubeinfer", "export"])
    assert export_init["args"] == [f"{FETCH_ROOT}/model/best.pt", "--out", EXPORTED_MODEL]
    assert {"name": "fetched", "mountPath": FETCH_ROOT, "readOnly": True} in export_init["volumeMounts"]
    assert {"name": "exported", "mountPath": EXPORT_ROOT} in export_init["volumeMounts"]
    assert export_init["securityContext"]["readOnlyRootFilesystem"] is True
    assert export_init["terminationMessagePolicy"] == "FallbackToLogsOnError"  # its one line reaches the status
    assert {"name": "exported", "emptyDir": {}} in pod["volumes"]
    assert {"name": "exported", "mountPath": EXPORT_ROOT, "readOnly": True} in container["volumeMounts"]
    assert (container["image"], str(serve_args(container["args"]).model)) == (CPU_IMAGE, EXPORTED_MODEL)
    on_claim = children({"task": "detect", "model": {"uri": "pvc://models/yolo/best.pt"}})
    export_init = on_claim["Deployment/svc"]["spec"]["template"]["spec"]["initContainers"][0]
    assert export_init["args"][0] == f"{PVC_ROOT}/models/yolo/best.pt"
    assert {"name": "pvc-0", "mountPath": f"{PVC_ROOT}/models", "readOnly": True} in export_init["volumeMounts"]


def test_a_spec_image_or_one_image_for_everything_serves_without_an_export_step() -> None:
    """spec.image is run as given; an operator given one image for both serves every spec from it, and a .pt
    detector there is exported at start by `kubeinfer serve --backend auto`, as before the cpu image existed."""
    custom = children({"task": "detect", "model": {"uri": "/m.pt"}, "image": "example.com/mine:1"})
    assert runtime(custom)["image"] == "example.com/mine:1"
    assert "initContainers" not in custom["Deployment/svc"]["spec"]["template"]["spec"]
    assert DEFAULTS.runtime(parse_spec({"task": "detect", "model": {"uri": "/m.pt"}, "image": "x:1"})).status() == {
        "image": "x:1", "variant": "custom", "engine": "onnx"}
    single = render_children(OWNER, parse_spec({"task": "detect", "model": {"uri": "/m.pt"}}), IMAGE).present[0]
    pod = single["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == IMAGE and "initContainers" not in pod


def test_an_onnx_model_on_gpus_is_refused_unless_an_image_is_named() -> None:
    with pytest.raises(SpecError, match=r"^spec.gpus: kubeinfer's runtime images run ONNX models on the CPU"):
        parse_spec({"task": "detect", "model": {"uri": "https://x.example.com/m.ONNX?v=2"}, "gpus": 1})
    parse_spec({"task": "detect", "model": {"uri": "/m.onnx"}, "gpus": 1, "image": "example.com/ort-gpu:1"})


def test_rendering_is_deterministic_and_does_not_touch_its_input() -> None:
    spec = load_yaml(EXAMPLE_FILES[0])["spec"]
    before = copy.deepcopy(spec)
    first = render_children(OWNER, parse_spec(spec), DEFAULTS)
    second = render_children(OWNER, parse_spec(spec), DEFAULTS)
    assert first == second
    assert spec == before


@pytest.mark.parametrize(("spec", "message"), [
    ({}, "spec.task is required"),
    ({"task": "segment"}, "spec.task: 'segment' is not one of"),
    ({"task": "detect"}, "spec.model.uri is required for task 'detect'"),
    ({"task": "classify", "model": {"uri": "/m.pt"}}, "spec.labels.uri is required"),
    ({"task": "recognize", "model": {"uri": "/m.pt"}}, "needs exactly one gallery"),
    ({"task": "recognize", "model": {"uri": "/m.pt"}, "embeddings": {"uri": "/e.npz"}, "baseData": {"uri": "/d"}},
     "needs exactly one gallery"),
    ({"task": "detect", "model": {"uri": "/m.pt"}, "embeddings": {"uri": "/e.npz"}}, "only used by task 'recognize'"),
    ({"task": "detect", "model": {"uri": "/m.pt"}, "window": 4}, "spec.window is only used by task 'stream-classify'"),
    ({"task": "detect", "model": {"uri": "/m.pt"}, "replicas": 2, "autoscaling": {"maxReplicas": 3}},
     "spec.replicas stays at its default 1 when spec.autoscaling is set"),
    ({"task": "detect", "model": {"uri": "/m.pt"}, "autoscaling": {"minReplicas": 4, "maxReplicas": 3}},
     "minReplicas (4) must not exceed maxReplicas (3)"),
    ({"task": "detect", "model": {"uri": "ftp://bucket/m.pt"}}, "is not pvc://CLAIM/path, http(s)://"),
    ({"task": "detect", "model": {"uri": "pvc://claim/../etc/passwd"}}, "must not contain '..'"),
    ({"task": "detect", "model": {"uri": "https://example.com/"}}, "does not end in a file name"),
    ({"task": "detect", "model": {"uri": "/m.pt"}, "thresholds": {"confidence": 1.5}},
     "spec.thresholds.confidence must be in [0.0, 1.0], got 1.5"),
    ({"task": "detect", "model": {"uri": "/m.pt"}, "gpus": "one"}, "spec.gpus must be an integer"),
    ({"task": "recognize", "model": {"uri": "/m.pt"}, "baseData": {"uri": "https://x.org/data.bin"}},
     "a download must be an archive"),
])
def test_invalid_specs_are_refused_with_a_message_naming_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=None) as caught:
        parse_spec(spec)
    assert message in str(caught.value)


@pytest.mark.parametrize(("name", "ok"), [("a", True), ("detector-2", True), ("x" * 58, True), ("x" * 59, False),
                                          ("2fast", False), ("Upper", False), ("ends-", False)])
def test_names_must_leave_room_for_the_headless_service(name: str, ok: bool) -> None:
    if ok:
        validate_name(name)
        validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{name}-pods"},
                  "spec": {"clusterIP": "None", "ports": [{"port": 1}]}})
    else:
        with pytest.raises(SpecError, match="DNS-1035"):
            validate_name(name)


def test_uri_parsing() -> None:
    pvc = parse_uri("pvc://models/a/b.pt", "f")
    assert (pvc.scheme, pvc.claim, pvc.path) == ("pvc", "models", "a/b.pt")
    web = parse_uri("https://h/x/model.onnx?token=1#sha256=" + "0" * 64, "f")
    assert (web.scheme, web.basename, web.is_archive) == ("http", "model.onnx", False)
    assert parse_uri("http://h/data.tar.gz", "f").is_archive
    assert parse_uri("/opt/m.pt", "f").scheme == "path"
