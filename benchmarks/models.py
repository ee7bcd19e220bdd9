"""The models and request payloads every benchmarked system serves, built here so anyone can rerun it offline.

- The classifier: a small CNN (three stride-2 convolutions, global pooling, a
  linear layer to 10 classes) with weights from a fixed seed, saved as TorchScript
  beside a preprocessing sidecar and a labels file. kubeinfer serves it with
  ``--task classify``; the peers load the very same file (benchmarks/peers/classifier.py).
  It takes raw RGB pixels [224, 224, 3]: every server normalises them itself.
- The detector: the YOLOv8n rectangle detector the test suite trains
  (``kubeinfer.runtime.demo_models.train_detector``, cached at .cache/models/detector.pt).
- Payloads: distinct raw images for the classifier and JPEGs for the detector.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
BENCH_CACHE = CACHE / "bench"
DETECTOR = CACHE / "models" / "detector.pt"
CLASSIFIER_SIZE = 224
CLASSIFIER_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "stripe", "dot", "wave", "grid")
CLASSIFIER_SEED = 0
# normalisation the sidecar declares (ImageNet's, kubeinfer's default too)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PAYLOAD_IMAGES = 32


@dataclass(frozen=True)
class ClassifierFiles:
    """Where the classifier lives: TorchScript model, its preprocessing sidecar and its labels."""

    model: Path
    sidecar: Path
    labels: Path


def build_classifier() -> object:
    """The small CNN with seeded weights, in eval mode (a torch.nn.Module)."""
    import torch
    from torch import nn

    torch.manual_seed(CLASSIFIER_SEED)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(CLASSIFIER_CLASSES)),
    ).eval()


def ensure_classifier(directory: Path = BENCH_CACHE) -> ClassifierFiles:
    """Write the TorchScript classifier, sidecar and labels once; later calls reuse them."""
    files = ClassifierFiles(directory / "classifier.pt", directory / "classifier.json",
                            directory / "classifier-labels.txt")
    if files.model.exists() and files.sidecar.exists() and files.labels.exists():
        return files
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    module = build_classifier()
    example = torch.zeros(1, 3, CLASSIFIER_SIZE, CLASSIFIER_SIZE)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated but is what TorchScript takes
        traced = torch.jit.trace(module, example)
    partial = files.model.with_suffix(".tmp")
    traced.save(str(partial))
    files.sidecar.write_text(json.dumps({
        "input_size": CLASSIFIER_SIZE, "mean": list(MEAN), "std": list(STD), "channel_order": "rgb",
        "resize_mode": "stretch", "output": "logits"}, indent=2) + "\n")
    files.labels.write_text("\n".join(CLASSIFIER_CLASSES) + "\n")
    partial.replace(files.model)
    return files


def ensure_detector() -> Path:
    """The cached YOLO rectangle detector (trained on first use, about two minutes on two cores)."""
    from kubeinfer.runtime.demo_models import train_detector

    return train_detector(DETECTOR)


def make_payloads(path: Path, count: int = PAYLOAD_IMAGES) -> Path:
    """Raw 224x224 RGB images for the classifier and 128x128 JPEGs (quality 90) for the detector."""
    if path.exists():
        return path
    import cv2

    from kubeinfer.runtime.demo_models import synthetic_image

    from .load import save_payloads

    rng = np.random.default_rng(1234)
    pixels = np.stack([synthetic_image(rng, CLASSIFIER_SIZE).pixels for _ in range(count)])
    jpegs = []
    for _ in range(count):
        rgb = synthetic_image(rng, 128).pixels
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG payload")
        jpegs.append(encoded.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".tmp.npz")
    save_payloads(partial, pixels, jpegs)
    partial.replace(path)
    return path
