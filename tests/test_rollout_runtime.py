"""A progressive rollout's runtime side through real `kubeinfer serve` processes on loopback: the traffic file (written
as the kubelet writes a mounted ConfigMap, by swapping a ``..data`` symlink), GetModelInfo's revision and table, and
the shadow mirror from a stable replica to candidate replicas (same model, permuted labels, dead, silent)."""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from classify_support import colour_models, solid, write_labels
from conftest import fresh_images, jpeg_bytes, png_bytes
from runtime_support import RuntimeProcess, free_port, metric_sum, runtime_env, wait_for

from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

STABLE = "a1b2c3d4e5"
COLOURS = ("red", "green", "blue")


class TrafficDir:
    """A mounted ConfigMap as the kubelet keeps it: traffic.json -> ..data/traffic.json, ..data -> ..TIMESTAMP,
    each update a new ..TIMESTAMP folder and an atomic swap of ..data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "traffic.json"
        self.updates = 0
        (root / "traffic.json").symlink_to("..data/traffic.json")

    def write(self, text: str) -> None:
        self.updates += 1
        folder = self.root / f"..{self.updates:04d}"
        folder.mkdir()
        (folder / "traffic.json").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        os.replace(link, self.root / "..data")

    def table(self, generation: int, candidate: tuple[str, str] | None = None, shadow: int = 0,
              weight: int = 0) -> None:
        body: dict[str, Any] = {"generation": generation,
                                "stable": {"revision": STABLE, "target": "stable.ns.svc.cluster.local:8001"},
                                "candidate": None, "candidateWeight": weight, "shadowPercent": shadow}
        if candidate is not None:
            body["candidate"] = {"revision": candidate[0], "target": candidate[1]}
        self.write(json.dumps(body))


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> TrafficDir:
    folder = TrafficDir(tmp_path_factory.mktemp("traffic"))
    folder.table(1)
    return folder


def classifier(factory: Callable[..., RuntimeProcess], labels: Path, *args: str,
               env: dict[str, str] | None = None) -> RuntimeProcess:
    return factory("--task", "stream-classify", "--model", str(colour_models().torchscript), "--labels", str(labels),
                   "--model-name", "colours", "--max-batch-delay-ms", "1", "--shutdown-delay", "0", *args,
                   wait=False, env=env)


@pytest.fixture(scope="module")
def runtimes(runtime_factory: Callable[..., RuntimeProcess], traffic: TrafficDir,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, RuntimeProcess]:
    """The stable replica (its revision from KUBEINFER_REVISION, as the downward API sets it), a candidate serving
    the same model, and one whose labels are permuted (every answer's label differs)."""
    labels = tmp_path_factory.mktemp("rollout-labels")
    same = write_labels(labels / "same", "txt")
    permuted = write_labels(labels / "permuted", "txt", ["green", "blue", "red"])
    started = {
        "stable": classifier(runtime_factory, same, "--traffic-file", str(traffic.path),
                             env=runtime_env(KUBEINFER_REVISION=STABLE)),
        "same": classifier(runtime_factory, same, "--revision", "f6e5d4c3b2"),
        "permuted": classifier(runtime_factory, permuted, "--revision", "0badc0ffee"),
    }
    return {name: runtime.wait_ready() for name, runtime in started.items()}


@pytest.fixture(scope="module")
def stable(runtimes: dict[str, RuntimeProcess]) -> Iterator[pb_grpc.InferenceStub]:
    with grpc.insecure_channel(runtimes["stable"].grpc_target) as channel:
        yield pb_grpc.InferenceStub(channel)


IMAGES = [png_bytes(solid(colour)) for colour in COLOURS]


def classify(stub: pb_grpc.InferenceStub, index: int) -> pb.ClassifyResponse:
    answer = stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=IMAGES[index % 3])]), timeout=10)
    assert answer.results[0].top[0].label == COLOURS[index % 3]  # the stable's answer is always right
    return answer


def model_info(runtime: RuntimeProcess) -> pb.ModelInfo:
    with grpc.insecure_channel(runtime.grpc_target) as channel:
        return pb_grpc.InferenceStub(channel).GetModelInfo(pb.ModelInfoRequest(), timeout=10)


def wait_generation(runtime: RuntimeProcess, generation: int) -> pb.ModelInfo:
    wait_for(lambda: model_info(runtime).traffic.generation == generation, f"traffic generation {generation}",
             timeout=10)
    return model_info(runtime)


def shadow(runtime: RuntimeProcess, result: str) -> float:
    return metric_sum(runtime.metrics(), "kubeinfer_shadow_requests_total", result=result)


def agreement(runtime: RuntimeProcess) -> float:
    return metric_sum(runtime.metrics(), "kubeinfer_shadow_agreement_total")


def classified(runtime: RuntimeProcess) -> float:
    return metric_sum(runtime.metrics(), "kubeinfer_requests_total", rpc="Classify", code="OK")


def test_model_info_serves_the_revision_and_the_traffic_table(runtimes: dict[str, RuntimeProcess],
                                                              traffic: TrafficDir) -> None:
    traffic.table(2, ("f6e5d4c3b2", runtimes["same"].grpc_target), weight=10)
    info = wait_generation(runtimes["stable"], 2)
    assert info.revision == STABLE
    assert (info.traffic.stable.revision, info.traffic.stable.target) == (STABLE, "stable.ns.svc.cluster.local:8001")
    assert (info.traffic.candidate.revision, info.traffic.candidate.target) == ("f6e5d4c3b2",
                                                                                runtimes["same"].grpc_target)
    assert (info.traffic.candidate_weight, info.traffic.shadow_percent) == (10, 0)
    assert metric_sum(runtimes["stable"].metrics(), "kubeinfer_traffic_generation", model="colours") == 2
    candidate = model_info(runtimes["same"])  # a replica without --traffic-file: its revision, no table
    assert (candidate.revision, candidate.HasField("traffic")) == ("f6e5d4c3b2", False)
    assert metric_sum(runtimes["same"].metrics(), "kubeinfer_traffic_generation") == 0


def test_a_changed_file_is_loaded_and_a_bad_one_keeps_the_last_good_table(runtimes: dict[str, RuntimeProcess],
                                                                          traffic: TrafficDir) -> None:
    runtime = runtimes["stable"]
    traffic.table(3)
    assert not wait_generation(runtime, 3).traffic.HasField("candidate")
    traffic.write('{"generation": 4, "stable": ')  # cut short
    time.sleep(2.5)  # two polls and more
    traffic.write("[]")
    time.sleep(2.5)
    assert model_info(runtime).traffic.generation == 3
    assert metric_sum(runtime.metrics(), "kubeinfer_traffic_generation") == 3
    assert runtime.logs().count("keeping generation 3") == 1  # logged once, not once a poll nor once a bad file
    traffic.table(5)
    wait_generation(runtime, 5)
    assert metric_sum(runtime.metrics(), "kubeinfer_traffic_generation") == 5


def test_the_stable_mirrors_its_shadow_percent_to_a_candidate_that_agrees(
        runtimes: dict[str, RuntimeProcess], traffic: TrafficDir, stable: pb_grpc.InferenceStub) -> None:
    candidate = runtimes["same"]
    traffic.table(6, ("f6e5d4c3b2", candidate.grpc_target), shadow=30)
    wait_generation(runtimes["stable"], 6)
    before = classified(candidate), shadow(runtimes["stable"], "compared"), agreement(runtimes["stable"])
    for i in range(40):
        classify(stable, i)
    # 30% of 40 calls, whatever the sampler counted before: floor(n * 30 / 100) grows 12 times over any 40 calls
    wait_for(lambda: shadow(runtimes["stable"], "compared") == before[1] + 12, "12 compared mirrored calls")
    assert classified(candidate) == before[0] + 12
    assert agreement(runtimes["stable"]) == before[2] + 12  # the same model: every answer agrees
    assert shadow(runtimes["stable"], "error") == 0
    assert metric_sum(candidate.metrics(), "kubeinfer_shadow_requests_total") == 0  # the candidate mirrors nothing
    durations = metric_sum(runtimes["stable"].metrics(), "kubeinfer_shadow_duration_seconds_count")
    assert durations >= 12


def test_stream_frames_are_mirrored_as_one_image_classify_calls(
        runtimes: dict[str, RuntimeProcess], traffic: TrafficDir, stable: pb_grpc.InferenceStub) -> None:
    candidate = runtimes["same"]
    traffic.table(7, ("f6e5d4c3b2", candidate.grpc_target), shadow=50)
    wait_generation(runtimes["stable"], 7)
    before = classified(candidate), shadow(runtimes["stable"], "compared"), agreement(runtimes["stable"])
    frames = [pb.StreamFrame(stream_id="cam", sequence=i, image=pb.Image(encoded=IMAGES[i % 3])) for i in range(20)]
    answers = list(stable.StreamClassify(iter(frames), timeout=30))
    assert [a.raw.top[0].label for a in answers] == [COLOURS[i % 3] for i in range(20)]
    wait_for(lambda: shadow(runtimes["stable"], "compared") == before[1] + 10, "10 mirrored frames compared")
    assert classified(candidate) == before[0] + 10
    assert agreement(runtimes["stable"]) == before[2] + 10


def test_a_candidate_that_disagrees_scores_low(runtimes: dict[str, RuntimeProcess], traffic: TrafficDir,
                                               stable: pb_grpc.InferenceStub) -> None:
    candidate = runtimes["permuted"]
    traffic.table(8, ("0badc0ffee", candidate.grpc_target), shadow=100)
    wait_generation(runtimes["stable"], 8)
    before = classified(candidate), shadow(runtimes["stable"], "compared"), agreement(runtimes["stable"])
    for i in range(30):
        classify(stable, i)
    wait_for(lambda: shadow(runtimes["stable"], "compared") == before[1] + 30, "30 compared mirrored calls")
    assert classified(candidate) == before[0] + 30
    assert agreement(runtimes["stable"]) == before[2]  # every label permuted: no call agrees


def test_mirrored_calls_are_never_mirrored_again(runtimes: dict[str, RuntimeProcess], traffic: TrafficDir,
                                                 stable: pb_grpc.InferenceStub) -> None:
    """The stable names itself as the candidate: its mirrored calls come back to it carrying x-kubeinfer-shadow;
    mirrored again, every call would loop (and the counts below would run away)."""
    runtime = runtimes["stable"]
    traffic.table(9, ("selfself00", runtime.grpc_target), shadow=50)
    wait_generation(runtime, 9)
    before = classified(runtime), shadow(runtime, "compared")
    for i in range(20):
        classify(stable, i)
    wait_for(lambda: shadow(runtime, "compared") == before[1] + 10, "10 compared mirrored calls")
    time.sleep(1)
    assert shadow(runtime, "compared") == before[1] + 10
    assert classified(runtime) == before[0] + 20 + 10


def latencies(stub: pb_grpc.InferenceStub, calls: int, threads: int = 1) -> list[float]:
    """Each call's seconds, ``calls`` in all over ``threads`` threads."""
    found: list[float] = []
    lock = threading.Lock()

    def run(share: int, offset: int) -> None:
        for i in range(share):
            started = time.perf_counter()
            classify(stub, offset + i)
            with lock:
                found.append(time.perf_counter() - started)

    workers = [threading.Thread(target=run, args=(calls // threads, n)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert len(found) == calls // threads * threads
    return found


def test_a_dead_candidate_counts_errors_and_never_fails_the_call(runtimes: dict[str, RuntimeProcess],
                                                                traffic: TrafficDir,
                                                                stable: pb_grpc.InferenceStub) -> None:
    runtime = runtimes["stable"]
    traffic.table(10, ("deaddeadde", f"127.0.0.1:{free_port()}"), shadow=100)  # nothing listens there
    wait_generation(runtime, 10)
    before = shadow(runtime, "error"), shadow(runtime, "compared")
    latencies(stable, 20)
    wait_for(lambda: shadow(runtime, "error") == before[0] + 20, "20 mirrored calls failed")
    assert shadow(runtime, "compared") == before[1]


def test_a_silent_candidate_never_delays_the_call_and_at_most_64_mirrors_wait(
        runtimes: dict[str, RuntimeProcess], traffic: TrafficDir, stable: pb_grpc.InferenceStub) -> None:
    """A candidate that accepts connections and never answers: every mirrored call hangs until its 10 s timeout;
    the client's calls go on as fast as ever, 64 mirrors wait, the rest are dropped."""
    runtime = runtimes["stable"]
    with socket.create_server(("127.0.0.1", 0), backlog=128) as silent:
        traffic.table(11, ("silentsile", f"127.0.0.1:{silent.getsockname()[1]}"), shadow=100)
        wait_generation(runtime, 11)
        before = shadow(runtime, "dropped"), shadow(runtime, "error")
        seconds = latencies(stable, 80)
        assert max(seconds) < 2.0, max(seconds)
        assert shadow(runtime, "dropped") == before[0] + 16
        wait_for(lambda: shadow(runtime, "error") == before[1] + 64, "the 64 silent mirrors timed out", timeout=30)
    traffic.table(12)  # no rollout: nothing mirrored any more
    wait_generation(runtime, 12)


def test_detect_mirrors_compare_boxes_per_class(runtime_factory: Callable[..., RuntimeProcess],
                                               detector_model: Path, tmp_path: Path) -> None:
    """A detect replica mirroring to itself (as a candidate of the same model would answer): F1 1, every box a tp."""
    folder = TrafficDir(tmp_path)
    runtime = runtime_factory("--task", "detect", "--model", str(detector_model), "--model-name", "rects",
                              "--revision", STABLE, "--traffic-file", str(folder.path), "--shutdown-delay", "0")
    folder.table(1, ("self", runtime.grpc_target), shadow=100)
    wait_generation(runtime, 1)
    images = [pb.Image(encoded=jpeg_bytes(sample.pixels)) for sample in fresh_images(7, 6)]
    with grpc.insecure_channel(runtime.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        boxes = sum(len(stub.Detect(pb.DetectRequest(images=[image]), timeout=30).results[0].detections)
                    for image in images)
    assert boxes > 0
    wait_for(lambda: shadow(runtime, "compared") == 6, "6 compared detect mirrors")
    exposition = runtime.metrics()
    assert metric_sum(exposition, "kubeinfer_shadow_agreement_total") == 6
    assert metric_sum(exposition, "kubeinfer_shadow_class_matches_total", outcome="tp") == boxes
    assert metric_sum(exposition, "kubeinfer_shadow_class_matches_total", outcome="fp") == 0
    assert metric_sum(exposition, "kubeinfer_shadow_class_matches_total", outcome="fn") == 0


def test_benchmark_client_latency_with_and_without_the_mirror(runtimes: dict[str, RuntimeProcess],
                                                              traffic: TrafficDir,
                                                              stable: pb_grpc.InferenceStub) -> None:
    """Prints the client's p50/p99 at concurrency 16, shadow 0% and 100% to the same-model candidate (on this
    machine the candidate shares the CPUs: the 100% figure includes its load, which a cluster puts elsewhere)."""
    runtime = runtimes["stable"]
    figures = {}
    before = sum(shadow(runtime, result) for result in ("compared", "error", "dropped"))
    for generation, percent in ((20, 0), (21, 100), (22, 0), (23, 100)):
        traffic.table(generation, ("f6e5d4c3b2", runtimes["same"].grpc_target), shadow=percent)
        wait_generation(runtime, generation)
        latencies(stable, 64, threads=16)  # warm
        seconds = sorted(latencies(stable, 800, threads=16))
        figures[(generation, percent)] = (statistics.median(seconds) * 1000, seconds[int(len(seconds) * 0.99)] * 1000)
    for (generation, percent), (p50, p99) in figures.items():
        print(f"\nshadow {percent:3d}% (generation {generation}): client p50 {p50:.2f} ms, p99 {p99:.2f} ms "
              "(concurrency 16, 800 Classify calls)")
    # the figures are printed, not judged; every call of the 100% runs was offered to the mirror
    wait_for(lambda: sum(shadow(runtime, result) for result in ("compared", "error", "dropped")) == before + 2 * 864,
             "every call of the 100% runs mirrored or dropped")
