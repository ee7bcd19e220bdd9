"""Progress lines for long downloads: bytes so far, of how many, and the rate, every few seconds.

A large model can take minutes to download; without these lines an init container looks hung in `kubectl logs`.
Downloads that end before the first interval print nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIB = 1024 * 1024


class Progress:
    """Counts the bytes of one download and prints a line every ``every`` seconds (0: never)."""

    def __init__(self, label: str, total: int | None, every: float, *, start: int = 0,
                 out: TextIO | None = None) -> None:
        self.label, self.total, self.every = label, total, every
        self.done = start
        self.out = out or sys.stdout
        self.began = self.last = time.monotonic()
        self.counted = 0  # bytes of this run, for the rate (a resumed download starts at ``start``)

    def add(self, count: int) -> None:
        self.done += count
        self.counted += count
        now = time.monotonic()
        if self.every > 0 and now - self.last >= self.every:
            self.last = now
            print(f"kubeinfer fetch: {self.label}: {self.line(now)}", file=self.out, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.began, 1e-6)
        rate = f"{self.counted / MIB / elapsed:.1f} MiB/s"
        if self.total:
            share = 100.0 * self.done / self.total
            return f"{self.done / MIB:.1f} of {self.total / MIB:.1f} MiB ({share:.0f}%) at {rate}"
        return f"{self.done / MIB:.1f} MiB at {rate}"
