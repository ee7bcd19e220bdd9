"""glibc's allocator as `kubeinfer serve` sets it before torch loads, and the batch stacking that keeps the GIL."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kubeinfer.runtime.models.stacking import stack_holding_gil

FAULTS_PER_FORWARD = textwrap.dedent("""
    import resource, sys, threading
    if sys.argv[1] == "tuned":
        from kubeinfer.runtime.allocator import keep_freed_memory
        assert keep_freed_memory()
    import torch
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.AdaptiveAvgPool2d(1)).eval()
    sizes = (8, 5, 3, 6)  # the batcher's batch sizes vary from call to call
    result = {}
    def serve():  # in a thread of its own, as the batcher runs the model
        with torch.inference_mode():
            for size in sizes:
                model(torch.rand(size, 3, 96, 96))
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for i in range(40):
                model(torch.rand(sizes[i % 4], 3, 96, 96))
            result["faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40
    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    print(result["faults"])
""")


def _faults_per_forward(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_FORWARD, mode], capture_output=True, text=True,
                          timeout=120, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def test_kept_memory_stops_the_batches_faulting_their_pages_in_again() -> None:
    """glibc's defaults hand a batch's megabytes back to the kernel and fault them in again the next batch."""
    untuned, tuned = _faults_per_forward("default"), _faults_per_forward("tuned")
    assert untuned > 100, f"the control did not fault as expected ({untuned} faults per forward)"
    assert tuned < untuned / 5, f"{tuned} page faults per forward with freed memory kept, {untuned} without"


def test_stacking_holding_the_gil_equals_np_stack() -> None:
    rng = np.random.default_rng(0)
    items = [rng.integers(0, 255, (5, 7, 3), dtype=np.uint8) for _ in range(4)]
    items.append(np.frombuffer(items[0].tobytes(), np.uint8).reshape(5, 7, 3))  # read-only, as request bytes are
    assert np.array_equal(stack_holding_gil(items), np.stack(items))
    out = np.empty((5, 5, 7, 3), np.uint8)
    assert stack_holding_gil(items, out) is out and np.array_equal(out, np.stack(items))


def test_stacking_falls_back_to_np_stack_for_other_layouts() -> None:
    base = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4)
    strided = [base[0, ::2], base[1, ::2]]  # not C-contiguous
    assert np.array_equal(stack_holding_gil(strided), np.stack(strided))
    with pytest.raises(ValueError):  # np.stack's own error for mismatched shapes
        stack_holding_gil([np.zeros((2, 2)), np.zeros((3, 2))])
