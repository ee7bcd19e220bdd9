"""A colour classifier whose answer is known by construction, its label files, images and shared runtimes.

The model scores each image by the mean of its colour channels: with preprocessing
``mean 0, std 1, rgb`` its input is ``pixel / 255``, and its logits are
``SCALE * mean(R), SCALE * mean(G), SCALE * mean(B)``. So a red image is "red", and
the expected probabilities of any image follow from the same preprocessing here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from runtime_support import CACHE, RuntimeProcess

from kubeinfer.clients.types import ClassifyResult
from kubeinfer.runtime.models.preprocessing import Preprocessing

COLOURS = ["red", "green", "blue"]
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
SCALE = 10.0
INPUT_SIZE = 32
VERSION = "v1"  # bump when the model changes, so cached files are rebuilt
MODELS = CACHE / "models" / "colour"


@dataclass(frozen=True)
class ColourModels:
    torchscript: Path
    onnx: Path


def colour_models() -> ColourModels:
    """TorchScript and ONNX exports of the channel-mean classifier plus their shared sidecar (cached)."""
    torchscript = MODELS / f"colour-{VERSION}.pt"
    onnx = MODELS / f"colour-{VERSION}.onnx"
    sidecar = MODELS / f"colour-{VERSION}.json"
    if not (torchscript.exists() and onnx.exists() and sidecar.exists()):
        MODELS.mkdir(parents=True, exist_ok=True)
        _export(torchscript, onnx)
        sidecar.write_text(json.dumps({"input_size": INPUT_SIZE, "mean": [0, 0, 0], "std": [1, 1, 1],
                                       "channel_order": "rgb", "resize_mode": "stretch", "output": "logits"}))
    return ColourModels(torchscript, onnx)


def _export(torchscript: Path, onnx: Path) -> None:
    import warnings

    import torch

    class ChannelMeans(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)) * SCALE

    module = ChannelMeans().eval()
    example = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE)
    torch.jit.trace(module, example).save(str(torchscript.with_suffix(".tmp")))
    torchscript.with_suffix(".tmp").replace(torchscript)
    staging = onnx.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated but needs no onnxscript
        torch.onnx.export(module, (example,), str(staging), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    staging.replace(onnx)


def expected_probabilities(rgb: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """What the served model must answer for this RGB image: the runtime's own preprocessing, then the model."""
    preprocessing = Preprocessing(input_size=INPUT_SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                  channel_order=channel_order, resize_mode="stretch", output="logits")
    chw = preprocessing.apply(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    logits = SCALE * chw.mean(axis=(1, 2), dtype=np.float64)
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def scores(result: ClassifyResult | None) -> np.ndarray:
    """A prediction's scores as one vector over COLOURS (0 for the classes outside its top k)."""
    assert result is not None
    vector = np.zeros(len(COLOURS))
    for c in result.top:
        vector[c.class_id] = c.score
    return vector


def solid(colour: str, height: int = 48, width: int = 64) -> np.ndarray:
    return np.full((height, width, 3), RGB[colour], dtype=np.uint8)


def noisy(colour: str, seed: int, height: int = 80, width: int = 60) -> np.ndarray:
    """Noise on every channel, the named one lifted: its mean wins, but not by much."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 150, (height, width, 3)).astype(np.int16)
    pixels[:, :, COLOURS.index(colour)] += 90
    return np.clip(pixels, 0, 255).astype(np.uint8)


def train_colour_cls() -> Path:
    """An ultralytics YOLOv8n-cls trained on noisy colour images (about 30 s on 2 cores, then cached).

    Its class names come from the dataset folders (sorted: blue, green, red), so it needs no labels file.
    """
    out = MODELS / f"colour-cls-{VERSION}.pt"
    if out.exists():
        return out
    import shutil

    from kubeinfer.runtime.models.offline import prepare_offline_ultralytics

    work = MODELS / ".colour-cls-work"
    shutil.rmtree(work, ignore_errors=True)
    prepare_offline_ultralytics(CACHE / "models" / ".ultralytics")
    for s, (split, count) in enumerate((("train", 40), ("val", 10))):
        for c, colour in enumerate(COLOURS):
            folder = work / "data" / split / colour
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = noisy(colour, seed=10_000 + 1000 * s + 100 * c + i, height=32, width=32)
                cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    from ultralytics import YOLO

    YOLO("yolov8n-cls.yaml").train(
        data=str(work / "data"), epochs=20, imgsz=INPUT_SIZE, batch=16, workers=0, amp=False, plots=False,
        seed=0, deterministic=True, device="cpu", project=str(work), name="train", exist_ok=True, verbose=False,
        hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, erasing=0.0)  # colour is the signal: no colour augmentation
    shutil.copy(work / "train" / "weights" / "best.pt", out)
    shutil.rmtree(work, ignore_errors=True)
    return out


# ---------------------------------------------------------------- label files, one per accepted layout

def write_labels(directory: Path, layout: str, names: list[str] | None = None) -> Path:
    """A labels file naming ``names`` (default red/green/blue) in ``layout``; see kubeinfer.runtime.labels."""
    names = names or list(COLOURS)
    directory.mkdir(parents=True, exist_ok=True)
    onehot = np.eye(len(names), dtype=np.int64)
    order = list(reversed(range(len(names))))  # rows out of class order: the 1's position must decide
    if layout == "txt":
        path = directory / "labels.txt"
        path.write_text("\n".join(names) + "\n\n")
    elif layout == "json-list":
        path = directory / "labels.json"
        path.write_text(json.dumps(names))
    elif layout == "json-index-map":
        path = directory / "labels.json"
        path.write_text(json.dumps({str(i): names[i] for i in order}))
    elif layout == "json-label-map":
        path = directory / "labels.json"
        path.write_text(json.dumps({names[i]: i for i in order}))
    elif layout == "csv":
        path = directory / "labels.csv"
        path.write_text("label\n" + "\n".join(names) + "\n")
    elif layout == "csv-index":
        path = directory / "labels.csv"
        path.write_text("index,label\n" + "".join(f"{i},{names[i]}\n" for i in order))
    elif layout == "csv-onehot":
        path = directory / "labels.csv"
        rows = [f"{names[i]},{','.join(map(str, onehot[i]))}" for i in order + order]  # repeated rows agree
        path.write_text("\n".join(rows) + "\n")
    elif layout == "csv-onehot-header":
        path = directory / "labels.csv"
        rows = [",".join(map(str, onehot[i])) for i in order]
        path.write_text(",".join(names) + "\n" + "\n".join(rows) + "\n")
    elif layout == "npy-names":
        path = directory / "labels.npy"
        np.save(path, np.array(names, dtype=str))
    elif layout == "npy-onehot":
        path = directory / "labels.npy"
        np.save(path, onehot[order].astype(np.float32))
        (directory / "labels.txt").write_text("\n".join(names[i] for i in order) + "\n")
    elif layout == "npz-onehot":
        path = directory / "labels.npz"
        np.savez(path, names=np.array([names[i] for i in order], dtype=str), onehot=onehot[order])
    else:
        raise ValueError(f"unknown layout {layout}")
    return path


LAYOUTS = ["txt", "json-list", "json-index-map", "json-label-map", "csv", "csv-index", "csv-onehot",
           "csv-onehot-header", "npy-names", "npy-onehot", "npz-onehot"]


# ---------------------------------------------------------------- runtimes shared by the classify/stream/REST tests

_RUNTIMES: dict[str, RuntimeProcess] = {}


def shared_runtime(factory: Callable[..., RuntimeProcess], key: str, *args: str, wait: bool = True) -> RuntimeProcess:
    """One runtime per key for the whole session (runtime_factory stops it at the end); ``wait=False`` returns it
    starting, so that several load at once (``wait_ready`` on each then)."""
    runtime = _RUNTIMES.get(key)
    if runtime is None or runtime.process.poll() is not None:
        runtime = factory(*args, "--shutdown-delay", "0", wait=False)  # these tests never watch a drain: stop fast
        _RUNTIMES[key] = runtime
    return runtime.wait_ready() if wait else runtime


def classify_runtime(factory: Callable[..., RuntimeProcess], labels_dir: Path) -> RuntimeProcess:
    """TorchScript colour classifier, one-hot .npy labels, top-k 2, 1 MB messages."""
    labels = write_labels(labels_dir / "classify-npy", "npy-onehot")
    return shared_runtime(factory, "classify", "--task", "classify", "--model", str(colour_models().torchscript),
                          "--labels", str(labels), "--model-name", "colours", "--top-k", "2",
                          "--max-message-bytes", "1000000", "--max-batch-delay-ms", "5", "--max-queue-size", "64")


