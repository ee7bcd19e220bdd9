"""`kubeinfer operator`: flags, their KUBEINFER_OPERATOR_* environment twins, and the metrics it exports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from kubeinfer import __version__, cli
from kubeinfer.operator import metrics


def parse(*argv: str) -> object:
    return cli.build_parser().parse_args(["operator", *argv])


def test_defaults() -> None:
    args = parse()
    assert args.namespace is None and args.env_namespaces == []
    assert (args.metrics_port, args.liveness_port, args.listen_host) == (9090, 8081, "0.0.0.0")
    assert args.log_format == "plain" and args.peering is None
    assert args.runtime_image == f"ghcr.io/kubeinfer/kubeinfer-runtime:{__version__}"
    assert args.runtime_cpu_image == f"ghcr.io/kubeinfer/kubeinfer-runtime:{__version__}-cpu"
    assert args.default_resources is None
    assert args.peering_lifetime == 10  # seconds a killed replica counts as alive: kopf's own default is 60


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEINFER_OPERATOR_NAMESPACE", "a, b")
    monkeypatch.setenv("KUBEINFER_OPERATOR_RUNTIME_IMAGE", "env/image:1")
    monkeypatch.setenv("KUBEINFER_OPERATOR_METRICS_PORT", "9999")
    monkeypatch.setenv("KUBEINFER_OPERATOR_LOG_FORMAT", "json")
    monkeypatch.setenv("KUBEINFER_OPERATOR_PEERING", "kubeinfer")
    monkeypatch.setenv("KUBEINFER_OPERATOR_PEERING_LIFETIME", "7")
    monkeypatch.setenv("KUBEINFER_OPERATOR_DEFAULT_RESOURCES", '{"requests": {"cpu": "1", "memory": "2Gi"}}')
    from_env = parse()
    assert from_env.default_resources == {"requests": {"cpu": "1", "memory": "2Gi"}}
    assert from_env.env_namespaces == ["a", "b"]
    assert (from_env.runtime_image, from_env.metrics_port, from_env.log_format) == ("env/image:1", 9999, "json")
    assert (from_env.peering, from_env.peering_lifetime) == ("kubeinfer", 7)
    flagged = parse("--namespace", "x", "--namespace", "y", "--runtime-image", "flag/image:2", "--metrics-port", "1")
    assert flagged.namespace == ["x", "y"]
    assert (flagged.runtime_image, flagged.metrics_port) == ("flag/image:2", 1)
    monkeypatch.setenv("KUBEINFER_OPERATOR_RUNTIME_GPU_IMAGE", "env/gpu:3")  # the new name wins over the old one
    monkeypatch.setenv("KUBEINFER_OPERATOR_RUNTIME_CPU_IMAGE", "env/cpu:3")
    assert (parse().runtime_image, parse().runtime_cpu_image) == ("env/gpu:3", "env/cpu:3")
    both = parse("--runtime-gpu-image", "flag/gpu:4", "--runtime-cpu-image", "flag/cpu:4")
    assert (both.runtime_image, both.runtime_cpu_image) == ("flag/gpu:4", "flag/cpu:4")


@pytest.mark.parametrize(("variable", "value"), [("KUBEINFER_OPERATOR_LIVENESS_PORT", "eighty"),
                                                 ("KUBEINFER_OPERATOR_LOG_FORMAT", "xml"),
                                                 ("KUBEINFER_OPERATOR_PEERING_LIFETIME", "1"),
                                                 ("KUBEINFER_OPERATOR_PEERING_LIFETIME", "soon"),
                                                 ("KUBEINFER_OPERATOR_DEFAULT_RESOURCES", '{"cpu": "1"}')])
def test_a_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit, match=f"{variable}='{value}'"):
        parse()


def test_help_is_quick_and_loads_neither_torch_nor_kopf() -> None:
    code = ("import sys; from kubeinfer import cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'kopf', 'kubernetes') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
    shown = subprocess.run([sys.executable, "-m", "kubeinfer", "operator", "--help"], capture_output=True,
                           text=True, timeout=60)
    for flag in ("--namespace", "--runtime-gpu-image", "--runtime-cpu-image", "--log-format", "--metrics-port",
                 "--liveness-port", "--peering",
                 "--peering-lifetime"):
        assert flag in shown.stdout


def test_metric_names_and_the_phase_gauge() -> None:
    assert metrics.RECONCILIATIONS_TOTAL == "kubeinfer_operator_reconciliations_total"
    assert metrics.RECONCILE_DURATION_SECONDS == "kubeinfer_operator_reconcile_duration_seconds"
    assert metrics.INFERENCESERVICES == "kubeinfer_operator_inferenceservices"
    book = metrics.PhaseBook()

    def count(phase: str) -> float:
        return float(REGISTRY.get_sample_value(metrics.INFERENCESERVICES, {"phase": phase}) or 0)

    book.set("ns", "a", "Ready")
    book.set("ns", "b", "Ready")
    book.set("ns", "a", "Failed")
    assert (count("Ready"), count("Failed")) == (1, 1)
    book.forget("ns", "a")
    assert (count("Ready"), count("Failed")) == (1, 0)
    for result in metrics.RESULTS:
        assert REGISTRY.get_sample_value(metrics.RECONCILIATIONS_TOTAL, {"result": result}) is not None
