"""A test-only probe of a Python process's memory, loaded by putting this folder first on PYTHONPATH and naming an
output folder in KUBEINFER_HEAP_PROBE (tests/test_operator_state.py runs the operator so; nothing else does).

On SIGUSR1 it collects garbage and writes ``probe-N.json`` (written whole, then renamed): the process's RSS and what
its two allocators hold and use. RSS alone cannot tell a leak from an allocator keeping freed memory: pymalloc frees
a 1 MiB arena only when every object in it is gone, and glibc keeps freed chunks for reuse. Memory *in use* (bytes in
live pymalloc blocks, plus glibc's allocated chunks) is what a leak makes grow.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MIB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _pymalloc() -> dict[str, float]:
    """pymalloc's own figures (sys._debugmallocstats prints them to fd 2): written by a forked copy of the process,
    so the operator's own stderr is never redirected."""
    with tempfile.TemporaryFile("w+") as out:
        pid = os.fork()
        if pid == 0:  # the child: a copy of the heap at this instant
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
            os._exit(0)
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):  # a lock held at the fork would hang it: never wait forever
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        out.seek(0)
        text = out.read()

    def number(pattern: str) -> int:
        found = re.search(pattern, text, re.MULTILINE)
        return int(found.group(1).replace(",", "")) if found else -1

    return {"pymalloc_used_mib": number(r"^# bytes in allocated blocks\s*=\s*([\d,]+)") / MIB,
            "pymalloc_arenas_mib": number(r"^Total\s*=\s*([\d,]+)") / MIB}


def probe() -> dict[str, Any]:
    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    figures: dict[str, Any] = {"rss_mib": rss / MIB, "malloc_used_mib": (info.uordblks + info.hblkhd) / MIB,
                               "malloc_held_mib": (info.arena + info.hblkhd) / MIB, **_pymalloc(),
                               "objects": len(gc.get_objects())}
    figures["in_use_mib"] = figures["pymalloc_used_mib"] + figures["malloc_used_mib"]
    return figures


def _install(folder: Path) -> None:
    count = 0

    def on_signal(*_: Any) -> None:
        nonlocal count
        count += 1
        target = folder / f"probe-{count}.json"

        def write() -> None:  # off the signal handler: gc and the fork then run like any other thread's work
            partial = target.with_suffix(".partial")
            partial.write_text(json.dumps(probe()))
            partial.rename(target)

        threading.Thread(target=write, name="heap probe").start()

    signal.signal(signal.SIGUSR1, on_signal)


if os.environ.get("KUBEINFER_HEAP_PROBE"):
    _install(Path(os.environ["KUBEINFER_HEAP_PROBE"]))
