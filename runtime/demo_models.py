"""Small models that the README demo and the test suite train for themselves.

No weights can be downloaded at run time, so the demo detector is trained here
on synthetic images (filled rectangles on blurred noise) in about two minutes on
two CPU cores. The same generator draws the test images, so a test knows where
every rectangle is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kubeinfer.runtime.models.offline import prepare_offline_ultralytics

RECTANGLE_LABEL = "rectangle"


@dataclass(frozen=True)
class SyntheticImage:
    """An RGB image and the pixel boxes (x1, y1, x2, y2) of the rectangles drawn on it."""

    pixels: np.ndarray
    boxes: list[tuple[int, int, int, int]]


def synthetic_image(rng: np.random.Generator, size: int = 128, max_rects: int = 3) -> SyntheticImage:
    """Blurred noise with 1..max_rects non-overlapping filled rectangles."""
    import cv2

    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pixels = cv2.GaussianBlur(noise, (0, 0), sigmaX=size / 32)
    boxes: list[tuple[int, int, int, int]] = []
    want = int(rng.integers(1, max_rects + 1))
    for _ in range(50):
        if len(boxes) == want:
            break
        w, h = (int(v) for v in rng.integers(size // 8, size // 3, 2))
        x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        box = (x1, y1, x1 + w, y1 + h)
        if any(_overlaps(box, other, margin=4) for other in boxes):
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(pixels, (box[0], box[1]), (box[2] - 1, box[3] - 1), colour, thickness=-1)
        boxes.append(box)
    return SyntheticImage(pixels=pixels, boxes=boxes)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def write_dataset(root: Path, count: int, size: int, seed: int, segment: bool) -> Path:
    """Write a YOLO-format dataset (train = val) and return its data.yaml."""
    import cv2

    rng = np.random.default_rng(seed)
    images, labels = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sample = synthetic_image(rng, size)
        cv2.imwrite(str(images / f"{i:04d}.png"), cv2.cvtColor(sample.pixels, cv2.COLOR_RGB2BGR))
        rows = []
        for x1, y1, x2, y2 in sample.boxes:
            if segment:
                corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
                rows.append("0 " + " ".join(f"{x / size:.6f} {y / size:.6f}" for x, y in corners))
            else:
                cx, cy, w, h = (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size
                rows.append(f"0 {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        (labels / f"{i:04d}.txt").write_text("\n".join(rows) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n  0: {RECTANGLE_LABEL}\n")
    return data


def train_detector(out: Path, *, segment: bool = False, epochs: int = 15, images: int = 256, size: int = 128) -> Path:
    """Train a one-class YOLOv8n (or -seg) detector of rectangles and copy its best weights to ``out``."""
    out = out.resolve()
    if out.exists():
        return out
    work = out.parent / f".{out.stem}-work"
    shutil.rmtree(work, ignore_errors=True)
    prepare_offline_ultralytics(out.parent / ".ultralytics")
    data = write_dataset(work / "data", images, size, seed=0, segment=segment)

    from ultralytics import YOLO

    model = YOLO("yolov8n-seg.yaml" if segment else "yolov8n.yaml")
    model.train(
        data=str(data), epochs=epochs, imgsz=size, batch=16, workers=0, amp=False, plots=False,
        warmup_epochs=0, seed=0, deterministic=True, project=str(work), name="train", exist_ok=True,
        verbose=False, val=False, device="cpu",
    )
    best = work / "train" / "weights" / "last.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(best, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def export_model(weights: Path, fmt: str) -> Path:
    """Export trained weights to ``onnx`` or ``torchscript`` beside them (cached)."""
    target = weights.with_suffix({"onnx": ".onnx", "torchscript": ".torchscript"}[fmt])
    if target.exists():
        return target
    prepare_offline_ultralytics(weights.parent / ".ultralytics")
    from ultralytics import YOLO

    size = int(YOLO(str(weights)).model.args.get("imgsz", 640))
    options = {"dynamic": True, "batch": 16, "simplify": True} if fmt == "onnx" else {"batch": 16}
    exported = Path(YOLO(str(weights)).export(format=fmt, imgsz=size, **options))
    if exported != target:
        shutil.move(exported, target)
    return target
