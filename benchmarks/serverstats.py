"""A served process's CPU time and its batcher's batch sizes, sampled around one load level.

CPU per image outside the model is the server's process CPU time over a level divided by the images
served, minus the model's own CPU time per image at the mean batch size the batcher formed (measured
alone by ``limits.py``). Stdlib only: ``load.py`` imports it in whichever venv it runs.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass

BATCH_SUM, BATCH_COUNT = "kubeinfer_batch_size_sum", "kubeinfer_batch_size_count"


@dataclass(frozen=True, slots=True)
class Sample:
    cpu_s: float
    batched_images: float  # sum of the batch-size histogram: images through the model
    batches: float


def sample(pid: int, metrics_url: str | None) -> Sample:
    """The user + system CPU seconds of the process and its descendants (all threads; a runtime with
    ``--frontends`` is several processes) and, from /metrics, the batcher's totals."""
    stats = _process_stats()
    family, found = {pid}, True
    while found:
        found = False
        for child, (parent, _) in stats.items():
            if parent in family and child not in family:
                family.add(child)
                found = True
    cpu = sum(stats[p][1] for p in family if p in stats)
    images = batches = 0.0
    if metrics_url:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(BATCH_SUM + "{"):
                    images += float(line.rsplit(" ", 1)[1])
                elif line.startswith(BATCH_COUNT + "{"):
                    batches += float(line.rsplit(" ", 1)[1])
    return Sample(cpu, images, batches)


def _process_stats() -> dict[int, tuple[int, float]]:
    """Every process's parent pid and user + system CPU seconds, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # fields[0] is stat's field 3 (the state): ppid is field 4, utime and stime fields 14 and 15
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return stats


def level_figures(before: Sample, after: Sample, images: int) -> dict[str, float | None]:
    """Server CPU per image and the mean batch formed over a level (images: the requests that completed)."""
    batches = after.batches - before.batches
    return {"server_cpu_ms_per_image": 1000.0 * (after.cpu_s - before.cpu_s) / images if images else None,
            "mean_batch": (after.batched_images - before.batched_images) / batches if batches else None}
