"""How many CPUs this process may really use: the affinity mask and the cgroup's CPU quota, not the node's count.

A pod with ``cpu: 2`` on a 64-core node sees 64 in ``os.cpu_count()``; sizing thread pools from that makes
the model's intra-op threads, the decode workers and the transport fight for 2 cores' worth of quota and be
throttled. Stdlib only, so the flag defaults in ``config`` can use it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

MAX_DEFAULT_WORKERS = 4  # more decode/post-processing threads than this only add contention for the GIL
CPU_DETECTOR_INSTANCES = 2  # batches a detector on the CPU runs at once (``default_instances`` says why)


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max``, else v1 CFS quota/period) under ``root``; None: no limit.

    ``root`` is the filesystem root holding ``proc/self/cgroup`` and ``sys/fs/cgroup``, a parameter so tests can
    point it at a directory of real files. Every level from the process's own cgroup up to the mount's root
    counts: the tightest quota wins.
    """
    limits = [limit for directory in _cgroup_dirs(root) if (limit := _quota(directory)) is not None]
    return min(limits) if limits else None


def usable_cpus(root: Path = Path("/"), affinity: int | None = None) -> int:
    """Whole CPUs this process can use: the affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    cpus = affinity if limit is None else min(affinity, math.ceil(limit))
    return max(1, cpus)


@dataclass(frozen=True, slots=True)
class ThreadBudget:
    """The default split of the usable CPUs between the model's intra-op threads and the worker pool."""

    cpus: int
    model_instances: int
    model_threads: int  # per instance
    workers: int


def default_instances(task: str, device: str, cpus: int, engine: str = "onnx") -> int:
    """How many batches the model runs at once by default: two for a detector that ONNX Runtime runs on the
    CPU (``engine``: the one expected from the model file and ``--backend``), else one.

    On this project's 2-core machine two batches at one intra-op thread each did more than one batch at two
    threads where the model is most of the work: the demo detector (ONNX Runtime) served 435-464 requests/s
    at concurrency 16 against 387-407 (alone: 806 images/s against 650 at batch 8), since a single-threaded
    forward has no parallel sections whose workers must be woken and waited for (a lone batch still gets every
    instance's threads: ``YoloDetector``). The classifier's model is cheap beside the transport, and a second
    batch thread only took the GIL from the event loop more often: 777 against 874-891 requests/s. The same
    detector on torch served less at concurrency 1-16 with two (C=16: 250-282 against 305 requests/s; C=1 p50
    8.6-9.0 against 6.8 ms): torch's threads are process-wide, so a lone batch cannot take both. On a GPU no
    second instance has been measured, so one.
    """
    if task == "detect" and device == "cpu" and engine == "onnx":
        return max(1, min(cpus, CPU_DETECTOR_INSTANCES))
    return 1


def thread_budget(cpus: int, instances: int = 1, frontends: int = 1) -> ThreadBudget:
    """The model's ``instances`` share the usable CPUs between them as intra-op threads (a batch's threads idle
    between batches; by default ORT's stop spinning when a batch ends, so idle threads cost nothing); the
    workers get up to ``MAX_DEFAULT_WORKERS`` of them.

    With ``frontends`` > 1 the model runs in a process of its own and each frontend's event loop keeps a CPU:
    the model's threads share the rest, at least one per instance. On this project's 2 CPUs the benchmark
    classifier behind 2 frontends served 927-1009 requests/s at concurrency 16 at one thread, 613-640 at two:
    torch's team then waits at every layer for a worker that a frontend took the core from."""
    cpus, instances, frontends = max(1, cpus), max(1, instances), max(1, frontends)
    model_cpus = cpus if frontends == 1 else cpus - frontends
    return ThreadBudget(cpus=cpus, model_instances=instances, model_threads=max(1, model_cpus // instances),
                        workers=min(MAX_DEFAULT_WORKERS, cpus))


def _cgroup_dirs(root: Path) -> list[Path]:
    """The cgroup directories holding this process's CPU controller files, innermost first."""
    mount = root / "sys" / "fs" / "cgroup"
    relative: list[str] = []
    try:
        lines = (root / "proc" / "self" / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers = parts[1].split(",")
        if parts[1] == "":
            relative.append(str(mount / parts[2].lstrip("/")))
        elif "cpu" in controllers:
            for name in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                relative.append(str(mount / name / parts[2].lstrip("/")))
    candidates = [Path(p) for p in relative] + [mount, mount / "cpu,cpuacct", mount / "cpu"]
    dirs: list[Path] = []
    for start in candidates:
        directory = start
        while True:  # up to the mount: a parent's quota limits its children too
            if directory.is_dir() and directory not in dirs:
                dirs.append(directory)
            if directory == mount or mount not in directory.parents:
                break
            directory = directory.parent
    return dirs


def _quota(directory: Path) -> float | None:
    v2 = directory / "cpu.max"
    if v2.is_file():
        fields = v2.read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return _ratio(fields[0], fields[1])
        return None
    quota, period = directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us"
    if quota.is_file() and period.is_file():
        return _ratio(quota.read_text().strip(), period.read_text().strip())
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # v1 writes -1 for "no limit"
