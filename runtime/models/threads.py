"""The model's intra-op thread count, set once at start for torch and every ONNX Runtime session.

Torch's and ONNX Runtime's own defaults size their pools from the node's cores and (ORT) spin waiting for
work, which on a pod with 2 CPUs burns the cores the decode workers and the transport need. One process
serves one model, so the setting is process-wide, like torch's own.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)
_threads = 0  # 0: the libraries' own defaults (configure() was not called: tests building models directly)
_spinning = False


def configure(threads: int, spinning: bool = False) -> None:
    """Give torch ``threads`` intra-op threads (one inter-op thread) and remember both for ORT sessions."""
    import torch

    global _threads, _spinning
    _threads, _spinning = max(1, threads), spinning
    torch.set_num_threads(_threads)
    # the batcher calls the model from one thread: no inter-op parallelism; RuntimeError: already set, or
    # inter-op work already ran in this process
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    log.info("model threads: %d (ONNX Runtime spinning %s)", _threads, "on" if spinning else "off")


def configured_threads() -> int:
    """The intra-op thread count set by ``configure``; 0 when it was not called."""
    return _threads


def ort_session_options() -> Any:
    """ONNX Runtime session options with this process's thread count and spinning setting."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if _threads:
        options.intra_op_num_threads = _threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if _spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if _spinning else "0")
    return options
