"""A rollout's figures as the operator reads them (operator/analysis.py) from a real Prometheus scraping real
runtimes: a stable replica mirroring every call to a candidate serving one of tests/rollout_models.py's models,
both scraped with the chart's PodMonitor rules as pod discovery would label them (``revision`` from the pod label).

Each candidate shows in the figure it breaks: ``failing`` in the error rate (INTERNAL, a server error), ``shuffled``
in the shadow agreement, and the judgement (rollout.judge) fails it for that reason; ``good`` passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from chart_support import FULL_VALUES, Prometheus, find, prometheus_binary, prometheus_relabel_configs, render
from operator_support import eventually
from rollout_models import failing_images, rollout_models
from runtime_support import RuntimeProcess, free_port, runtime_env
from traffic_support import STABLE, TrafficDir

from kubeinfer.operator.analysis import PrometheusMeasure
from kubeinfer.operator.rollout import judge
from kubeinfer.operator.spec import parse_spec
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

NAMESPACE, NAME = "vision", "roll"
CALLS = 100
WINDOW = 120  # seconds: the whole test's calls fall in it


def serve(factory: Callable[..., RuntimeProcess], model: Path, labels: Path, *args: str,
          env: dict[str, str] | None = None) -> RuntimeProcess:
    return factory("--task", "classify", "--model", str(model), "--labels", str(labels), "--model-name", NAME,
                   "--max-batch-size", "1", "--shutdown-delay", "0", *args, wait=False, env=env)


def scrape_config(pods: dict[str, tuple[RuntimeProcess, str]]) -> list[dict[str, object]]:
    monitor = find(render(values=FULL_VALUES), "PodMonitor")
    static = [{"targets": [f"127.0.0.1:{runtime.http_port}"], "labels": {
        "__meta_kubernetes_namespace": NAMESPACE, "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "kubeinfer-runtime",
        "__meta_kubernetes_pod_label_kubeinfer_io_inferenceservice": NAME,
        "__meta_kubernetes_pod_label_kubeinfer_io_revision": revision,
        "__meta_kubernetes_pod_container_port_name": "http"}} for pod, (runtime, revision) in pods.items()]
    return [{"job_name": "runtimes", "metrics_path": "/metrics", "static_configs": static,
             "relabel_configs": prometheus_relabel_configs(monitor)}]


@pytest.fixture(scope="module", params=["failing", "shuffled", "good"])
def rolled(request: pytest.FixtureRequest, runtime_factory: Callable[..., RuntimeProcess],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, PrometheusMeasure, str]]:
    """The stable replica (mirroring 100 % to the candidate) after CALLS calls, and Prometheus having scraped
    both since; yields (candidate model, measure, candidate revision)."""
    prometheus_binary()
    models = rollout_models()
    tmp_path = tmp_path_factory.mktemp(f"analysis-{request.param}")
    candidate_revision = "f6e5d4c3b2"
    (tmp_path / "traffic").mkdir()
    traffic = TrafficDir(tmp_path / "traffic")  # every replica mounts it; only the stable one mirrors
    traffic.table(3)
    candidate = serve(runtime_factory, getattr(models, request.param), models.labels, "--revision",
                      candidate_revision, "--traffic-file", str(traffic.path))
    traffic.table(3, (candidate_revision, candidate.grpc_target), shadow=100)
    stable = serve(runtime_factory, models.stable, models.labels, "--traffic-file", str(traffic.path),
                   env=runtime_env(KUBEINFER_REVISION=STABLE))
    candidate.wait_ready()
    stable.wait_ready()
    (tmp_path / "prometheus").mkdir()
    prometheus = Prometheus(tmp_path / "prometheus", free_port(), scrape_config(
        {"stable-0": (stable, STABLE), "candidate-0": (candidate, candidate_revision)}))
    try:
        prometheus.wait_ready()
        eventually(lambda: len(prometheus.query("up == 1")) == 2, timeout=30, what="both replicas scraped")
        with grpc.insecure_channel(stable.grpc_target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            for image in failing_images(CALLS, seed=5):
                request_ = pb.ClassifyRequest(images=[pb.Image(raw=pb.RawImage(
                    pixels=image.pixels.tobytes(), height=image.pixels.shape[0], width=image.pixels.shape[1],
                    channels=3))])
                stub.Classify(request_, timeout=10)  # the stable model answers every one
                time.sleep(0.02)  # about 40 calls a second: the candidate keeps up, so few mirrors are dropped
        measure = PrometheusMeasure(prometheus.url, NAMESPACE, NAME)
        # every mirrored call answered and compared, failed or (past 64 in flight) dropped; both replicas scraped
        mirrored = f'sum(kubeinfer_shadow_requests_total{{revision="{STABLE}"}})'

        def counted() -> bool:
            return sum(value for _, value in measure.query(mirrored)) >= CALLS and measure.figures(
                STABLE, candidate_revision, WINDOW).candidate_requests >= CALLS * 0.8

        eventually(counted, timeout=30, interval=0.5, what="the mirrored calls counted")
        yield request.param, measure, candidate_revision
    finally:
        prometheus.stop()
        for runtime in (stable, candidate):
            runtime.stop()


def test_each_candidate_shows_in_the_figure_it_breaks(rolled: tuple[str, PrometheusMeasure, str]) -> None:
    model, measure, candidate = rolled
    figures = measure.figures(STABLE, candidate, WINDOW)
    print(f"\n{model}: {figures}")
    # increase() extrapolates a series younger than the window by up to half a scrape interval at each end; these
    # series are seconds old, so their counts come out high by up to about as much again (ratios are unaffected)
    assert CALLS * 0.95 <= figures.stable_requests <= CALLS * 2
    assert CALLS * 0.8 <= figures.candidate_requests <= CALLS * 2  # a mirror past 64 in flight is dropped
    assert figures.stable_p99 is not None and figures.candidate_p99 is not None
    rollout = parse_spec({"task": "classify", "model": {"uri": "/m.onnx"}, "labels": {"uri": "/l.txt"},
                          "rollout": {}}).rollout
    assert rollout is not None
    verdict = judge(figures, rollout, rollout.steps[0])  # the default first step: shadow 20%
    if model == "failing":  # 2 of every 10 images are bright: INTERNAL, a server error
        assert figures.error_rate is not None and 0.15 <= figures.error_rate <= 0.25
        assert set(figures.errors_by_code) == {"INTERNAL"}
        assert figures.agreement == pytest.approx(1.0, abs=0.01)  # what it answers, it answers right
        assert verdict.result == "fail" and "error rate" in verdict.reasons[0]
    elif model == "shuffled":
        assert figures.error_rate == 0 and figures.agreement is not None and figures.agreement <= 0.2
        assert figures.compared >= CALLS * 0.8
        assert verdict.result == "fail" and any("shadow agreement" in r for r in verdict.reasons)
    else:
        # the good model was checked on images that are not bright; on these 2 in 10 are, where it may differ
        assert figures.error_rate == 0 and figures.agreement is not None and figures.agreement >= 0.9
        # the latency ratio may or may not pass on 2 busy cores; the judgement on the answers must
        assert not any("agreement" in r or "error rate" in r for r in verdict.reasons)


def test_a_table_is_in_force_once_every_replica_has_loaded_it(
        rolled: tuple[str, PrometheusMeasure, str]) -> None:
    _, measure, _ = rolled
    assert measure.effective(3, 2)  # both replicas loaded generation 3
    assert not measure.effective(3, 3)  # a third replica has not reported it
    assert not measure.effective(4, 1)
