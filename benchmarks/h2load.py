"""gRPC load from h2load (Debian's nghttp2-client), a C HTTP/2 load generator.

A Python load generator on the same small machine as the server takes cores the server needs and
measures itself as much as the server; h2load costs the server's cores almost nothing. gRPC over
HTTP/2 is a POST of a length-prefixed protobuf message (``grpc_frame``) with two headers, so h2load
sends it as is: C concurrent streams on one connection, each sending its next request as soon as
the last returned (closed loop, like ``load.closed_loop``). h2load sees HTTP statuses only; the
gRPC status travels in the trailers, so callers make one real gRPC call of the same message first
and check its answer (``load.run_levels`` does).

Stdlib only: ``load.py`` imports it in whichever venv it runs.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BINARY = "h2load"


def available() -> bool:
    return shutil.which(BINARY) is not None


def grpc_frame(message: bytes) -> bytes:
    """One gRPC message on the wire: not compressed (0), big-endian length, the serialized protobuf."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def run_level(address: str, method: str, message: bytes, concurrency: int, duration: float, warmup: float,
              timeout: float) -> dict[str, Any]:
    """One closed-loop level; the same fields as ``load.LevelResult`` (latencies from h2load's per-request log:
    requests completing inside the measured window count)."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as work:
        body, log = Path(work) / "body.bin", Path(work) / "requests.tsv"
        body.write_bytes(grpc_frame(message))
        argv = [BINARY, "-c", "1", "-m", str(concurrency), "-D", _ms(duration), "--warm-up-time", _ms(warmup),
                "-N", _ms(timeout), "-H", "content-type: application/grpc", "-H", "te: trailers",
                "-d", str(body), "--log-file", str(log), f"http://{address}{method}"]
        started = time.time()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=warmup + duration + timeout + 30)
        if done.returncode != 0:
            raise RuntimeError(f"h2load exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    return summarise(rows, concurrency, duration, started + warmup, done.stdout)


def summarise(rows: list[list[str]], concurrency: int, duration: float, measure_from: float,
              output: str) -> dict[str, Any]:
    """Rows of h2load's log (start µs since the epoch, HTTP status, µs to the end of the response) as a level.

    h2load logs the measured phase only; a request counts when it completes inside the measured window."""
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    stop_at = measure_from + duration
    for fields in rows:
        start_s, status, elapsed_s = int(fields[0]) / 1e6, int(fields[1]), int(fields[2]) / 1e6
        if not measure_from <= start_s + elapsed_s <= stop_at + 0.5:  # h2load's own clock: 0.5 s of slack
            continue
        if status != 200:
            errors += 1
            first_error = first_error or f"HTTP {status}"
            continue
        latencies.append(elapsed_s * 1000.0)
    if not rows and "0 succeeded" in output:
        first_error = output.strip().splitlines()[-1][:300]
    latencies.sort()
    count = len(latencies)
    return {"concurrency": concurrency, "duration_s": duration, "requests": count, "errors": errors,
            "throughput_rps": count / duration,
            "p50_ms": _rank(latencies, 50) if count else None, "p99_ms": _rank(latencies, 99) if count else None,
            "mean_ms": sum(latencies) / count if count else None, "first_error": first_error,
            "generator": "h2load"}


def _ms(seconds: float) -> str:
    """h2load's duration syntax: an integer and a unit."""
    return f"{max(1, round(seconds * 1000))}ms"


def _rank(sorted_values: list[float], q: float) -> float:
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]
