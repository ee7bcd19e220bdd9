"""The benchmark's load generator and its one command, run briefly against a served kubeinfer detector.

No peers are installed here (`--no-peers`): the test proves the harness measures,
reports and cleans up, not how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_support import REPO

from kubeinfer.runtime.cpus import default_instances, thread_budget, usable_cpus

if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # appended: the repo root's `operator/` must not shadow the stdlib module

from benchmarks import limits, load, report

RUN = REPO / "benchmarks" / "run.py"


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert load.percentile(values, 50) == 50.0
    assert load.percentile(values, 99) == 99.0
    assert load.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        load.percentile([], 50)


def test_closed_loop_counts_requests_errors_and_latency() -> None:
    calls = 0

    async def send(i: int) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if i % 5 == 4:
            raise RuntimeError("every fifth request fails")

    result = asyncio.run(load.closed_loop(send, concurrency=4, duration=0.5, warmup=0.1, timeout=5))
    assert result.concurrency == 4
    assert result.requests > 0 and result.errors > 0
    assert result.first_error == "RuntimeError: every fifth request fails"
    assert result.throughput_rps == pytest.approx(result.requests / 0.5)
    assert 10.0 <= result.p50_ms <= result.p99_ms
    # closed loop: 4 callers, each waiting >= 10 ms per call, so at most 4 * (0.6 s / 10 ms) calls in all
    assert calls <= 4 * 60 + 4


def test_payloads_round_trip(tmp_path: Path) -> None:
    import numpy as np

    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    jpegs = [b"\xff\xd8first", b"\xff\xd8second-one"]
    load.save_payloads(tmp_path / "p.npz", pixels, jpegs)
    got_pixels, got_jpegs = load.load_payloads(tmp_path / "p.npz")
    assert np.array_equal(got_pixels, pixels)
    assert got_jpegs == jpegs


def test_latency_target_compares_with_the_engine_the_row_serves() -> None:
    """torch may be the faster engine at its best batch (the throughput limit) while the served row runs ONNX
    Runtime: its C=1 latency is judged against ONNX Runtime's batch-1 forward, never torch's slower one."""
    def limit(images_per_s: float, batch1_ms: float) -> dict:
        return {"images_per_s": images_per_s, "best_batch_size": 32, "latency_ms_batch1": batch1_ms,
                "latency_ms_batch1_after_idle": batch1_ms * 1.5, "by_batch_size": []}

    onnx, torch = limit(390.0, 5.4), limit(396.0, 11.7)
    limits = {"detector": torch, "detector_by_backend": {"onnx": onnx, "torch": torch}}
    levels = [{"concurrency": 1, "requests": 100, "p50_ms": 9.9, "p99_ms": 20.0, "throughput_rps": 100.0}]
    rows = [{"key": "kubeinfer-detect-b16", "status": "ok", "workload": "detector", "backend": "onnx",
             "levels": levels}]
    target = {t["id"]: t for t in report.evaluate_targets(limits, rows, 16)}["detector-b16-latency-overhead"]
    assert target["measured"] == pytest.approx(9.9 - 5.4) and target["met"] is False
    assert "raw batch-1 forward 5.40 ms (8.10 ms when it follows 5 ms of idle" in target["detail"]


def test_classifier_behind_frontends_is_judged_at_its_own_model_configuration() -> None:
    """The --frontends rows are held to the best peer too, and the model CPU subtracted from theirs is the one
    measured at the model process's thread budget, not the one-process runtime's."""
    def row(key: str, frontends: int, rps: float, p99: float, kubeinfer: bool = True) -> dict:
        return {"key": key, "status": "ok", "workload": "classifier", "backend": "", "is_kubeinfer": kubeinfer,
                "frontends": frontends, "system": key, "levels": [
                    {"concurrency": 16, "requests": 1000, "p50_ms": 10.0, "p99_ms": p99, "throughput_rps": rps}]}

    one, behind = row("kubeinfer-classify-b16", 1, 800.0, 40.0), row("kubeinfer-classify-f2-b16", 2, 1000.0, 28.0)
    rows = [one, behind, row("kserve", 1, 600.0, 50.0, kubeinfer=False)]
    targets = {t["id"]: t for t in report.evaluate_targets({}, rows, 16)}
    assert targets["kubeinfer-classify-f2-b16-vs-best-peer"]["measured"] == pytest.approx(1000 / 600)
    assert targets["kubeinfer-classify-f2-b16-vs-best-peer"]["met"] is True
    assert targets["kubeinfer-classify-b16-vs-best-peer"]["met"] is False
    limits = {"model_cpu": {"classifier": [{"batch_size": 8, "cpu_ms_per_image": 0.9}],
                            "classifier behind 2 frontends": [{"batch_size": 8, "cpu_ms_per_image": 0.6}]}}
    assert report.model_cpu_ms(limits, one, 7.0) == 0.9 and report.model_cpu_ms(limits, behind, 7.0) == 0.6


def test_load_generator_refuses_non_loopback_targets(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        load.parse_args(["--target", "kubeinfer-detect", "--address", "10.0.0.1:8001",
                         "--payloads", str(tmp_path / "p.npz")])


def _bench_processes(work: Path) -> list[int]:
    """Processes whose working directory lies under the run's work folder (its servers and load generators)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(work):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_limit_sweep_runs_its_batches_from_as_many_threads_as_instances() -> None:
    import threading

    callers: set[str] = set()

    def forward(n: int) -> None:
        callers.add(threading.current_thread().name)
        time.sleep(0.001 * n)

    result = limits.sweep(forward, 0.06, batch_sizes=(1, 4), rounds=1, instances=3)
    assert len(callers - {threading.current_thread().name}) == 6  # three threads per batch size
    assert result["instances"] == 3 and [r["batch_size"] for r in result["by_batch_size"]] == [1, 4]
    # three sleepers at once: more images per second than one could do (1000 / 4 ms x 4 per batch = 1000)
    assert result["by_batch_size"][1]["images_per_s"] > 1000


GRPC_THREADS_MASK = """
import json, os, signal, grpc
from benchmarks.processes import signals_stay_with_main_thread
with signals_stay_with_main_thread():
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        grpc.channel_ready_future(channel).result(timeout=0.3)
    except grpc.FutureTimeoutError:
        pass

def blocks_sigint(tid):
    try:
        with open(f"/proc/self/task/{tid}/status") as status:
            for line in status:
                if line.startswith("SigBlk:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    except (FileNotFoundError, ProcessLookupError):  # a gRPC thread that ended since the listing
        return None

threads = [[tid == str(os.getpid()), blocks_sigint(tid)] for tid in os.listdir("/proc/self/task")]  # channel open
channel.close()
print(json.dumps([thread for thread in threads if thread[1] is not None]))
"""


def test_grpc_threads_leave_ctrl_c_to_the_main_thread() -> None:
    """gRPC's threads outlive their channel; a SIGINT the kernel gave one of them would not interrupt the main
    thread's wait on a load generator (an interrupted run then sat out the whole level). Started inside
    ``signals_stay_with_main_thread`` they block it. A subprocess: this one's gRPC threads already run."""
    out = subprocess.run([sys.executable, "-c", GRPC_THREADS_MASK], capture_output=True, text=True, timeout=60,
                         cwd=REPO, check=True)
    threads = json.loads(out.stdout)
    assert [blocked for is_main, blocked in threads if is_main] == [False]  # restored on the way out
    others = [blocked for is_main, blocked in threads if not is_main]
    assert others and all(others), threads


def _bench_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(RUN), "--systems", "kubeinfer-detect", "--no-peers", "--concurrency", "1,16",
            "--duration", "1", "--warmup", "0.3", "--limit-seconds", "0.3", "--out", str(tmp_path / "results"),
            "--work", str(tmp_path / "work"), "--no-readme", *extra]


@pytest.mark.slow
def test_run_measures_a_served_detector_and_writes_results(detector_model: Path, tmp_path: Path) -> None:
    done = subprocess.run(_bench_cmd(tmp_path, "--note", "pytest smoke"), capture_output=True, text=True,
                          timeout=420, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "results"
    results = json.loads((out / "results.json").read_text())

    meta = results["meta"]
    assert meta["concurrency"] == [1, 16] and meta["duration_s"] == 1.0 and meta["note"] == "pytest smoke"
    assert meta["machine"] and meta["date"] and meta["versions"]["python"]

    limit = results["limits"]["detector"]
    assert limit["images_per_s"] > 0 and limit["latency_ms_batch1"] > 0 and limit["latency_ms_batch1_after_idle"] > 0
    assert limit["best_batch_size"] in [r["batch_size"] for r in limit["by_batch_size"]]
    assert limit["selected_images_per_s"] > 0
    assert "classifier" not in results["limits"]
    instances = default_instances("detect", "cpu", usable_cpus())
    assert results["limits"]["kubeinfer_model_config"] == {"detector:onnx": {  # only what the chosen rows serve
        "instances": instances, "threads": thread_budget(usable_cpus(), instances).model_threads}}
    assert [r["batch_size"] for r in results["limits"]["model_cpu"]["detector:onnx"]] == [1, 2, 4, 8, 16, 32]

    rows = {r["key"]: r for r in results["rows"]}
    assert set(rows) == {"kubeinfer-detect-b16", "kubeinfer-detect-b1"}
    for row in rows.values():
        assert row["status"] == "ok", row["reason"]
        assert row["workload"] == "detector" and row["is_kubeinfer"]
        assert [lv["concurrency"] for lv in row["levels"]] == [1, 16]
        for lv in row["levels"]:
            assert lv["requests"] > 0 and lv["errors"] == 0
            assert lv["throughput_rps"] == pytest.approx(lv["requests"] / lv["duration_s"])
            assert 0 < lv["p50_ms"] <= lv["p99_ms"]
    assert rows["kubeinfer-detect-b16"]["batching"].startswith("max 16")
    assert rows["kubeinfer-detect-b1"]["batching"].startswith("off")

    targets = {t["id"]: t for t in results["targets"]}
    at_16 = rows["kubeinfer-detect-b16"]["levels"][1]
    assert targets["detector-vs-limit"]["measured"] == pytest.approx(at_16["throughput_rps"] / limit["images_per_s"])
    vs_limit = targets["detector-vs-limit"]
    assert vs_limit["met"] is (vs_limit["measured"] >= 0.8)
    assert f"with box selection alone {limit['selected_images_per_s']:.1f} img/s" in vs_limit["detail"]
    assert isinstance(targets["detector-b16-latency-overhead"]["met"], bool)
    idle = f"{limit['latency_ms_batch1_after_idle']:.2f} ms when it follows 5 ms of idle"
    assert idle in targets["detector-b16-latency-overhead"]["detail"]
    assert targets["classifier-vs-limit"]["met"] is None  # not measured in this run, and said so

    md = (out / "results.md").read_text()
    assert "## Targets" in md and "## Detector" in md and "| the same after 5 ms idle |" in md
    assert "| the same with box selection |" in md
    assert md.count("| kubeinfer | kubeinfer gRPC Detect (JPEG) |") == 4  # 2 configurations x 2 levels
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _bench_processes(tmp_path / "work") == []


@pytest.mark.slow
def test_interrupted_run_stops_every_server(detector_model: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(_bench_cmd(tmp_path, "--duration", "30"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "loading kubeinfer-detect-b16" in line:
                break
        assert _bench_processes(tmp_path / "work"), "the server and load generator should be running now"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    deadline = time.monotonic() + 5
    while _bench_processes(tmp_path / "work") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _bench_processes(tmp_path / "work") == []
    assert not (tmp_path / "results" / "results.json").exists()


def test_a_peer_venv_imports_the_projects_torch_through_the_overlay(tmp_path: Path) -> None:
    """Peer venvs share the project's (multi-GB) torch instead of downloading one each."""
    import importlib.metadata

    from benchmarks import venvs

    overlay, venv = tmp_path / "overlay", tmp_path / "peer"
    venvs.build_torch_overlay(overlay)
    assert (overlay / "torch").resolve() == Path(importlib.metadata.distribution("torch").locate_file("torch"))
    assert (overlay / f"torch-{importlib.metadata.version('torch')}.dist-info").is_dir()
    assert any(path.name.startswith("nvidia_cublas") for path in overlay.iterdir())  # an extra of a dependency
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, cwd=tmp_path)
    python = venv / "bin" / "python"
    venvs.link_overlay(python, overlay)
    probe = ("import importlib.metadata, torch; print(torch.__version__, importlib.metadata.version('torch'), "
             "torch.ones(2).sum().item())")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path)
    import torch

    assert out.stdout.split() == [torch.__version__, importlib.metadata.version("torch"), "2.0"]
