"""Before it reports ready, the runtime sends a synthetic request through the whole path: decode, preprocessing,
the model at batch sizes 1 and --max-batch-size, postprocessing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from classify_support import colour_models, write_labels
from runtime_support import RuntimeProcess, metric_sum

from kubeinfer.runtime import metrics as names


def series(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} missing")


def test_ready_means_the_whole_path_ran(runtime_factory: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    labels = write_labels(tmp_path, "txt")
    runtime = runtime_factory("--task", "classify", "--model", str(colour_models().onnx), "--labels", str(labels),
                              "--model-name", "warm", "--max-batch-size", "4", "--shutdown-delay", "0")
    text = runtime.metrics()  # ready, and no client has sent anything yet
    assert series(text, names.IMAGES) == 5  # one image, then a batch of four: decoded, run, post-processed
    assert series(text, names.BATCH_SIZE + "_sum") == 5
    assert series(text, names.BATCH_SIZE + "_count") == 2
    # no client request was counted (the series a rollout's analysis reads exist from the start, at 0)
    assert f"{names.REQUESTS}{{" in text and metric_sum(text, names.REQUESTS) == 0
    runtime.terminate()
