"""The model's intra-op threads: how many (set once at start for torch and every ONNX Runtime session), and
which thread owns them.

Torch's and ONNX Runtime's own defaults size their pools from the node's cores and (ORT) spin waiting for
work, which on a pod with 2 CPUs burns the cores the decode workers and the transport need. One process
serves one model, so the setting is process-wide, like torch's own.

Torch's CPU kernels run on OpenMP (libgomp), which gives every thread that starts parallel work a team of
workers of its own, kept until that thread exits. While the teams' threads outnumber the CPUs, libgomp stops
letting idle workers spin, and each of the model's parallel regions then waits for its workers to be woken:
the benchmark classifier ran 2x slower in the batcher's thread (1,313 against 2,305 images/s at batch 8) when
the thread that had loaded it was still alive. So the model loads in a thread that exits afterwards
(``in_passing_thread``), and the batcher's threads (one per model instance) are the only ones left running
torch's parallel work.

libgomp's workers keep its default spinning (300,000 rounds, about 2 ms here, after each parallel section):
with fewer rounds (``GOMP_SPINCOUNT=30000``) they stopped burning a core between batches, but a worker woken
for each section then waited for a core the event loop held, and the classifier without batching served 400
instead of 605 requests/s at concurrency 16.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)
_threads = 0  # 0: the libraries' own defaults (configure() was not called: tests building models directly)
_instances = 1
_spinning = "off"


def configure(threads: int, spinning: str = "off", instances: int = 1) -> None:
    """Remember the budget: ``threads`` intra-op threads per model instance (ONNX Runtime sessions and torch
    alike), ``instances`` batches at once (``lone_batch_threads``). Torch gets it when a torch model loads
    (``apply_to_torch``): a model ONNX Runtime runs never imports torch."""
    global _threads, _spinning, _instances
    _threads, _spinning, _instances = max(1, threads), spinning, max(1, instances)
    log.info("model: %d instance%s x %d intra-op thread%s (ONNX Runtime spinning: %s)", instances,
             "" if instances == 1 else "s", _threads, "" if _threads == 1 else "s", spinning)


def apply_to_torch() -> None:
    """Give torch the budget ``configure`` set (one inter-op thread: each batcher thread runs its batch on its
    own); torch models call this as they load. Without ``configure`` (tests, tools) torch keeps its own."""
    if not _threads:
        return
    import torch

    torch.set_num_threads(_threads)
    # RuntimeError: already set, or inter-op work already ran in this process
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def configured_threads() -> int:
    """The intra-op thread count set by ``configure``; 0 when it was not called."""
    return _threads


def lone_batch_threads() -> int:
    """Threads for a batch that has the model to itself: every instance's (0 when ``configure`` was not
    called, or with one instance: no second session is worth its memory then)."""
    return _threads * _instances if _threads and _instances > 1 else 0


def ort_session_options(threads: int | None = None) -> Any:
    """ONNX Runtime session options with this process's spinning setting and ``threads`` intra-op threads
    (default: the per-instance count ``configure`` set)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    threads = threads or _threads
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # "run": workers spin between the parallel sections of a batch (no wake-up per section) and stop when the
    # batch ends, so nothing spins between requests. Against "off", the detector served 25-56 % more requests
    # at C=1 and 0-17 % more at C=16 (h2load, alternating runs on a noisy machine).
    spin = "1" if _spinning in ("run", "always") else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if _spinning == "run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class BatchesInModel:
    """How many batches are inside the model now, from the batcher's instance threads: a batch that enters
    alone may take every instance's threads (``lone_batch_threads``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @contextlib.contextmanager
    def entered(self) -> Iterator[bool]:
        """Count this batch in for the block; yields whether it entered alone."""
        with self._lock:
            self._count += 1
            alone = self._count == 1
        try:
            yield alone
        finally:
            with self._lock:
                self._count -= 1


async def in_passing_thread(work: Callable[[], T], name: str = "model-load") -> T:
    """``work()`` in a new thread that ends with it, so OpenMP's team for the work ends too (module docstring);
    ``asyncio.to_thread`` would leave it with the default executor's long-lived thread."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value)  # type: ignore[arg-type]

    def run() -> None:
        try:
            value, error = work(), None
        except BaseException as exc:  # handed to the awaiting coroutine, as to_thread does
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed while loading: nobody is waiting
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name=name, daemon=True).start()  # a daemon: SIGTERM mid-load never waits on it
    return await done
