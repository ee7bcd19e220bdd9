"""The CPU budget read from real cgroup files (v2 cpu.max, v1 CFS quota) laid out under a temporary root."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeinfer.runtime.commands import serve as serve_command
from kubeinfer.runtime.config import ConfigError, ServeConfig, expected_engine
from kubeinfer.runtime.cpus import cgroup_cpu_limit, default_instances, thread_budget, usable_cpus


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_the_process_cgroup(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000\n")
    write(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    assert usable_cpus(tmp_path, affinity=64) == 2  # a pod with cpu: 1.5 on a 64-core node: 2 threads, not 64


def test_cgroup_v2_parent_limit_is_tighter(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
    write(tmp_path, "sys/fs/cgroup/kubepods/pod1/cpu.max", "300000 100000\n")
    write(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path) == pytest.approx(3.0)
    assert usable_cpus(tmp_path, affinity=2) == 2  # the affinity mask caps it too


def test_cgroup_v2_without_limit(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert usable_cpus(tmp_path, affinity=8) == 8


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "400000\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path) == pytest.approx(4.0)
    assert usable_cpus(tmp_path, affinity=32) == 4


def test_cgroup_v1_namespaced_mount_at_the_controller_root(tmp_path: Path) -> None:
    """With a cgroup namespace the container sees its own cgroup as the mount's root."""
    write(tmp_path, "proc/self/cgroup", "4:cpu,cpuacct:/\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "50000\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path) == pytest.approx(0.5)
    assert usable_cpus(tmp_path, affinity=16) == 1


def test_no_cgroup_files_means_the_affinity_mask(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert usable_cpus(tmp_path, affinity=3) == 3


def test_thread_budget_split() -> None:
    assert thread_budget(1) == thread_budget(0)
    assert (thread_budget(1).model_threads, thread_budget(1).workers) == (1, 1)
    assert (thread_budget(2).model_threads, thread_budget(2).workers) == (2, 2)
    assert (thread_budget(64).model_threads, thread_budget(64).workers) == (64, 4)
    assert (thread_budget(2, 2).model_instances, thread_budget(2, 2).model_threads) == (2, 1)
    assert (thread_budget(16, 2).model_threads, thread_budget(3, 2).model_threads, thread_budget(1, 4).model_threads) \
        == (8, 1, 1)


def test_frontends_keep_a_cpu_each_from_the_model() -> None:
    """With the model in a process of its own, each frontend's event loop keeps a CPU; at least 1 thread each."""
    assert thread_budget(2, 1, frontends=1).model_threads == 2  # one process: the model's threads take every CPU
    assert thread_budget(2, 1, frontends=2).model_threads == 1
    assert (thread_budget(16, 1, frontends=4).model_threads, thread_budget(16, 2, frontends=4).model_threads) == (12, 6)
    assert thread_budget(4, 2, frontends=8).model_threads == 1
    assert thread_budget(16, 1, frontends=4).workers == thread_budget(16).workers


def test_default_instances_two_for_a_cpu_detector_on_onnx_runtime_only() -> None:
    assert [default_instances("detect", "cpu", cpus) for cpus in (1, 2, 64)] == [1, 2, 2]
    assert default_instances("detect", "cuda:0", 8) == 1
    assert default_instances("detect", "cpu", 8, "torch") == 1
    assert {default_instances(task, "cpu", 8) for task in ("classify", "stream-classify", "recognize", "video")} \
        == {1}


def test_expected_engine_follows_the_file_and_the_backend_flag() -> None:
    assert [expected_engine(Path(name), backend) for name, backend in (
        ("m.onnx", "auto"), ("m.ONNX", "torch"), ("m.pt", "auto"), ("m.pt", "onnx"), ("m.pt", "torch"),
        ("m.torchscript", "auto"))] == ["onnx", "onnx", "onnx", "onnx", "torch", "torch"]
    assert expected_engine(None, "auto") == "none"


def parse(*args: str) -> ServeConfig:
    return serve_command.parse(["--task", "video", *args])


def test_thread_flags_default_from_the_budget_and_override(tmp_path: Path) -> None:
    budget = thread_budget(usable_cpus())
    default = parse()
    assert (default.model_instances, default.model_threads, default.workers, default.model_spinning) == (
        1, budget.model_threads, budget.workers, "run")
    instances = default_instances("detect", "cpu", usable_cpus())
    pt = tmp_path / "m.pt"
    pt.touch()  # parsing checks that the file exists, and does not load it
    detector = parse("--task", "detect", "--model", str(pt))
    assert (detector.model_instances, detector.model_threads) == (
        instances, thread_budget(usable_cpus(), instances).model_threads)
    on_torch = parse("--task", "detect", "--model", str(pt), "--backend", "torch")
    assert (on_torch.model_instances, on_torch.model_threads) == (1, usable_cpus())
    assert parse("--model-instances", "4").model_threads == max(1, usable_cpus() // 4)
    assert (parse("--model-instances", "3", "--model-threads", "2").model_threads) == 2
    classifier = tmp_path / "c.pt"
    classifier.touch()
    behind_frontends = parse("--task", "classify", "--model", str(classifier), "--frontends", "2", "--grpc-port", "1",
                             "--http-port", "2")
    assert (behind_frontends.model_instances, behind_frontends.model_threads) == (
        1, thread_budget(usable_cpus(), 1, frontends=2).model_threads)
    chosen = parse("--model-threads", "3", "--workers", "5", "--model-spinning", "always", "--backend", "torch")
    assert (chosen.model_threads, chosen.workers, chosen.model_spinning, chosen.backend) == (3, 5, "always", "torch")
    assert [parse("--model-spinning", given).model_spinning for given in ("true", "false", "OFF")] == [
        "always", "off", "off"]
    with pytest.raises(ConfigError, match="--model-threads"):
        parse("--model-threads", "0")
    with pytest.raises(ConfigError, match="--model-instances"):
        parse("--model-instances", "0")
