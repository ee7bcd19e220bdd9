"""The rollout's traffic table (``--traffic-file``): loaded at start, re-read whenever its content changes.

The operator writes the table into the ConfigMap NAME-traffic, mounted into every revision's pods; the kubelet
updates a mounted ConfigMap by swapping a ``..data`` symlink, so the file is polled (every second, in a thread
of its own: serving never waits on the file system) and compared by content, not by mtime. A missing or bad file
keeps the last good table and is logged once (until a good one is read again). GetModelInfo serves the table, the
shadow mirror follows it, and ``kubeinfer_traffic_generation{model}`` says which generation is loaded.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import RevisionTarget, Traffic

log = logging.getLogger("kubeinfer.runtime.traffic")
POLL_SECONDS = 1.0


class TrafficError(ValueError):
    """The file is not a traffic table."""


def _percent(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise TrafficError(f"{key} must be an integer in 0..100, not {value!r}")
    return value


def _target(body: dict[str, Any], key: str) -> RevisionTarget | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("revision"), str) \
            or not isinstance(value.get("target"), str):
        raise TrafficError(f"{key} must be an object with string fields revision and target")
    return RevisionTarget(value["revision"], value["target"])


def parse(text: str) -> Traffic:
    """The table a traffic file holds (design: generation, stable, candidate, candidateWeight, shadowPercent)."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise TrafficError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise TrafficError("not a JSON object")
    generation = body.get("generation")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise TrafficError(f"generation must be a non-negative integer, not {generation!r}")
    candidate = _target(body, "candidate")
    weight, shadow = _percent(body, "candidateWeight"), _percent(body, "shadowPercent")
    if candidate is None and (weight or shadow):
        raise TrafficError("candidateWeight and shadowPercent must be 0 without a candidate")
    return Traffic(generation, _target(body, "stable"), candidate, weight, shadow)


class TrafficFile:
    """The last good table of ``path`` (None: no good one read yet, or no file given), kept current by a daemon
    thread polling every ``interval`` seconds once ``start`` was called."""

    def __init__(self, path: Path | None, metrics: RuntimeMetrics, interval: float = POLL_SECONDS) -> None:
        self.path = path
        self.metrics = metrics
        self.interval = interval
        self.table: Traffic | None = None
        self._content: bytes | None = None
        self._complained = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics.traffic_generation.labels(metrics.model).set(0)
        self.read()

    def read(self) -> bool:
        """Read the file once; True when the table changed."""
        if self.path is None:
            return False
        try:
            content = self.path.read_bytes()
        except OSError as exc:
            self._complain(f"cannot read it ({exc.strerror or exc})")
            return False
        if content == self._content:
            return False
        try:
            table = parse(content.decode("utf-8", errors="replace"))
        except TrafficError as exc:
            self._complain(str(exc))
            return False
        self._content, self._complained = content, False
        changed = table != self.table
        self.table = table  # one reference swap: readers on other threads see the old table or the new one
        self.metrics.traffic_generation.labels(self.metrics.model).set(table.generation)
        if changed:
            log.info("traffic table generation %d: stable %s, candidate %s, weight %d%%, shadow %d%%",
                     table.generation, table.stable.revision if table.stable else "-",
                     table.candidate.revision if table.candidate else "-", table.candidate_weight,
                     table.shadow_percent)
        return changed

    def _complain(self, reason: str) -> None:
        if not self._complained:
            self._complained = True
            kept = f"keeping generation {self.table.generation}" if self.table else "no table loaded"
            log.warning("--traffic-file %s: %s; %s", self.path, reason, kept)

    def start(self) -> None:
        """Poll the file in a daemon thread (nothing to do without ``--traffic-file``)."""
        if self.path is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="traffic-file", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.read()
            except Exception:  # never let the poller die: the next tick tries again
                log.exception("--traffic-file %s: reading it failed", self.path)
