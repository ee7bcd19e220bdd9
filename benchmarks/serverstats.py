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
    """The process's user + system CPU seconds (all threads) and, from /metrics, the batcher's totals."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    images = batches = 0.0
    if metrics_url:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(BATCH_SUM + "{"):
                    images += float(line.rsplit(" ", 1)[1])
                elif line.startswith(BATCH_COUNT + "{"):
                    batches += float(line.rsplit(" ", 1)[1])
    return Sample(cpu, images, batches)


def level_figures(before: Sample, after: Sample, images: int) -> dict[str, float | None]:
    """Server CPU per image and the mean batch formed over a level (images: the requests that completed)."""
    batches = after.batches - before.batches
    return {"server_cpu_ms_per_image": 1000.0 * (after.cpu_s - before.cpu_s) / images if images else None,
            "mean_batch": (after.batched_images - before.batched_images) / batches if batches else None}
