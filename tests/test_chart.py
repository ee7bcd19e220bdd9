"""The Helm chart, checked with the real helm: lint, render, Kubernetes schemas, and what it promises.

Default values and ``ci/full-values.yaml`` (every option on) are both rendered; each object is
validated against the Kubernetes OpenAPI schemas of the oldest and newest supported versions.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_support import (
    CHART,
    DASHBOARDS,
    FULL_VALUES,
    NAMESPACE,
    REPO,
    find,
    helm,
    render,
    validate_monitoring_objects,
)

# Chart.yaml says kubeVersion >=1.28 (the CRD's CEL rules use fieldPath); the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
# Objects of custom resources, which kubernetes-validate has no schema for: kopf.dev ones are checked
# against the CRDs the chart ships, monitoring.coreos.com ones by test_monitoring_objects_only_when_enabled
# (Prometheus Operator CRD schemas, through node) and, through Prometheus itself, by
# test_dashboards_prometheus.py.
NO_K8S_SCHEMA = {"monitoring.coreos.com/v1", "kopf.dev/v1"}


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def full_objects() -> list[dict[str, Any]]:
    return render(values=FULL_VALUES)


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_helm_lint_strict(values: Any) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values:
        args += ["--values", str(values)]
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("variant", ["default", "full"])
def test_every_object_validates_against_kubernetes_schemas(variant: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(f"{variant}_objects")
    kinds = {o["kind"] for o in objects}
    expected = {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                "Service", "NetworkPolicy", "ConfigMap"}
    assert expected <= kinds, expected - kinds
    checked = 0
    for obj in objects:
        if obj["apiVersion"] in NO_K8S_SCHEMA:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} invalid for Kubernetes {version}: {exc}")
        checked += 1
    assert checked >= len(expected)


def test_validation_catches_a_broken_object(default_objects: list[dict[str, Any]]) -> None:
    """The schema check above would notice a mistake (so its passing means something)."""
    broken = json.loads(json.dumps(find(default_objects, "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "metrics"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_operator_runs_unprivileged_with_read_only_root(default_objects: list[dict[str, Any]]) -> None:
    pod = find(default_objects, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(default_objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} and set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("variant", ["default", "full"])
def test_probes_and_ports_follow_the_operator_flags(variant: str, request: pytest.FixtureRequest) -> None:
    """The kubelet probes kopf's /healthz on the port the operator was told to serve it on; same for metrics."""
    objects = request.getfixturevalue(f"{variant}_objects")
    values = yaml.safe_load((FULL_VALUES if variant == "full" else CHART / "values.yaml").read_text())["operator"]
    container = operator_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": values["metricsPort"], "liveness": values["livenessPort"]}
    assert f"--liveness-port={values['livenessPort']}" in container["args"]
    assert f"--metrics-port={values['metricsPort']}" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    service = find(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= find(objects, "Deployment")["spec"]["template"]["metadata"][
        "labels"].items()


def test_default_watches_all_namespaces_full_watches_listed(default_objects: list[dict[str, Any]],
                                                            full_objects: list[dict[str, Any]]) -> None:
    assert not [a for a in operator_container(default_objects)["args"] if a.startswith("--namespace")]
    full_args = operator_container(full_objects)["args"]
    assert [a for a in full_args if a.startswith("--namespace")] == ["--namespace=vision",
                                                                     "--namespace=vision-staging"]
    assert "--peering=kubeinfer" in full_args and "--peering-lifetime=15" in full_args
    assert not [a for a in operator_container(default_objects)["args"] if a.startswith("--peering")]
    assert "--log-format=plain" in full_args


def test_the_node_cache_is_off_unless_a_path_is_given(default_objects: list[dict[str, Any]],
                                                      full_objects: list[dict[str, Any]]) -> None:
    assert not [arg for arg in operator_container(default_objects)["args"] if arg.startswith("--node-cache")]
    assert {"--node-cache-path=/var/cache/kubeinfer", "--node-cache-max-bytes=10737418240"} <= set(
        operator_container(full_objects)["args"])


def test_images_default_to_app_version_and_digest_pins(default_objects: list[dict[str, Any]],
                                                       full_objects: list[dict[str, Any]]) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    container = operator_container(default_objects)
    assert container["image"] == f"ghcr.io/kubeinfer/kubeinfer-operator:{app_version}"
    assert container["imagePullPolicy"] == "Always"
    assert f"--runtime-gpu-image=ghcr.io/kubeinfer/kubeinfer-runtime:{app_version}" in container["args"]
    assert f"--runtime-cpu-image=ghcr.io/kubeinfer/kubeinfer-runtime:{app_version}-cpu" in container["args"]
    full = operator_container(full_objects)
    assert full["image"].startswith("registry.example.com/kubeinfer/kubeinfer-operator@sha256:")
    assert "--runtime-gpu-image=registry.example.com/kubeinfer/kubeinfer-runtime:0.1.0-cuda13" in full["args"]
    assert ("--runtime-cpu-image=registry.example.com/kubeinfer/kubeinfer-runtime@sha256:2b7c1bd8a7f4d2e3c5b6a8d9e0f1"
            "a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3") in full["args"]


def test_default_runtime_resources_reach_the_operator(full_objects: list[dict[str, Any]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's runtime.defaultResources become the operator's --default-resources, through its env."""
    env = {e["name"]: e.get("value") for e in operator_container(full_objects)["env"]}
    values = yaml.safe_load(FULL_VALUES.read_text())["runtime"]["defaultResources"]
    assert json.loads(env["KUBEINFER_OPERATOR_DEFAULT_RESOURCES"]) == values
    monkeypatch.setenv("KUBEINFER_OPERATOR_DEFAULT_RESOURCES", env["KUBEINFER_OPERATOR_DEFAULT_RESOURCES"])
    from kubeinfer.cli import build_parser

    args = build_parser().parse_args(["operator"])
    assert hasattr(args, "default_resources"), "kubeinfer operator has no --default-resources flag"
    parsed = args.default_resources
    assert (json.loads(parsed) if isinstance(parsed, str) else parsed) == values


def test_monitoring_objects_only_when_enabled(default_objects: list[dict[str, Any]],
                                              full_objects: list[dict[str, Any]]) -> None:
    assert not [o for o in default_objects if o["apiVersion"] in NO_K8S_SCHEMA]
    pod_monitor = find(full_objects, "PodMonitor")
    service_monitor = find(full_objects, "ServiceMonitor")
    for monitor in (pod_monitor, service_monitor):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The PodMonitor selects runtime pods in the watched namespaces, by the label the operator sets.
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "kubeinfer-runtime"}
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["vision", "vision-staging"]}
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "10s")
    targets = {r["targetLabel"] for r in endpoint["relabelings"]}
    assert targets == {"namespace", "pod", "inferenceservice", "revision"}
    # Both are valid against the Prometheus Operator's CRD schemas, which do notice mistakes.
    assert validate_monitoring_objects([pod_monitor, service_monitor]) == {
        "PodMonitor/kubeinfer-runtimes": None, "ServiceMonitor/kubeinfer-operator": None}
    broken = json.loads(json.dumps(pod_monitor))
    broken["spec"]["podMetricsEndpoints"][0]["interval"] = "every minute"
    assert "interval" in (validate_monitoring_objects([broken])["PodMonitor/kubeinfer-runtimes"] or "")
    # The ServiceMonitor selects the operator's metrics Service on its named port.
    service = find(full_objects, "Service")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_dashboards_ship_as_sidecar_configmaps(default_objects: list[dict[str, Any]],
                                               full_objects: list[dict[str, Any]]) -> None:
    files = sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert files == ["operator.json", "runtime.json"]
    for objects, namespace, folder in ((default_objects, NAMESPACE, "kubeinfer"),
                                       (full_objects, "monitoring", "Inference")):
        maps = [o for o in objects if o["kind"] == "ConfigMap" and "-dashboard-" in o["metadata"]["name"]]
        assert len(maps) == len(files)
        for config_map in maps:
            assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
            assert config_map["metadata"]["namespace"] == namespace
            assert config_map["metadata"]["annotations"]["grafana_folder"] == folder
            (key, text), = config_map["data"].items()
            source = DASHBOARDS / key.removeprefix("kubeinfer-")
            assert json.loads(text) == json.loads(source.read_text())


def test_dashboards_can_be_switched_off_and_relabelled() -> None:
    off = render("--set", "monitoring.dashboards.enabled=false")
    assert not [o for o in off if o["kind"] == "ConfigMap"]
    relabelled = render("--set", "monitoring.dashboards.label=kubeinfer_dashboard",
                        "--set", "monitoring.dashboards.labelValue=yes")
    maps = [o for o in relabelled if o["kind"] == "ConfigMap"]
    assert maps and all(m["metadata"]["labels"]["kubeinfer_dashboard"] == "yes" for m in maps)


@pytest.mark.parametrize(("setting", "message"), [
    ("operator.logFormat=xml", "logFormat"),
    ("operator.metricsPort=0", "metricsPort"),
    ("operator.watchNamespaces[0]=Not_A_Namespace", "watchNamespaces"),
    ("operator.image.digest=latest", "digest"),
    ("monitoring.podMonitor.interval=often", "interval"),
    ("operator.unknownKey=1", "unknownKey"),
    ("prometheusAdapter.rules.namespace=Not_A_Namespace", "namespace"),
    ("prometheusAdapter.rules.enabled=maybe", "enabled"),
    ("operator.peering.lifetime=1", "lifetime"),
    ("operator.peering=kubeinfer", "peering"),  # the value before peering.enabled
])
def test_schema_rejects_bad_values(setting: str, message: str) -> None:
    result = helm("template", "x", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0, f"{setting} was accepted"
    assert message in result.stderr, result.stderr


def test_several_replicas_need_peering() -> None:
    result = helm("template", "x", str(CHART), "--set", "operator.replicas=2", check=False)
    assert result.returncode != 0 and "operator.peering.enabled" in result.stderr, result.stderr
    objects = render("--set", "operator.replicas=2", "--set", "operator.peering.enabled=true")
    assert find(objects, "Deployment")["spec"]["replicas"] == 2


def test_notes_say_what_to_do_next() -> None:
    out = helm("install", "kubeinfer", str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
               "--values", str(FULL_VALUES)).stdout
    notes = out.split("NOTES:", 1)[1]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/kubeinfer-operator" in notes
    assert "kubectl apply -n vision" in notes
    assert "namespaces: vision, vision-staging" in notes
    assert "PodMonitor kubeinfer-runtimes" in notes
    assert "grafana_dashboard=1 in namespace monitoring" in notes


def test_chart_crd_is_the_repository_crd() -> None:
    """One source of truth: the chart's copy of every kubeinfer.io CRD is byte-identical to crds/."""
    repository = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    assert repository, "crds/ holds no CRD"
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert chart.keys() == repository.keys(), "copy the CRDs: cp crds/*.yaml charts/kubeinfer/crds/"
    for name, content in repository.items():
        assert chart[name] == content, f"charts/kubeinfer/crds/{name} differs from crds/{name}: copy it again"


def test_kopf_peering_crds_come_with_peering_only(default_objects: list[dict[str, Any]]) -> None:
    """kopf's peering CRDs are a subchart's crds/, installed only with operator.peering.enabled."""
    def crds(objects: list[dict[str, Any]]) -> list[str]:
        return sorted(o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition")

    assert crds(default_objects) == ["inferenceservices.kubeinfer.io"]
    assert crds(render("--set", "operator.peering.enabled=true")) == [
        "clusterkopfpeerings.kopf.dev", "inferenceservices.kubeinfer.io", "kopfpeerings.kopf.dev"]


def test_custom_objects_match_the_chart_crds(full_objects: list[dict[str, Any]]) -> None:
    """Objects of CRDs the chart ships (kopf peerings) validate against those CRDs' schemas."""
    crds = {(c["spec"]["group"], c["spec"]["names"]["kind"]): c for c in full_objects
            if c["kind"] == "CustomResourceDefinition"}
    peerings = [o for o in full_objects if o["apiVersion"] == "kopf.dev/v1"]
    assert [o["kind"] for o in peerings] == ["KopfPeering", "KopfPeering"]  # one per watched namespace
    for obj in peerings:
        crd = crds[("kopf.dev", obj["kind"])]
        assert (crd["spec"]["scope"] == "Namespaced") == ("namespace" in obj["metadata"])
        (version,) = crd["spec"]["versions"]
        jsonschema.validate(obj, version["schema"]["openAPIV3Schema"])
    cluster = render("--set", "operator.peering.enabled=true", "--set", "operator.replicas=2")
    assert [o["kind"] for o in cluster if o["apiVersion"] == "kopf.dev/v1"] == ["ClusterKopfPeering"]


def test_pod_monitor_selects_what_the_operator_renders(full_objects: list[dict[str, Any]]) -> None:
    """The PodMonitor's pod labels and port name are those of the runtime pods the operator creates."""
    from kubeinfer.operator.render import Owner, render_deployment
    from kubeinfer.operator.spec import parse_spec

    spec = parse_spec({"task": "detect", "model": {"uri": "pvc://models/detector.pt"}})
    deployment = render_deployment(Owner("demo", "vision", "0000-1111"), spec, "kubeinfer-runtime:test")
    pod = deployment["spec"]["template"]
    endpoint = find(full_objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert find(full_objects, "PodMonitor")["spec"]["selector"]["matchLabels"].items() <= pod["metadata"][
        "labels"].items()
    assert pod["metadata"]["labels"]["kubeinfer.io/inferenceservice"] == "demo"  # -> inferenceservice label
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in ports


def test_prometheus_adapter_rules_are_the_operators_and_off_by_default(default_objects: list[dict[str, Any]],
                                                                       full_objects: list[dict[str, Any]]) -> None:
    """The ConfigMap serves exactly the custom metrics the operator's HPAs name (kubeinfer.operator.scaling)."""
    from kubeinfer.operator.scaling import SCALING_METRICS, adapter_rules

    assert not [o for o in default_objects if o["metadata"]["name"].endswith("-prometheus-adapter-rules")]
    (config_map,) = [o for o in full_objects if o["metadata"]["name"] == "kubeinfer-prometheus-adapter-rules"]
    assert (config_map["kind"], config_map["metadata"]["namespace"]) == ("ConfigMap", "monitoring")
    rules = yaml.safe_load(config_map["data"]["config.yaml"])
    assert rules == adapter_rules()
    assert {rule["name"]["as"] for rule in rules["rules"]} == {m.name for m in SCALING_METRICS.values()}
    in_release = render("--set", "prometheusAdapter.rules.enabled=true")
    (config_map,) = [o for o in in_release if o["metadata"]["name"].endswith("-prometheus-adapter-rules")]
    assert config_map["metadata"]["namespace"] == NAMESPACE
