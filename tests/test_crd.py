"""The CRD: a structural schema that teaches the API, accepts the examples and refuses bad specs.

The OpenAPI part is checked with jsonschema (unknown fields refused, as kubectl's strict field validation
does), the x-kubernetes-validations rules are evaluated with cel-python, and the operator's own validation
(``parse_spec``) must reach the same verdict as the CRD on every spec here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest
from operator_support import EXAMPLE_FILES, apply_defaults, crd_schema, crd_verdict, load_crd, load_yaml

from kubeinfer.operator import spec as spec_module
from kubeinfer.operator.spec import SpecError, parse_spec, validate_name
from kubeinfer.operator.status import PHASES


def obj(spec: dict[str, Any], name: str = "svc") -> dict[str, Any]:
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def operator_accepts(resource: dict[str, Any]) -> bool:
    try:
        validate_name(resource["metadata"]["name"])
        parse_spec(resource["spec"])
    except SpecError:
        return False
    return True


def schema_nodes(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, sub in (node.get("properties") or {}).items():
        found += schema_nodes(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        found += schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += schema_nodes(node["additionalProperties"], f"{path}{{}}")
    return found


def test_crd_names_scope_subresources_and_columns() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == "inferenceservices.kubeinfer.io"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("kubeinfer.io", "Namespaced")
    assert spec["names"]["kind"] == "InferenceService" and spec["names"]["plural"] == "inferenceservices"
    assert spec["names"]["shortNames"] == ["kisvc"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"Task": ".spec.task", "Ready": ".status.readyReplicas", "Phase": ".status.phase",
                       "Endpoint": ".status.endpoint", "Age": ".metadata.creationTimestamp"}


def test_schema_is_structural_and_every_field_is_described() -> None:
    for path, node in schema_nodes(crd_schema()):
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{path or 'root'} has no type (a structural schema needs one everywhere)"
        if not path.endswith("{}"):
            assert node.get("description"), f"{path or 'root'} has no description for `kubectl explain`"
    status_phase = crd_schema()["properties"]["status"]["properties"]["phase"]
    assert tuple(status_phase["enum"]) == PHASES


def test_task_enum_and_defaults_agree_with_the_operator() -> None:
    props = crd_schema()["properties"]["spec"]["properties"]
    assert tuple(props["task"]["enum"]) == spec_module.TASKS
    defaults = {
        ("thresholds", "confidence"): spec_module.DEFAULT_CONFIDENCE,
        ("thresholds", "iou"): spec_module.DEFAULT_IOU,
        ("thresholds", "similarity"): spec_module.DEFAULT_SIMILARITY,
        ("batching", "maxBatchSize"): spec_module.DEFAULT_MAX_BATCH_SIZE,
        ("batching", "maxDelayMs"): spec_module.DEFAULT_MAX_DELAY_MS,
        ("grpc", "maxMessageBytes"): spec_module.DEFAULT_MAX_MESSAGE_BYTES,
        ("grpc", "workers"): spec_module.DEFAULT_WORKERS,
        ("baseData", "batchSize"): spec_module.DEFAULT_GALLERY_BATCH_SIZE,
        ("autoscaling", "targetCPUUtilization"): spec_module.DEFAULT_TARGET_CPU,
    }
    for (parent, field), value in defaults.items():
        assert props[parent]["properties"][field]["default"] == value, f"{parent}.{field}"
    assert props["topK"]["default"] == spec_module.DEFAULT_TOP_K
    assert props["gpus"]["default"] == 0
    assert "default" not in props["window"] and "default" not in props["replicas"]  # CEL rules depend on presence


@pytest.mark.parametrize("spec", [
    {"task": "detect", "model": {"uri": "/m.pt"}},
    {"task": "stream-classify", "model": {"uri": "pvc://m/c.pt"}, "labels": {"uri": "pvc://m/l.txt"}},
    {"task": "recognize", "model": {"uri": "/e.onnx"}, "baseData": {"uri": "https://x.org/a.zip"}},
    {"task": "video"},
])
def test_the_api_servers_defaults_and_the_operators_defaults_are_the_same(spec: dict[str, Any]) -> None:
    defaulted = apply_defaults(crd_schema()["properties"]["spec"], spec)
    assert defaulted != spec  # the CRD did default something
    assert parse_spec(defaulted) == parse_spec(spec)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_examples_are_valid(path: Path) -> None:
    resource = load_yaml(path)
    assert crd_verdict(resource) == []
    assert operator_accepts(resource)


def test_there_is_an_example_per_seed_system() -> None:
    tasks = sorted((load_yaml(p)["spec"]["task"], load_yaml(p)["spec"].get("gpus", 0) > 0) for p in EXAMPLE_FILES)
    assert tasks == [("detect", True), ("recognize", False), ("recognize", False), ("stream-classify", False),
                     ("video", False)]
    specs = [load_yaml(p)["spec"] for p in EXAMPLE_FILES]
    assert any("embeddings" in s for s in specs) and any("baseData" in s for s in specs)  # both gallery kinds


BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("no task", {"model": {"uri": "/m.pt"}}, "task"),
    ("unknown task", {"task": "segment", "model": {"uri": "/m.pt"}}, "segment"),
    ("model missing", {"task": "detect"}, "spec.model is required unless the task is video"),
    ("labels missing", {"task": "classify", "model": {"uri": "/m.pt"}}, "need spec.labels"),
    ("gallery missing", {"task": "recognize", "model": {"uri": "/m.pt"}}, "needs exactly one gallery"),
    ("two galleries", {"task": "recognize", "model": {"uri": "/m.pt"}, "embeddings": {"uri": "/e.npz"},
                       "baseData": {"uri": "/data"}}, "needs exactly one gallery"),
    ("gallery on detect", {"task": "detect", "model": {"uri": "/m.pt"}, "embeddings": {"uri": "/e.npz"}},
     "only used by task recognize"),
    ("window on classify", {"task": "classify", "model": {"uri": "/m.pt"}, "labels": {"uri": "/l.txt"},
                            "window": 3}, "spec.window is only used by task stream-classify"),
    ("replicas and autoscaling", {"task": "detect", "model": {"uri": "/m.pt"}, "replicas": 2,
                                  "autoscaling": {"maxReplicas": 4}}, "not both"),
    ("min above max", {"task": "detect", "model": {"uri": "/m.pt"}, "autoscaling": {"minReplicas": 5,
                                                                                     "maxReplicas": 4}},
     "minReplicas must not exceed maxReplicas"),
    ("max missing", {"task": "detect", "model": {"uri": "/m.pt"}, "autoscaling": {"minReplicas": 1}},
     "maxReplicas"),
    ("confidence above 1", {"task": "detect", "model": {"uri": "/m.pt"}, "thresholds": {"confidence": 1.2}}, "1.2"),
    ("negative gpus", {"task": "detect", "model": {"uri": "/m.pt"}, "gpus": -1}, "-1"),
    ("s3 uri", {"task": "detect", "model": {"uri": "s3://b/m.pt"}}, "does not match"),
    ("relative path", {"task": "detect", "model": {"uri": "models/m.pt"}}, "does not match"),
    ("base data not an archive", {"task": "recognize", "model": {"uri": "/m.pt"},
                                  "baseData": {"uri": "https://x.org/data.bin"}}, "must be a .tar"),
    ("zero batch", {"task": "detect", "model": {"uri": "/m.pt"}, "batching": {"maxBatchSize": 0}}, "0"),
    ("tiny messages", {"task": "detect", "model": {"uri": "/m.pt"}, "grpc": {"maxMessageBytes": 10}}, "10"),
]


@pytest.mark.parametrize(("spec", "expected"), [(s, e) for _, s, e in BAD_SPECS], ids=[n for n, _, _ in BAD_SPECS])
def test_bad_specs_are_refused_by_the_crd_and_by_the_operator(spec: dict[str, Any], expected: str) -> None:
    resource = obj(spec)
    verdict = crd_verdict(resource)
    assert verdict, "the CRD accepted a bad spec"
    assert any(expected in reason for reason in verdict), verdict
    assert not operator_accepts(resource)


def test_unknown_fields_are_refused() -> None:
    assert crd_verdict(obj({"task": "detect", "model": {"uri": "/m.pt"}, "treshold": 0.3}))
    assert crd_verdict(obj({"task": "detect", "model": {"uri": "/m.pt", "format": "onnx"}}))


@pytest.mark.parametrize(("name", "ok"), [("svc", True), ("a" * 58, True), ("a" * 59, False), ("9lives", False)])
def test_names_are_checked_by_a_root_cel_rule(name: str, ok: bool) -> None:
    resource = obj({"task": "detect", "model": {"uri": "/m.pt"}}, name=name)
    assert (crd_verdict(resource) == []) is ok
    assert operator_accepts(resource) is ok


def test_every_cel_rule_compiles() -> None:
    environment = celpy.Environment()
    rules = [rule["rule"] for _, node in schema_nodes(crd_schema())
             for rule in node.get("x-kubernetes-validations") or []]
    assert len(rules) >= 9
    for rule in rules:
        environment.compile(rule)


def test_the_operator_and_the_crd_agree_on_variations_of_the_examples() -> None:
    variations: list[dict[str, Any]] = []
    for path in EXAMPLE_FILES:
        base = load_yaml(path)
        for change in ({"window": 5}, {"replicas": 3}, {"autoscaling": None}, {"labels": None}, {"model": None},
                       {"task": "classify"}, {"task": "video"}, {"embeddings": {"uri": "/g.npz"}}, {"gpus": 4}):
            variant = copy.deepcopy(base)
            for key, value in change.items():
                if value is None:
                    variant["spec"].pop(key, None)
                else:
                    variant["spec"][key] = value
            variations.append(variant)
    verdicts = [(crd_verdict(v) == [], operator_accepts(v)) for v in variations]
    assert all(crd == operator for crd, operator in verdicts), [
        (v["metadata"]["name"], v["spec"]) for v, (c, o) in zip(variations, verdicts, strict=True) if c != o]
    assert {crd for crd, _ in verdicts} == {True, False}  # the corpus has both kinds
