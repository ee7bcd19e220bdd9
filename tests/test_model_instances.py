"""Model instances: batches counted in and out of the model, and a detector's lone-batch ONNX Runtime session."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from runtime_support import CACHE

from kubeinfer.runtime.models.backend import choose_backend
from kubeinfer.runtime.models.threads import BatchesInModel

TWO_INSTANCES = textwrap.dedent("""
    import json, pathlib, sys
    import numpy as np
    from kubeinfer.runtime.models import threads
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector
    from kubeinfer.runtime.models.yolo_io import Letterboxed

    threads.configure(1, instances=2)  # as `kubeinfer serve --model-instances 2 --model-threads 1` does
    detector = YoloOnnxDetector(pathlib.Path(sys.argv[1]), "cpu", None)
    rng = np.random.default_rng(3)
    size = detector.image_size
    batch = [Letterboxed(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), size, size) for _ in range(4)]
    used = []
    for name in ("_session", "_lone_session"):
        session = getattr(detector, name)
        run = session.run
        session.run = lambda *a, _run=run, _name=name, **k: (used.append(_name), _run(*a, **k))[1]
    alone = detector.forward(batch)  # nothing else in the model: the lone session
    with detector._batches.entered():  # another batch is in the model: its own share of the threads
        overlapped = detector.forward(batch)
    print(json.dumps({
        "used": used,
        "threads": [detector._session.get_session_options().intra_op_num_threads,
                    detector._lone_session.get_session_options().intra_op_num_threads],
        "max_difference": max(float(np.abs(a.predictions - b.predictions).max())
                              for a, b in zip(alone, overlapped)),
    }))
""")


def test_a_batch_alone_in_the_model_runs_on_every_instance_threads(detector_model: Path) -> None:
    onnx = choose_backend(detector_model, "onnx", "cpu", CACHE / "exports", None).path
    # a subprocess: the thread budget is process-wide
    out = subprocess.run([sys.executable, "-c", TWO_INSTANCES, str(onnx)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["threads"] == [1, 2]
    assert result["used"] == ["_lone_session", "_session"]
    assert result["max_difference"] < 1e-3  # the same model: thread counts only reorder float sums


def test_batches_in_model_says_who_entered_alone() -> None:
    batches = BatchesInModel()
    seen: list[bool] = []
    inside, leave = threading.Event(), threading.Event()

    def first() -> None:
        with batches.entered() as alone:
            seen.append(alone)
            inside.set()
            leave.wait(5)

    worker = threading.Thread(target=first)
    worker.start()
    assert inside.wait(5)
    with batches.entered() as alone:
        seen.append(alone)
    leave.set()
    worker.join(5)
    with batches.entered() as alone:
        seen.append(alone)
    assert seen == [True, False, True]
