"""The CRD against the real kube-apiserver: it is accepted, defaults and validates specs, and teaches kubectl.

``kubectl apply -f crds/`` must be accepted (a structural schema, CEL rules within the cost budget); the API server
applies the defaults (which must be the operator's own), refuses every bad spec with the message of the rule or
bound it breaks (server-side dry run), refuses unknown fields (kubectl's strict field validation), explains the
fields, prints the columns and keeps status behind its subresource. The operator's ``parse_spec`` must reach the
API server's verdict on every spec it accepts here. Only what the server does not check is checked statically.
"""

from __future__ import annotations

import ast
import copy
import json
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from cluster_support import Api, Kubectl, new_namespace, wait_established
from operator_support import CRD_PATH, EXAMPLE_FILES, is_path, load_crd, load_yaml
from rollout_spec_support import BAD as BAD_ROLLOUTS
from rollout_spec_support import GOOD as GOOD_ROLLOUTS
from rollout_spec_support import SERVER_ONLY as SERVER_ONLY_ROLLOUTS

from kubeinfer.operator import spec as spec_module
from kubeinfer.operator.spec import SpecError, parse_spec, validate_name
from kubeinfer.operator.status import PHASES

CRDS = CRD_PATH.parent
NOT_CHECKED = "some validation rules were not checked"  # the server's note after a schema error, not a cause


# -- fixtures and helpers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crd_applied(kubectl: Kubectl) -> str:
    """`kubectl apply -f crds/`, as the README says; its output."""
    applied = kubectl("apply", "-f", str(CRDS))
    wait_established(kubectl)
    return applied.stdout


@pytest.fixture(scope="module")
def ns(api: Api, kubectl: Kubectl, crd_applied: str) -> Iterator[str]:
    name = new_namespace(api, "crd")
    yield name
    # Its InferenceServices would otherwise be reconciled by every operator later tests run cluster-wide.
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def obj(spec: dict[str, Any] | None, name: str = "svc") -> dict[str, Any]:
    resource: dict[str, Any] = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                                "metadata": {"name": name}}
    if spec is not None:
        resource["spec"] = spec
    return resource


def dry_run(api: Api, ns: str, resource: dict[str, Any]) -> tuple[int, Any]:
    """POST with ?dryRun=All: validated, defaulted and admitted by the API server, never stored."""
    return api.call("POST", is_path(ns) + "?dryRun=All", resource)


def refusals(api: Api, ns: str, resource: dict[str, Any]) -> list[tuple[str, str]]:
    """The (field, message) causes the API server refuses ``resource`` for; empty when it accepts it."""
    code, body = dry_run(api, ns, resource)
    if code == 201:
        return []
    assert code == 422 and body["reason"] == "Invalid", (code, body)
    return [(c.get("field", ""), c["message"]) for c in body["details"]["causes"] if NOT_CHECKED not in c["message"]]


def operator_accepts(resource: dict[str, Any]) -> bool:
    try:
        validate_name(resource["metadata"]["name"])
        parse_spec(resource.get("spec") or {})
    except SpecError:
        return False
    return True


def schema_nodes(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, sub in (node.get("properties") or {}).items():
        found += schema_nodes(sub, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        found += schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += schema_nodes(node["additionalProperties"], f"{path}{{}}")
    return found


def crd_schema() -> dict[str, Any]:
    return load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# -- the CRD itself --------------------------------------------------------------------------------------------
def test_kubectl_apply_crds_is_accepted_as_a_structural_schema(api: Api, kubectl: Kubectl, crd_applied: str) -> None:
    assert "customresourcedefinition.apiextensions.k8s.io/inferenceservices.kubeinfer.io" in crd_applied
    # Applying it again is a no-op the server agrees with (a server-side dry run re-checks schema and CEL costs).
    again = kubectl("apply", "--dry-run=server", "-f", str(CRDS))
    assert "inferenceservices.kubeinfer.io" in again.stdout, again.stdout
    crd = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/inferenceservices.kubeinfer.io")
    assert crd is not None
    conditions = {c["type"]: c for c in crd["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True", conditions["NamesAccepted"]
    assert "NonStructuralSchema" not in conditions, conditions["NonStructuralSchema"]["message"]
    assert crd["status"]["acceptedNames"]["shortNames"] == ["kisvc"]
    # What the API serves: discovery names the resource, its short name, category and subresources.
    discovery = api.get("/apis/kubeinfer.io/v1alpha1")
    assert discovery is not None
    served = {r["name"]: r for r in discovery["resources"]}
    main = served["inferenceservices"]
    assert (main["kind"], main["namespaced"], main["shortNames"], main["categories"]) == (
        "InferenceService", True, ["kisvc"], ["kubeinfer"])
    assert {"inferenceservices/status", "inferenceservices/scale"} <= set(served)
    assert served["inferenceservices/scale"]["kind"] == "Scale"


BROKEN_SCHEMAS = {
    "not structural": (lambda spec: spec["properties"]["gpus"].pop("type"),
                       "properties[gpus].type: Required value: must not be empty for specified object fields"),
    "a CEL rule that does not compile": (
        lambda spec: spec["x-kubernetes-validations"].append({"rule": "self.task.nosuchfunction()"}),
        "compilation failed"),
    "a CEL rule over the cost budget": (
        lambda spec: spec["x-kubernetes-validations"].append({"rule": "self.nodeSelector.all(a, self.nodeSelector"
                                                               ".all(b, self.nodeSelector[a].matches(b)))"}),
        "estimated rule cost exceeds budget"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_SCHEMAS))
def test_a_crd_the_server_cannot_accept_is_refused(api: Api, broken: str) -> None:
    """The acceptance above means something: the same CRD with one flaw is refused (server dry run)."""
    crd = load_crd()
    crd["metadata"]["name"] = "brokens.kubeinfer.io"
    crd["spec"]["names"] = {"kind": "Broken", "plural": "brokens", "singular": "broken", "listKind": "BrokenList"}
    break_it, message = BROKEN_SCHEMAS[broken]
    break_it(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])
    code, body = api.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?dryRun=All", crd)
    assert code == 422, (code, body)
    assert message in body["message"], body["message"]


# -- defaults ----------------------------------------------------------------------------------------------------
COMMON_DEFAULTS: dict[str, Any] = {
    "thresholds": {"confidence": spec_module.DEFAULT_CONFIDENCE, "iou": spec_module.DEFAULT_IOU,
                   "similarity": spec_module.DEFAULT_SIMILARITY},
    "topK": spec_module.DEFAULT_TOP_K,
    "batching": {"maxBatchSize": spec_module.DEFAULT_MAX_BATCH_SIZE, "maxDelayMs": spec_module.DEFAULT_MAX_DELAY_MS},
    "grpc": {"maxMessageBytes": spec_module.DEFAULT_MAX_MESSAGE_BYTES, "workers": spec_module.DEFAULT_WORKERS,
             "frontends": 1},
    "gpus": 0,
    "replicas": spec_module.DEFAULT_REPLICAS,  # the scale subresource's specReplicasPath: it must always exist
}

MINIMAL: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (the minimal spec, what the API server adds besides COMMON_DEFAULTS)
    "detect": ({"task": "detect", "model": {"uri": "/m.pt"}}, {}),
    "classify": ({"task": "classify", "model": {"uri": "pvc://m/c.onnx"}, "labels": {"uri": "pvc://m/l.txt"}}, {}),
    "stream-classify": ({"task": "stream-classify", "model": {"uri": "pvc://m/c.pt"},
                         "labels": {"uri": "pvc://m/l.txt"}}, {}),
    "recognize-embeddings": ({"task": "recognize", "model": {"uri": "/e.onnx"}, "embeddings": {"uri": "/g.npz"}},
                             {}),
    "recognize-base-data": ({"task": "recognize", "model": {"uri": "/e.onnx"},
                             "baseData": {"uri": "https://x.org/a.zip"}},
                            {"baseData": {"uri": "https://x.org/a.zip",
                                          "batchSize": spec_module.DEFAULT_GALLERY_BATCH_SIZE}}),
    "video": ({"task": "video"}, {}),
    "classify-frontends": ({"task": "classify", "model": {"uri": "/c.pt"}, "labels": {"uri": "/l.txt"},
                            "grpc": {"frontends": 2}},  # accepted for every task
                           {"grpc": {**COMMON_DEFAULTS["grpc"], "frontends": 2}}),
    "video-frontends": ({"task": "video", "grpc": {"frontends": 2}}, {"grpc": {**COMMON_DEFAULTS["grpc"],
                                                                             "frontends": 2}}),
    "autoscaled": ({"task": "detect", "model": {"uri": "/m.pt"}, "autoscaling": {"maxReplicas": 3}},
                   {"autoscaling": {"maxReplicas": 3, "minReplicas": 1,
                                    "targetCPUUtilization": spec_module.DEFAULT_TARGET_CPU,
                                    "metric": spec_module.DEFAULT_METRIC, "engine": spec_module.DEFAULT_ENGINE}}),
    "autoscaled-keda": ({"task": "detect", "model": {"uri": "/m.pt"},
                         "autoscaling": {"maxReplicas": 3, "metric": "queue", "target": 4, "engine": "keda",
                                         "prometheus": {"address": "http://prometheus.monitoring:9090"}}},
                        {"autoscaling": {"maxReplicas": 3, "minReplicas": 1, "metric": "queue", "target": 4,
                                         "engine": "keda",
                                         "prometheus": {"address": "http://prometheus.monitoring:9090"},
                                         "targetCPUUtilization": spec_module.DEFAULT_TARGET_CPU}}),
    "rollout": ({"task": "detect", "model": {"uri": "/m.pt"}, "rollout": {}},
                {"rollout": GOOD_ROLLOUTS[0].stored}),  # `rollout: {}` takes every default
}


def test_every_task_has_a_minimal_case() -> None:
    assert {spec["task"] for spec, _ in MINIMAL.values()} == set(spec_module.TASKS)


@pytest.mark.parametrize("case", sorted(MINIMAL))
def test_the_api_server_applies_the_operators_defaults(api: Api, ns: str, case: str) -> None:
    minimal, extra = MINIMAL[case]
    name = f"defaults-{case}"
    api.create(is_path(ns), obj(copy.deepcopy(minimal), name))
    stored = api.get(is_path(ns, name))
    assert stored is not None
    # Read back as stored: exactly the operator's defaults were added (replicas and minReplicas too, as documented),
    # and nothing whose presence CEL rules depend on (window).
    assert stored["spec"] == {**minimal, **COMMON_DEFAULTS, **extra}
    # ...and the operator reads the defaulted spec exactly as it reads the minimal one.
    assert parse_spec(stored["spec"]) == parse_spec(minimal)


# -- validation: every rule and every bound, each with its own message --------------------------------------------
DETECT = {"task": "detect", "model": {"uri": "/m.pt"}}
STREAM = {"task": "stream-classify", "model": {"uri": "/m.pt"}, "labels": {"uri": "/l.txt"}}
RECOGNIZE = {"task": "recognize", "model": {"uri": "/m.pt"}, "embeddings": {"uri": "/g.npz"}}
RECOGNIZE_BASE = {"task": "recognize", "model": {"uri": "/m.pt"}, "baseData": {"uri": "/data"}}
KEDA_QUEUE = {"maxReplicas": 4, "metric": "queue", "target": 4, "engine": "keda"}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``base`` with dotted paths set (``thresholds__iou=2`` sets thresholds.iou), or removed when None."""
    spec = copy.deepcopy(base)
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


GE, LE = "should be greater than or equal to", "should be less than or equal to"


class Case(NamedTuple):
    id: str
    spec: dict[str, Any] | None
    field: str  # the field the API server names
    message: str  # a substring of its message
    keyword: str  # the schema keyword (or rule:NAME for a CEL rule) the case covers
    operator_refuses: bool  # parse_spec checks this too (else only the API server does)
    other_causes: tuple[str, ...] = ()  # messages of causes the same bad value must also produce


def bound(base: dict[str, Any], path: str, low: float, high: float, step: float = 1,
          below_also: tuple[str, ...] = (), above_also: tuple[str, ...] = ()) -> list[Case]:
    """The two bound cases of a numeric field: just below its minimum and just above its maximum."""
    field = "spec." + path.replace("__", ".")
    return [Case(f"{field} below minimum", with_(base, **{path: low - step}), field, f"{GE} {low}", "minimum", True,
                 below_also),
            Case(f"{field} above maximum", with_(base, **{path: high + step}), field, f"{LE} {high}", "maximum", True,
                 above_also)]


def object_store_cases() -> list[Case]:
    """The bounds of spec.*.storage and spec.*.credentials, in each of the four uri fields."""
    contexts = {"model": (DETECT, "m.pt"), "labels": (STREAM, "l.txt"), "embeddings": (RECOGNIZE, "g.npz"),
                "baseData": (RECOGNIZE_BASE, "data/")}
    cases = []
    for name, (base, key) in contexts.items():
        s3, gs = {"uri": f"s3://bucket/{key}"}, {"uri": f"gs://bucket/{key}"}
        if name == "model":
            s3 = gs = {"uri": "s3://bucket/m.pt"}
            gs = {"uri": "gs://bucket/m.pt"}
        field = f"spec.{name}"
        cases += [
            Case(f"{name} endpoint not a URL", with_(base, **{name: {**s3, "storage": {"endpoint": "minio:9000"}}}),
                 f"{field}.storage.endpoint", "should match '^https?://", "pattern", True),
            Case(f"{name} region", with_(base, **{name: {**s3, "storage": {"region": "EU West"}}}),
                 f"{field}.storage.region", "should match '^[a-z0-9]", "pattern", True),
            Case(f"{name} secret name", with_(base, **{name: {**s3, "credentials": {"secretName": "Creds!"}}}),
                 f"{field}.credentials.secretName", "should match '^[a-z0-9]", "pattern", True),
            Case(f"{name} secret key", with_(base, **{name: {**gs, "credentials": {"secretName": "c", "key": "a/b"}}}),
                 f"{field}.credentials.key", "should match '^[-._a-zA-Z0-9]", "pattern", True),
            Case(f"{name} credentials without a secret", with_(base, **{name: {**s3, "credentials": {}}}),
                 f"{field}.credentials.secretName", "Required value", "required", True),
        ]
    return cases


S3_FOLDER = {"uri": "s3://models/yolo/", "file": "model.onnx"}
TOO_MANY_TOLERATIONS = [{"key": f"k{i}", "operator": "Exists"} for i in range(33)]
TOO_MANY_ENV = [{"name": f"V{i}", "value": "x"} for i in range(101)]
URI_PATTERN = "should match '^(pvc://"
BAD_SPECS: list[Case] = [
    Case("no spec", None, "spec", "Required value", "required", True),
    Case("no task", {"model": {"uri": "/m.pt"}}, "spec.task", "Required value", "required", True),
    Case("unknown task", with_(DETECT, task="segment"), "spec.task",
         'Unsupported value: "segment": supported values: "detect", "classify", "stream-classify", "recognize", '
         '"video"', "enum", True),
    # The CEL rules of spec, each with its message.
    Case("model missing", {"task": "detect"}, "spec.model", "spec.model is required unless the task is video",
         "rule:model", True),
    Case("labels missing", with_(STREAM, labels=None), "spec.labels",
         "tasks classify and stream-classify need spec.labels", "rule:labels", True),
    Case("gallery missing", with_(RECOGNIZE, embeddings=None), "spec",
         "task recognize needs exactly one gallery, spec.embeddings or spec.baseData", "rule:gallery", True),
    Case("two galleries", with_(RECOGNIZE, baseData={"uri": "/data"}), "spec",
         "task recognize needs exactly one gallery", "rule:gallery", True),
    Case("gallery on detect", with_(DETECT, embeddings={"uri": "/e.npz"}), "spec",
         "spec.embeddings and spec.baseData are only used by task recognize", "rule:recognize-only", True),
    Case("window on detect", with_(DETECT, window=3), "spec.window", "spec.window is only used by task stream-classify",
         "rule:window", True),
    Case("onnx model on gpus", with_(DETECT, model={"uri": "https://x.org/m.ONNX?v=2"}, gpus=1), "spec.gpus",
         "spec.gpus: kubeinfer's runtime images run ONNX models on the CPU", "rule:onnx-gpus", True),
    Case("replicas and autoscaling", with_(DETECT, replicas=2, autoscaling={"maxReplicas": 4}), "spec.replicas",
         "spec.replicas stays at its default 1 when spec.autoscaling is set", "rule:replicas", True),
    Case("min above max", with_(DETECT, autoscaling={"minReplicas": 5, "maxReplicas": 4}), "spec.autoscaling",
         "autoscaling.minReplicas must not exceed maxReplicas", "rule:autoscaling", True),
    Case("queue without a target", with_(DETECT, autoscaling={"maxReplicas": 4, "metric": "queue"}),
         "spec.autoscaling.target", "spec.autoscaling.target is required for metrics queue, inflight and latency",
         "rule:target-required", True),
    Case("cpu with a target", with_(DETECT, autoscaling={"maxReplicas": 4, "target": 3}), "spec.autoscaling.target",
         "metric cpu uses targetCPUUtilization", "rule:target-cpu", True),
    Case("keda on cpu", with_(DETECT, autoscaling={"maxReplicas": 4, "engine": "keda",
                                                   "prometheus": {"address": "http://p:9090"}}),
         "spec.autoscaling.engine", "spec.autoscaling.engine keda scales on a Prometheus metric", "rule:keda-metric",
         True),
    Case("keda without prometheus", with_(DETECT, autoscaling=KEDA_QUEUE), "spec.autoscaling.prometheus",
         "spec.autoscaling.prometheus.address is required when autoscaling.engine is keda", "rule:keda-prometheus",
         True),
    Case("keda with an empty prometheus", with_(DETECT, autoscaling={**KEDA_QUEUE, "prometheus": {}}),
         "spec.autoscaling.prometheus", "spec.autoscaling.prometheus.address is required", "rule:keda-prometheus",
         True),
    # The rules every uri field shares, the same checks as the operator's parse_spec.
    Case("dot-dot in a claim path", with_(DETECT, model={"uri": "pvc://models/../other/m.pt"}), "spec.model.uri",
         "a uri must not contain '..'", "rule:uri-dotdot", True),
    Case("dot-dot in an image path", with_(DETECT, model={"uri": "/opt/../etc/m.pt"}), "spec.model.uri",
         "a uri must not contain '..'", "rule:uri-dotdot", True),
    Case("a claim without a path", with_(DETECT, model={"uri": "pvc://models//"}), "spec.model.uri",
         "a pvc:// uri needs a path inside the claim", "rule:uri-claim-path", True),
    Case("a download without a file name", with_(DETECT, model={"uri": "https://models.example.com/"}),
         "spec.model.uri", "an http(s):// uri must end in a file name", "rule:uri-file-name", True),
    Case("labels download without a file name", with_(STREAM, labels={"uri": "https://x.org/labels/"}),
         "spec.labels.uri", "an http(s):// uri must end in a file name", "rule:uri-file-name", True),
    Case("base data not an archive", with_(RECOGNIZE_BASE, baseData={"uri": "https://x.org/data.bin"}),
         "spec.baseData.uri", "a downloaded baseData must be a .tar, .tar.gz, .tgz or .zip archive", "rule:baseData",
         True),
    # s3:// and gs:// settings: only for those schemes, each only where its store uses it; folders of objects.
    Case("storage on a download", with_(DETECT, model={"uri": "https://x.org/m.pt", "storage": {}}), "spec.model",
         "storage and credentials are for s3:// and gs:// uris", "rule:object-settings", True),
    Case("credentials on a claim", with_(STREAM, labels={"uri": "pvc://c/l.txt", "credentials": {"secretName": "s"}}),
         "spec.labels", "storage and credentials are for s3:// and gs:// uris", "rule:object-settings", True),
    Case("region on gs", with_(DETECT, model={"uri": "gs://bucket/m.pt", "storage": {"region": "eu"}}),
         "spec.model.storage.region", "storage.region is for s3:// uris", "rule:region", True),
    Case("key on s3", with_(RECOGNIZE, embeddings={"uri": "s3://bucket/g.npz",
                                                   "credentials": {"secretName": "s", "key": "key.json"}}),
         "spec.embeddings.credentials.key", "credentials.key (a service-account JSON's key) is for gs:// uris",
         "rule:gcs-key", True),
    Case("model folder without a file", with_(DETECT, model={"uri": "s3://models/yolo/"}), "spec.model",
         "spec.model.file names the model file inside a folder", "rule:model-file", True),
    Case("model file without a folder", with_(DETECT, model={"uri": "gs://models/m.pt", "file": "m.pt"}),
         "spec.model", "spec.model.file names the model file inside a folder", "rule:model-file", True),
    Case("model file dot-dot", with_(DETECT, model={**S3_FOLDER, "file": "a/../m.onnx"}), "spec.model.file",
         "spec.model.file must not contain '..'", "rule:uri-dotdot", True),
    Case("labels a folder", with_(STREAM, labels={"uri": "s3://models/labels/"}), "spec.labels.uri",
         "this uri is a folder (a prefix ending in '/'); name one object", "rule:not-folder", True),
    Case("embeddings a folder", with_(RECOGNIZE, embeddings={"uri": "gs://models/"}), "spec.embeddings.uri",
         "this uri is a folder", "rule:not-folder", True),
    Case("base data object not an archive", with_(RECOGNIZE_BASE, baseData={"uri": "s3://models/data.bin"}),
         "spec.baseData.uri", "or an s3:// or gs:// folder ending in '/'", "rule:baseData", True),
    Case("onnx model file on gpus", with_(DETECT, model=S3_FOLDER, gpus=1), "spec.gpus",
         "run ONNX models on the CPU", "rule:onnx-gpus", True),
    Case("model file absolute", with_(DETECT, model={**S3_FOLDER, "file": "/m.onnx"}), "spec.model.file",
         "should match '^[^/", "pattern", True),
    Case("model file too long", with_(DETECT, model={**S3_FOLDER, "file": "m" * 1025}), "spec.model.file",
         "may not be more than 1024 bytes", "maxLength", False),
    Case("service account name", with_(DETECT, serviceAccountName="Model_Reader"), "spec.serviceAccountName",
         "should match '^[a-z0-9]", "pattern", True),
    Case("service account name too long", with_(DETECT, serviceAccountName="a" * 254), "spec.serviceAccountName",
         "may not be more than 253 bytes", "maxLength", False),
    Case("s3 bucket name", with_(DETECT, model={"uri": "s3://B/m.pt"}), "spec.model.uri", URI_PATTERN, "pattern",
         True),
    Case("s3 version of a folder", with_(DETECT, model={"uri": "s3://models/yolo/?versionId=3"}),
         "spec.model.uri", URI_PATTERN, "pattern", True),
    Case("gs generation not a number", with_(DETECT, model={"uri": "gs://models/m.pt?generation=x"}),
         "spec.model.uri", URI_PATTERN, "pattern", True),
    *object_store_cases(),
    # Required fields of the nested objects.
    Case("model without uri", with_(DETECT, model={}), "spec.model.uri", "Required value", "required", True),
    Case("labels without uri", with_(STREAM, labels={}), "spec.labels.uri", "Required value", "required", True),
    Case("embeddings without uri", with_(RECOGNIZE, embeddings={}), "spec.embeddings.uri", "Required value", "required",
         True),
    Case("baseData without uri", with_(RECOGNIZE_BASE, baseData={"batchSize": 8}), "spec.baseData.uri",
         "Required value", "required", True),
    Case("autoscaling without max", with_(DETECT, autoscaling={"minReplicas": 1}), "spec.autoscaling.maxReplicas",
         "Required value", "required", True),
    Case("env without name", with_(DETECT, env=[{"value": "x"}]), "spec.env[0].name", "Required value", "required",
         False),
    # URIs: the pattern (every uri field) and the length bound.
    Case("ftp model", with_(DETECT, model={"uri": "ftp://b/m.pt"}), "spec.model.uri", URI_PATTERN, "pattern", True),
    Case("relative model", with_(DETECT, model={"uri": "models/m.pt"}), "spec.model.uri", URI_PATTERN, "pattern",
         True),
    Case("pvc without path", with_(DETECT, model={"uri": "pvc://claim"}), "spec.model.uri", URI_PATTERN, "pattern",
         True),
    Case("labels uri", with_(STREAM, labels={"uri": "ftp://l.txt"}), "spec.labels.uri", URI_PATTERN, "pattern", True),
    Case("embeddings uri", with_(RECOGNIZE, embeddings={"uri": "g.npz"}), "spec.embeddings.uri", URI_PATTERN, "pattern",
         True),
    Case("baseData uri", with_(RECOGNIZE_BASE, baseData={"uri": "data"}), "spec.baseData.uri", URI_PATTERN, "pattern",
         True),
    Case("model uri too long", with_(DETECT, model={"uri": "/" + "a" * 2048}), "spec.model.uri",
         "may not be more than 2048 bytes", "maxLength", False),
    Case("labels uri too long", with_(STREAM, labels={"uri": "/" + "a" * 2048}), "spec.labels.uri",
         "may not be more than 2048 bytes", "maxLength", False),
    Case("embeddings uri too long", with_(RECOGNIZE, embeddings={"uri": "/" + "a" * 2048}), "spec.embeddings.uri",
         "may not be more than 2048 bytes", "maxLength", False),
    Case("baseData uri too long", with_(RECOGNIZE_BASE, baseData={"uri": "/" + "a" * 2048}), "spec.baseData.uri",
         "may not be more than 2048 bytes", "maxLength", False),
    # Numeric bounds, below each minimum and above each maximum.
    *bound(RECOGNIZE_BASE, "baseData__batchSize", 1, 4096),
    *bound(DETECT, "thresholds__confidence", 0, 1, 0.5),
    *bound(DETECT, "thresholds__iou", 0, 1, 0.5),
    *bound(RECOGNIZE, "thresholds__similarity", -1, 1, 0.5),
    *bound(STREAM, "window", 1, 100000),
    *bound(DETECT, "topK", 1, 1000),
    *bound(DETECT, "batching__maxBatchSize", 1, 1024),
    *bound(DETECT, "batching__maxDelayMs", 0, 10000, 0.5),
    *bound(DETECT, "batching__instances", 1, 64),
    *bound(DETECT, "grpc__maxMessageBytes", 1024, 2147483647),
    *bound(DETECT, "grpc__workers", 1, 64),
    *bound(DETECT, "grpc__frontends", 1, 64),
    *bound(DETECT, "gpus", 0, 16),
    # spec.replicas is the scale subresource's specReplicasPath, which the server also checks on its own.
    *bound(DETECT, "replicas", 0, 1000, below_also=("Invalid value: -1: should be a non-negative integer",)),
    # minReplicas above its maximum is also above any valid maxReplicas: the CEL rule says so too.
    *bound(with_(DETECT, autoscaling={"maxReplicas": 1000}), "autoscaling__minReplicas", 1, 1000,
           above_also=("autoscaling.minReplicas must not exceed maxReplicas",)),
    # maxReplicas below its minimum is also below the defaulted minReplicas 1: the CEL rule says so too.
    *bound(DETECT, "autoscaling__maxReplicas", 1, 1000, below_also=("autoscaling.minReplicas must not exceed",)),
    *bound(with_(DETECT, autoscaling={"maxReplicas": 2}), "autoscaling__targetCPUUtilization", 1, 100),
    Case("unknown metric", with_(DETECT, autoscaling={"maxReplicas": 2, "metric": "gpu", "target": 1}),
         "spec.autoscaling.metric",
         'Unsupported value: "gpu": supported values: "cpu", "queue", "inflight", "latency"', "enum", True),
    Case("unknown engine", with_(DETECT, autoscaling={"maxReplicas": 2, "metric": "queue", "target": 1,
                                                      "engine": "knative"}),
         "spec.autoscaling.engine", 'Unsupported value: "knative": supported values: "hpa", "keda"', "enum", True),
    Case("target zero", with_(DETECT, autoscaling={"maxReplicas": 2, "metric": "queue", "target": 0}),
         "spec.autoscaling.target", "should be greater than 0", "minimum", True),
    Case("target negative", with_(DETECT, autoscaling={"maxReplicas": 2, "metric": "latency", "target": -0.5}),
         "spec.autoscaling.target", "should be greater than 0", "minimum", True),
    Case("target too large", with_(DETECT, autoscaling={"maxReplicas": 2, "metric": "inflight", "target": 2e6}),
         "spec.autoscaling.target", LE, "maximum", True),
    Case("prometheus not a URL", with_(DETECT, autoscaling={**KEDA_QUEUE, "prometheus": {"address": "prom:9090"}}),
         "spec.autoscaling.prometheus.address", "should match '^https?://", "pattern", True),
    Case("prometheus address too long",
         with_(DETECT, autoscaling={**KEDA_QUEUE, "prometheus": {"address": "http://p/" + "a" * 2048}}),
         "spec.autoscaling.prometheus.address", "may not be more than 2048 bytes", "maxLength", False),
    # Everything else the runtime pod is made of.
    Case("image too long", with_(DETECT, image="r/" + "i" * 1023), "spec.image", "may not be more than 1024 bytes",
         "maxLength", False),
    Case("request not a quantity", with_(DETECT, resources={"requests": {"cpu": "lots"}}),
         "spec.resources.requests.cpu", "should match '^(\\+|-)?(([0-9]+", "pattern", False),
    Case("limit not a quantity", with_(DETECT, resources={"limits": {"memory": "8 GB"}}),
         "spec.resources.limits.memory", "should match '^(\\+|-)?(([0-9]+", "pattern", False),
    Case("too many tolerations", with_(DETECT, tolerations=TOO_MANY_TOLERATIONS), "spec.tolerations",
         "Too many: 33: must have at most 32 items", "maxItems", False),
    Case("toleration operator", with_(DETECT, tolerations=[{"key": "k", "operator": "In"}]),
         "spec.tolerations[0].operator", 'Unsupported value: "In": supported values: "Exists", "Equal"', "enum", False),
    Case("toleration effect", with_(DETECT, tolerations=[{"key": "k", "effect": "Never"}]),
         "spec.tolerations[0].effect",
         'Unsupported value: "Never": supported values: "NoSchedule", "PreferNoSchedule", "NoExecute"', "enum", False),
    Case("too many env", with_(DETECT, env=TOO_MANY_ENV), "spec.env", "Too many: 101: must have at most 100 items",
         "maxItems", False),
    Case("empty env name", with_(DETECT, env=[{"name": "", "value": "x"}]), "spec.env[0].name",
         "should be at least 1 chars long", "minLength", False),
    Case("env twice", with_(DETECT, env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]), "spec.env[1]",
         'Duplicate value: {"name":"A"}', "x-kubernetes-list-type", False),
    # Types: what a YAML typo gives.
    Case("confidence a string", with_(DETECT, thresholds={"confidence": "high"}), "spec.thresholds.confidence",
         "must be of type number", "type", True),
    Case("gpus a float", with_(DETECT, gpus=1.5), "spec.gpus", "must be of type integer", "type", True),
    # spec.rollout (issue #34): the table parse_spec is held to as well (tests/test_spec_rollout.py).
    *(Case(f"rollout: {bad.id}", with_(DETECT, rollout=bad.rollout), bad.field, bad.server, bad.keyword, True)
      for bad in BAD_ROLLOUTS),
    *(Case(f"rollout: {bad.id}", with_(DETECT, rollout=bad.rollout), bad.field, bad.server, bad.keyword, False)
      for bad in SERVER_ONLY_ROLLOUTS),
]

NAME_RULE = ("metadata.name must be a DNS-1035 label of at most 58 characters (lowercase letters, digits and '-', "
             "starting with a letter): it names the Services NAME and NAME-pods")
BAD_NAMES = [("a" * 59, "rule:name"), ("9lives", "rule:name"), ("a.b", "rule:name")]


@pytest.mark.parametrize("case", BAD_SPECS, ids=[case.id for case in BAD_SPECS])
def test_every_bad_spec_is_refused_by_the_api_server_with_its_own_message(api: Api, ns: str, case: Case) -> None:
    resource = obj(case.spec)
    causes = refusals(api, ns, resource)
    assert causes, "the API server accepted a bad spec"
    own = [cause for cause in causes if cause[0] == case.field and case.message in cause[1]]
    assert len(own) == 1, f"no one cause on {case.field} saying {case.message!r}: {causes}"
    others = [message for cause in causes if cause not in own for message in [cause[1]]]
    assert len(others) == len(case.other_causes) and all(
        any(expected in message for message in others) for expected in case.other_causes), \
        f"refused for more than the case's own reason: {causes}"
    if case.operator_refuses:
        assert not operator_accepts(resource), "the operator's parse_spec accepted what the API server refused"


@pytest.mark.parametrize(("name", "ok"), [("svc", True), ("a" * 58, True), ("a-9", True),
                                          *((bad, False) for bad, _ in BAD_NAMES)])
def test_names_are_checked_by_the_root_cel_rule(api: Api, ns: str, name: str, ok: bool) -> None:
    resource = obj(dict(DETECT), name=name)
    causes = refusals(api, ns, resource)
    assert causes == ([] if ok else [("<nil>", f"Invalid value: {NAME_RULE}")])
    assert operator_accepts(resource) is ok


def test_the_table_covers_every_rule_and_bound_of_the_schema() -> None:
    """Each CEL rule, minimum, maximum, enum, pattern, length, item count and required field has a case above."""
    spec_schema = crd_schema()["properties"]["spec"]
    constraints: set[tuple[str, str]] = set()
    rule_ids = {"spec.model is required": "rule:model", "need spec.labels": "rule:labels",
                "exactly one gallery": "rule:gallery", "only used by task recognize": "rule:recognize-only",
                "spec.window is only used": "rule:window", "stays at its default 1": "rule:replicas",
                "run ONNX models on the CPU": "rule:onnx-gpus",
                "minReplicas must not exceed": "rule:autoscaling", "downloaded baseData": "rule:baseData",
                "metadata.name must be": "rule:name", "must not contain '..'": "rule:uri-dotdot",
                "needs a path inside the claim": "rule:uri-claim-path",
                "must end in a file name": "rule:uri-file-name",
                "target is required for metrics": "rule:target-required",
                "metric cpu uses targetCPUUtilization": "rule:target-cpu",
                "engine keda scales on a Prometheus metric": "rule:keda-metric",
                "prometheus.address is required": "rule:keda-prometheus",
                "are for s3:// and gs:// uris": "rule:object-settings", "region is for s3://": "rule:region",
                "is for gs:// uris": "rule:gcs-key", "names the model file inside a folder": "rule:model-file",
                "name one object": "rule:not-folder",
                "exactly one of shadow and weight": "rule:step-kind",
                "a shadow step must come before every weight step": "rule:shadow-first",
                "must be greater than the weight before it": "rule:weights-rise"}
    for path, node in schema_nodes(crd_schema()):
        if path.startswith(("status", "metadata")):
            continue
        field = path.replace("[]", "[0]").replace("{}", "")
        for keyword in ("minimum", "maximum", "enum", "pattern", "maxLength", "minLength", "maxItems",
                        "x-kubernetes-list-type"):
            if keyword in node and not (keyword == "x-kubernetes-list-type" and node[keyword] == "atomic"):
                constraints.add((field, keyword))
        for required in node.get("required") or []:
            constraints.add((f"{field}.{required}" if field else required, "required"))
        for rule in node.get("x-kubernetes-validations") or []:
            (rule_id,) = [v for k, v in rule_ids.items() if k in rule["message"]]
            constraints.add(("", rule_id))
    assert len([c for c in constraints if c[1].startswith("rule:")]) == 25
    assert spec_schema["properties"]["task"]["enum"] == list(spec_module.TASKS)
    autoscaling = spec_schema["properties"]["autoscaling"]["properties"]
    assert autoscaling["metric"]["enum"] == list(spec_module.METRICS)
    assert autoscaling["engine"]["enum"] == list(spec_module.ENGINES)
    assert autoscaling["target"]["maximum"] == spec_module.MAX_TARGET
    assert autoscaling["prometheus"]["properties"]["address"]["pattern"] == spec_module.PROMETHEUS_PATTERN.pattern

    covered = {("", case.keyword) for case in BAD_SPECS if case.keyword.startswith("rule:")}
    covered |= {("", rule) for _, rule in BAD_NAMES}
    for case in BAD_SPECS:
        if not case.keyword.startswith("rule:"):
            plain = case.field.replace("spec.resources.requests.cpu", "spec.resources.requests") \
                .replace("spec.resources.limits.memory", "spec.resources.limits").replace("[1]", "")
            covered.add((plain, case.keyword))
    missing = constraints - covered
    assert not missing, f"schema constraints without a bad-spec case: {sorted(missing)}"


# -- the operator's own checks, walked: each one the API server makes too ----------------------------------------
# Every `raise SpecError` in operator/spec.py and every typed, bounded read of the spec (reader.integer("topK", 5, 1,
# 1000), ...) is found in its source. Each read gets an input of the wrong type (and of a wrong parent, for a nested
# field) and one below and above each bound; the cross-field checks have inputs below. The operator must refuse
# each input, the API server must refuse it too (`kubectl apply` reports what the operator would), and together the
# inputs must reach every raise in spec.py: a check added to the operator alone fails here.
SPEC_TREE = ast.parse(Path(spec_module.__file__).read_text())


class ReaderCall(NamedTuple):
    method: str  # string, integer, number, optional_number, mapping, sequence, uri
    path: str  # the dotted path below spec
    low: float | None = None
    high: float | None = None


def spec_error_sites() -> set[int]:
    """The line of every `raise SpecError(...)` in operator/spec.py."""
    return {node.lineno for node in ast.walk(SPEC_TREE) if isinstance(node, ast.Raise)
            and isinstance(node.exc, ast.Call) and getattr(node.exc.func, "id", None) == "SpecError"}


def reader_calls() -> list[ReaderCall]:
    """Every `reader.METHOD("path", ...)` in operator/spec.py, with its bounds evaluated in the module."""
    found = []
    for node in ast.walk(SPEC_TREE):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "reader"):
            continue
        (path, *rest) = node.args
        assert isinstance(path, ast.Constant) and isinstance(path.value, str), ast.dump(node)
        bounds = [eval(compile(ast.Expression(arg), "spec.py", "eval"), vars(spec_module)) for arg in rest[1:3]]
        found.append(ReaderCall(node.func.attr, path.value, *bounds))
    return sorted(set(found))


# Specs in which each field is meaningful, by the longest matching path prefix.
CONTEXTS: dict[str, dict[str, Any]] = {
    "": DETECT, "window": STREAM, "labels": STREAM, "embeddings": RECOGNIZE, "baseData": RECOGNIZE_BASE,
    "autoscaling": with_(DETECT, autoscaling={"maxReplicas": 4}),
    "autoscaling.target": with_(DETECT, autoscaling={"maxReplicas": 4, "metric": "queue", "target": 4}),
    "autoscaling.prometheus": with_(DETECT, autoscaling={**KEDA_QUEUE, "prometheus": {"address": "http://p:9090"}}),
}
WRONG_TYPE = {"string": 7, "integer": "7", "number": "high", "optional_number": "high", "mapping": ["x"],
              "sequence": "x", "uri": "/m.pt"}


def setting(path: str, value: Any) -> dict[str, Any]:
    prefix = max((p for p in CONTEXTS if path == p or path.startswith(p + ".") or not p), key=len)
    return with_(CONTEXTS[prefix], **{path.replace(".", "__"): value})


def generated_checks() -> dict[str, dict[str, Any]]:
    """id -> spec: a wrong type, a wrong parent and each bound broken, for every read parse_spec makes."""
    checks = {}
    for call in reader_calls():
        checks[f"{call.path} of the wrong type"] = setting(call.path, WRONG_TYPE[call.method])
        if "." in call.path:
            checks[f"{call.path.rpartition('.')[0]} not an object"] = setting(call.path.rpartition(".")[0], "x")
        step = 1 if call.method == "integer" else 0.5
        if call.low is not None:
            checks[f"{call.path} below {call.low}"] = setting(call.path, call.low - step)
        if call.high is not None:
            checks[f"{call.path} above {call.high}"] = setting(call.path, call.high + step)
    return checks


CROSS_FIELD_CHECKS: dict[str, Any] = {
    "spec not an object": "x",
    "no task": {"model": {"uri": "/m.pt"}},
    "unknown task": with_(DETECT, task="segment"),
    "model missing": {"task": "detect"},
    "labels missing": with_(STREAM, labels=None),
    "two galleries": with_(RECOGNIZE, baseData={"uri": "/data"}),
    "gallery on detect": with_(DETECT, embeddings={"uri": "/e.npz"}),
    "window on detect": with_(DETECT, window=3),
    "onnx model on gpus": with_(DETECT, model={"uri": "pvc://models/yolo/m.onnx"}, gpus=2),
    "replicas with autoscaling": with_(DETECT, replicas=2, autoscaling={"maxReplicas": 4}),
    "base data download not an archive": with_(RECOGNIZE_BASE, baseData={"uri": "https://x.org/data.bin"}),
    "uri of no scheme": with_(DETECT, model={"uri": "ftp://b/m.pt"}),
    "labels a folder": with_(STREAM, labels={"uri": "s3://models/labels/"}),
    "base data object not an archive": with_(RECOGNIZE_BASE, baseData={"uri": "gs://models/data.bin"}),
    "service account not a name": with_(DETECT, serviceAccountName="Model_Reader"),
    "model folder without a file": with_(DETECT, model={"uri": "s3://models/yolo/"}),
    "model file dot-dot": with_(DETECT, model={**S3_FOLDER, "file": "../m.onnx"}),
    "model file not a string": with_(DETECT, model={**S3_FOLDER, "file": 7}),
    "storage not an object": with_(DETECT, model={"uri": "s3://models/m.pt", "storage": "x"}),
    "storage on a claim": with_(DETECT, model={"uri": "pvc://c/m.pt", "storage": {"endpoint": "http://s:9000"}}),
    "credentials without a secret name": with_(DETECT, model={"uri": "s3://models/m.pt", "credentials": {}}),
    "endpoint not a URL": with_(DETECT, model={"uri": "s3://models/m.pt", "storage": {"endpoint": "minio:9000"}}),
    "region on gs": with_(DETECT, model={"uri": "gs://models/m.pt", "storage": {"region": "eu"}}),
    "key on s3": with_(DETECT, model={"uri": "s3://models/m.pt", "credentials": {"secretName": "s", "key": "k"}}),
    "uri not a string": with_(DETECT, model={"uri": 7}),
    "dot-dot in a download": with_(DETECT, model={"uri": "https://x.org/a/../m.pt"}),
    "dot-dot in a claim, after a question mark": with_(DETECT, model={"uri": "pvc://models/a?/../m.pt"}),
    "dot-dot in an image path": with_(DETECT, model={"uri": "/opt/../m.pt"}),
    "claim without a path": with_(DETECT, model={"uri": "pvc://models//"}),
    "download ending in a slash": with_(DETECT, model={"uri": "https://x.org/models/"}),
    "download ending in a dot": with_(DETECT, model={"uri": "https://x.org/."}),
    "labels download ending in a dot": with_(STREAM, labels={"uri": "https://x.org/labels/."}),
    "max replicas missing": with_(DETECT, autoscaling={"minReplicas": 2}),
    "min above max": with_(DETECT, autoscaling={"minReplicas": 5, "maxReplicas": 4}),
    "unknown metric": with_(DETECT, autoscaling={"maxReplicas": 4, "metric": "gpu", "target": 1}),
    "unknown engine": with_(DETECT, autoscaling={"maxReplicas": 4, "metric": "queue", "target": 1,
                                                 "engine": "knative"}),
    "target zero": with_(DETECT, autoscaling={"maxReplicas": 4, "metric": "queue", "target": 0}),
    "target too large": with_(DETECT, autoscaling={"maxReplicas": 4, "metric": "queue", "target": 2e6}),
    "prometheus not a URL": with_(DETECT, autoscaling={**KEDA_QUEUE, "prometheus": {"address": "p:9090"}}),
    "cpu with a target": with_(DETECT, autoscaling={"maxReplicas": 4, "target": 3}),
    "queue without a target": with_(DETECT, autoscaling={"maxReplicas": 4, "metric": "queue"}),
    "keda on cpu": with_(DETECT, autoscaling={"maxReplicas": 4, "engine": "keda",
                                              "prometheus": {"address": "http://p:9090"}}),
    "keda without prometheus": with_(DETECT, autoscaling=KEDA_QUEUE),
    "rollout step a string": with_(DETECT, rollout={"steps": ["weight 10"]}),
    "rollout step weight a string": with_(DETECT, rollout={"steps": [{"weight": "10"}]}),
    "rollout step shadow a bool": with_(DETECT, rollout={"steps": [{"shadow": True}]}),
    "rollout parent not an object": with_(DETECT, rollout={"gateway": {"parentRefs": ["my-gateway"]}}),
    "rollout parent name a number": with_(DETECT, rollout={"gateway": {"parentRefs": [{"name": 7}]}}),
    "rollout parent port a string": with_(DETECT, rollout={"gateway": {"parentRefs": [{"name": "g", "port": "443"}]}}),
    **{f"rollout: {bad.id}": with_(DETECT, rollout=bad.rollout) for bad in BAD_ROLLOUTS},
}
NAME_CHECK = ("9lives", DETECT)  # validate_name, the one check of metadata
OPERATOR_CHECKS = {**generated_checks(), **CROSS_FIELD_CHECKS}


def refusing_line(name: str, spec: Any) -> int:
    """The line of operator/spec.py whose `raise SpecError` refuses this resource."""
    try:
        validate_name(name)
        parse_spec(spec)
    except SpecError as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == spec_module.__file__]
        assert frames[-1].lineno is not None
        return frames[-1].lineno
    raise AssertionError(f"the operator accepted {name} {spec}")


def test_the_walk_reaches_every_check_of_the_operator() -> None:
    calls = reader_calls()
    assert {c.method for c in calls} == set(WRONG_TYPE) and len(calls) >= 30, calls
    assert ReaderCall("integer", "topK", 1, 1000) in calls  # the bounds are read from the source
    reached = {refusing_line("svc", spec) for spec in OPERATOR_CHECKS.values()} | {refusing_line(*NAME_CHECK)}
    missing = spec_error_sites() - reached
    assert not missing, f"checks of operator/spec.py no input here reaches (lines {sorted(missing)}): add one"


@pytest.mark.parametrize("check", sorted(OPERATOR_CHECKS))
def test_every_check_of_the_operator_is_made_by_the_api_server(api: Api, ns: str, check: str) -> None:
    spec = OPERATOR_CHECKS[check]
    refusing_line("svc", spec)  # the operator refuses it...
    resource = obj(None)
    resource["spec"] = copy.deepcopy(spec)
    assert refusals(api, ns, resource), f"...and the API server accepted it: {spec}"  # ...and so does the server


def test_the_name_check_of_the_operator_is_made_by_the_api_server(api: Api, ns: str) -> None:
    name, spec = NAME_CHECK
    refusing_line(name, spec)
    assert refusals(api, ns, obj(copy.deepcopy(spec), name))


# -- status, through its subresource only -----------------------------------------------------------------------
BAD_STATUSES: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown phase", {"phase": "Running"}, "status.phase",
     'Unsupported value: "Running": supported values: "Pending", "Progressing", "Ready", "Idle", "Degraded", "Failed"'),
    ("condition without type", {"conditions": [{"status": "True"}]}, "status.conditions[0].type", "Required value"),
    ("condition without status", {"conditions": [{"type": "Ready"}]}, "status.conditions[0].status",
     "Required value"),
    ("condition status", {"conditions": [{"type": "Ready", "status": "Yes"}]}, "status.conditions[0].status",
     'Unsupported value: "Yes": supported values: "True", "False", "Unknown"'),
    ("condition twice", {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}]},
     "status.conditions[1]", "Duplicate value"),
]


@pytest.fixture(scope="module")
def status_target(api: Api, ns: str) -> str:
    api.create(is_path(ns), obj(dict(DETECT), "status-target"))
    return is_path(ns, "status-target")


def test_every_phase_the_operator_writes_is_accepted(api: Api, status_target: str) -> None:
    for phase in PHASES:
        written = api.patch(status_target + "/status", {"status": {"phase": phase}})
        assert written["status"]["phase"] == phase


@pytest.mark.parametrize(("status", "field", "message"), [(s, f, m) for _, s, f, m in BAD_STATUSES],
                         ids=[case[0] for case in BAD_STATUSES])
def test_a_bad_status_is_refused(api: Api, status_target: str, status: dict[str, Any], field: str,
                                 message: str) -> None:
    code, body = api.call("PATCH", status_target + "/status?dryRun=All", {"status": status})
    assert code == 422, (code, body)
    causes = [(c.get("field"), c["message"]) for c in body["details"]["causes"] if NOT_CHECKED not in c["message"]]
    assert len(causes) == 1 and causes[0][0] == field and message in causes[0][1], causes


def test_status_is_written_only_through_its_subresource(api: Api, ns: str) -> None:
    path = is_path(ns, "status-only")
    created = api.create(is_path(ns), obj(dict(DETECT), "status-only"))
    assert "status" not in created  # a status sent with the create is dropped, too
    generation = created["metadata"]["generation"]
    code, body = api.call("PATCH", path, {"status": {"phase": "Ready", "readyReplicas": 3}})
    assert code == 200 and "status" not in body, body
    written = api.patch(path + "/status", {"status": {"phase": "Ready", "readyReplicas": 3},
                                           "spec": {"gpus": 2}})
    assert written["status"] == {"phase": "Ready", "readyReplicas": 3}
    assert written["spec"]["gpus"] == 0  # and /status cannot change the spec
    assert written["metadata"]["generation"] == generation  # nor does a status write count as a new generation
    changed = api.patch(path, {"spec": {"gpus": 1}})
    assert changed["metadata"]["generation"] == generation + 1
    assert changed["status"] == {"phase": "Ready", "readyReplicas": 3}
    with_status = obj(dict(DETECT), "status-on-create")
    with_status["status"] = {"phase": "Ready"}
    assert "status" not in api.create(is_path(ns), with_status)


def test_the_scale_subresource_reads_spec_and_status(api: Api, kubectl: Kubectl, ns: str) -> None:
    path = is_path(ns, "scaled")
    api.create(is_path(ns), obj(with_(DETECT, replicas=1), "scaled"))
    api.patch(path + "/status", {"status": {"replicas": 1, "selector": "kubeinfer.io/inferenceservice=scaled"}})
    kubectl("scale", "-n", ns, "kisvc/scaled", "--replicas=4")
    scale = api.get(path + "/scale")
    assert scale is not None
    assert (scale["spec"]["replicas"], scale["status"]["replicas"], scale["status"]["selector"]) == (
        4, 1, "kubeinfer.io/inferenceservice=scaled")
    assert api.get(path)["spec"]["replicas"] == 4
    # Through /scale too, the bounds hold.
    code, body = api.call("PATCH", path + "/scale", {"spec": {"replicas": 1001}})
    assert code == 422 and "spec.replicas" in body["message"] and f"{LE} 1000" in body["message"], body


@pytest.mark.parametrize("case", ["detect", "autoscaled", "autoscaled-keda"])
def test_the_scale_subresource_answers_for_specs_without_replicas(api: Api, kubectl: Kubectl, ns: str,
                                                                   case: str) -> None:
    """The default spec and every autoscaled one leave spec.replicas out: /scale still reads it (defaulted)."""
    name = f"unscaled-{case}"
    api.create(is_path(ns), obj(copy.deepcopy(MINIMAL[case][0]), name))
    scale = kubectl.json("get", "-n", ns, "kisvc", name, "--subresource=scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1, scale
    assert api.get(is_path(ns, name, "scale"))["spec"]["replicas"] == 1
    if case.startswith("autoscaled"):
        # The autoscaler owns the count: scaling by hand is refused, with the rule's message.
        refused = kubectl("scale", "-n", ns, f"kisvc/{name}", "--replicas=3", check=False)
        assert refused.returncode != 0 and "spec.replicas stays at its default 1" in refused.stderr, refused.stderr


# -- kubectl: strict fields, explain, columns ---------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "unknown"), [
    (with_(DETECT, treshold=0.3), "spec.treshold"),
    (with_(DETECT, model={"uri": "/m.pt", "format": "onnx"}), "spec.model.format"),
    (with_(DETECT, batching={"maxBatchSize": 4, "maxDelay": 3}), "spec.batching.maxDelay"),
])
def test_unknown_fields_are_refused_by_kubectls_strict_validation(kubectl: Kubectl, api: Api, ns: str,
                                                                  spec: dict[str, Any], unknown: str) -> None:
    resource = obj(spec, "strict")
    refused = kubectl.apply(resource, "-n", ns, check=False)
    assert refused.returncode != 0
    assert f'unknown field "{unknown}"' in refused.stderr, refused.stderr
    assert api.get(is_path(ns, "strict")) is None
    # Without strict validation the server accepts the object and prunes the field: a typo would be lost silently.
    pruned = json.loads(kubectl.apply(resource, "-n", ns, "--validate=false", "--dry-run=server", "-o",
                                      "json").stdout)
    node = pruned
    *parents, leaf = unknown.split(".")
    for part in parents:
        node = node[part]
    assert leaf not in node


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_every_example_is_accepted_by_the_api_server_and_the_operator(kubectl: Kubectl, ns: str,
                                                                      path: Path) -> None:
    done = kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(path))
    resource = load_yaml(path)
    assert f"inferenceservice.kubeinfer.io/{resource['metadata']['name']} created (server dry run)" in done.stdout
    assert operator_accepts(resource)


def test_there_is_an_example_per_seed_system() -> None:
    tasks = sorted((load_yaml(p)["spec"]["task"], load_yaml(p)["spec"].get("gpus", 0) > 0) for p in EXAMPLE_FILES)
    assert tasks == [("detect", True), ("recognize", False), ("recognize", False), ("stream-classify", False),
                     ("video", False)]
    specs = [load_yaml(p)["spec"] for p in EXAMPLE_FILES]
    assert any("embeddings" in s for s in specs) and any("baseData" in s for s in specs)  # both gallery kinds


def test_kubectl_explain_documents_the_fields(kubectl: Kubectl, crd_applied: str) -> None:
    batching = crd_schema()["properties"]["spec"]["properties"]["batching"]
    explained = kubectl("explain", "inferenceservice.spec.batching").stdout
    assert "FIELD: batching <Object>" in explained, explained
    assert batching["description"] in " ".join(explained.split())
    for field, node in batching["properties"].items():
        kind = {"integer": "integer", "number": "number"}[node["type"]]
        assert f"{field}\t<{kind}>" in explained, explained
        assert " ".join(node["description"].split()) in " ".join(explained.split())
    spec = kubectl("explain", "kisvc.spec").stdout
    for field in crd_schema()["properties"]["spec"]["properties"]:
        assert f"  {field}\t<" in spec, (field, spec)
    assert "task\t<string> -required-" in spec
    assert "enum: detect, classify, stream-classify, recognize" in spec


def test_schema_every_field_is_described() -> None:
    """The API server accepts fields without descriptions; `kubectl explain` would then show nothing."""
    for path, node in schema_nodes(crd_schema()):
        if not path.endswith("{}") and path != "metadata":  # kubectl explains metadata as ObjectMeta
            assert node.get("description"), f"{path or 'root'} has no description for `kubectl explain`"


def test_kubectl_get_prints_the_columns(api: Api, kubectl: Kubectl, ns: str) -> None:
    api.create(is_path(ns), obj(with_(STREAM, replicas=2), "columns"))
    api.patch(is_path(ns, "columns", "status"), {"status": {
        "phase": "Ready", "readyReplicas": 2, "replicas": 2, "endpoint": f"columns.{ns}.svc:8001"}})
    table = kubectl("get", "kisvc", "columns", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "TASK", "READY", "PHASE", "ENDPOINT", "ROLLOUT", "AGE"]
    assert table[1].split()[:5] == ["columns", "stream-classify", "2", "Ready", f"columns.{ns}.svc:8001"]

    def rollout_cell() -> str:
        header, row = kubectl("get", "kisvc", "columns", "-n", ns).stdout.splitlines()
        return row[header.index("ROLLOUT"):header.index("AGE")].strip()

    assert rollout_cell() == ""  # no rollout, nothing shown
    # A progressive rollout's step, as the operator writes it into status.rollout (free-form besides step).
    api.patch(is_path(ns, "columns", "status"), {"status": {"rollout": {"step": "weight 10%", "revision": "f6e5d4c3b2",
                                                                        "since": "2026-12-06T20:00:00Z"}}})
    assert rollout_cell() == "weight 10%"
    stored = api.get(is_path(ns, "columns"))
    assert stored is not None and stored["status"]["rollout"]["revision"] == "f6e5d4c3b2"  # kept, not pruned
    # The category: `kubectl get kubeinfer` lists InferenceServices too.
    category = kubectl("get", "kubeinfer", "-n", ns, "-o", "name").stdout.split()
    assert "inferenceservice.kubeinfer.io/columns" in category


# -- spec.rollout: what the API server stores, the operator parses ------------------------------------------------
@pytest.mark.parametrize("good", GOOD_ROLLOUTS, ids=[good.id for good in GOOD_ROLLOUTS])
def test_every_good_rollout_is_stored_defaulted_and_parsed_alike(api: Api, ns: str, good: Any) -> None:
    name = "rollout-" + "-".join(good.id.replace(",", "").split())
    api.create(is_path(ns), obj(with_(DETECT, rollout=copy.deepcopy(good.rollout)), name))
    stored = api.get(is_path(ns, name))
    assert stored is not None
    assert stored["spec"]["rollout"] == good.stored
    assert parse_spec(stored["spec"]).rollout == parse_spec(with_(DETECT, rollout=good.rollout)).rollout == good.parsed


def test_a_spec_without_rollout_stays_without_one(api: Api, ns: str) -> None:
    """No default creates spec.rollout: an InferenceService rolls out as before unless it asks for a rollout."""
    api.create(is_path(ns), obj(dict(DETECT), "no-rollout"))
    stored = api.get(is_path(ns, "no-rollout"))
    assert stored is not None and "rollout" not in stored["spec"]
    assert parse_spec(stored["spec"]).rollout is None


# -- the operator and the API server agree ---------------------------------------------------------------------
def variations() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in EXAMPLE_FILES:
        base = load_yaml(path)
        for i, change in enumerate(({"window": 5}, {"replicas": 3}, {"autoscaling": None}, {"labels": None},
                                    {"model": None}, {"task": "classify"}, {"task": "video"},
                                    {"embeddings": {"uri": "/g.npz"}}, {"gpus": 4}, {"baseData": None},
                                    {"task": "stream-classify"}, {"thresholds": {"similarity": -1}},
                                    {"autoscaling": {"minReplicas": 2, "maxReplicas": 2}}, {"replicas": 0})):
            variant = copy.deepcopy(base)
            variant["metadata"] = {"name": f"{base['metadata']['name']}-{i}"}
            for key, value in change.items():
                if value is None:
                    variant["spec"].pop(key, None)
                else:
                    variant["spec"][key] = value
            out.append(variant)
    return out


def test_the_operator_and_the_api_server_agree_on_variations_of_the_examples(api: Api, ns: str) -> None:
    corpus = variations()
    verdicts = [(refusals(api, ns, v) == [], operator_accepts(v)) for v in corpus]
    disagreements = [(v["metadata"]["name"], v["spec"], refusals(api, ns, v))
                     for v, (server, operator) in zip(corpus, verdicts, strict=True) if server != operator]
    assert not disagreements, disagreements
    assert {server for server, _ in verdicts} == {True, False}  # the corpus has both kinds


def test_what_the_api_server_stores_the_operator_parses(api: Api, ns: str) -> None:
    """Every accepted variation, created for real and read back defaulted, parses to the same spec."""
    accepted = [v for v in variations() if operator_accepts(v)]
    assert len(accepted) >= 20
    for variant in accepted:
        variant["metadata"]["name"] = "stored-" + variant["metadata"]["name"]
        api.create(is_path(ns), variant)
        stored = api.get(is_path(ns, variant["metadata"]["name"]))
        assert stored is not None
        assert parse_spec(stored["spec"]) == parse_spec(variant["spec"]), variant["metadata"]["name"]


