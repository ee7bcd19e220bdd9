"""How an image model's input is made from a decoded image: size, resize mode, channel order, normalisation.

Flags win over the JSON sidecar beside the model (``model.onnx`` -> ``model.json``), the sidecar over the
defaults (``image_model`` lists them). Plain numpy and OpenCV: a frontend (``--frontends``) and the lean runtime
resize with it without loading a model library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kubeinfer.runtime.errors import StartupError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("stretch", "letterbox", "center-crop")
OUTPUTS = ("logits", "probabilities", "embeddings")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded BGR image becomes a model input (float32 CHW)."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "rgb"
    resize_mode: str = "stretch"
    output: str = "logits"

    @classmethod
    def resolve(cls, model_path: Path, *, input_size: int | None = None,
                mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                channel_order: str | None = None, resize_mode: str | None = None,
                output: str | None = None) -> Preprocessing:
        """Flags win over the sidecar, the sidecar over the defaults."""
        base = cls()
        sidecar = sidecar_path(model_path)
        if sidecar.exists():
            base = cls.from_sidecar(sidecar)
        overrides = {k: v for k, v in {"input_size": input_size, "mean": mean, "std": std,
                                        "channel_order": channel_order, "resize_mode": resize_mode,
                                        "output": output}.items() if v is not None}
        resolved = replace(base, **overrides)
        resolved.validate(str(sidecar) if sidecar.exists() else "flags")
        return resolved

    @classmethod
    def from_sidecar(cls, path: Path) -> Preprocessing:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot read preprocessing sidecar {path}: {exc}") from exc
        known = {"input_size", "mean", "std", "channel_order", "resize_mode", "output"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StartupError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        return replace(cls(), **data)

    def validate(self, source: str) -> None:
        problems = []
        if not 8 <= int(self.input_size) <= 4096:
            problems.append(f"input_size {self.input_size} not in 8..4096")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            problems.append("mean and std need three values, std positive")
        if self.channel_order not in ("rgb", "bgr"):
            problems.append(f"channel_order {self.channel_order!r} is not rgb or bgr")
        if self.resize_mode not in RESIZE_MODES:
            problems.append(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if self.output not in OUTPUTS:
            problems.append(f"output {self.output!r} is not one of {OUTPUTS}")
        if problems:
            raise StartupError(f"preprocessing from {source}: " + "; ".join(problems))

    def apply(self, bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 HWC -> normalised float32 CHW: the reference of what the model sees."""
        return self.normalize(self.resize(bgr, "bgr")[None])[0]

    def resize(self, pixels: np.ndarray, order: str) -> np.ndarray:
        """uint8 HWC in ``order`` -> uint8 HWC of input_size x input_size in the model's channel order (pool).

        An image already of the right size and order is returned as it is: raw pixels cost no copy here.
        """
        size = self.input_size
        if pixels.shape[:2] != (size, size):
            pixels = _resize(pixels, size, self.resize_mode)
        if order != self.channel_order:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)  # the same swap either way
        return pixels

    def shift_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std) in 0..255 units, in the model's channel order (mean/std are given as RGB)."""
        scale = np.asarray(self.std, dtype=np.float32) * 255.0
        shift = np.asarray(self.mean, dtype=np.float32) * 255.0
        if self.channel_order == "bgr":
            scale, shift = scale[::-1].copy(), shift[::-1].copy()
        return shift, scale

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> normalised float32 NCHW in numpy: the reference ``apply`` gives (tests, the benchmark's
        limit); serving normalises each batch with ``BatchNormalizer``, in one TorchScript call."""
        shift, scale = self.shift_scale()
        out = batch.astype(np.float32).transpose(0, 3, 1, 2)
        out -= shift[None, :, None, None]
        out /= scale[None, :, None, None]
        return np.ascontiguousarray(out)


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def _resize(bgr: np.ndarray, size: int, mode: str) -> np.ndarray:
    height, width = bgr.shape[:2]
    if mode == "stretch":
        return cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA if min(height, width) > size
                          else cv2.INTER_LINEAR)
    if mode == "center-crop":
        scale = size / min(height, width)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return resized[top:top + size, left:left + size]
    scale = min(size / height, size / width)  # letterbox
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return cv2.copyMakeBorder(resized, top, size - new_h - top, left, size - new_w - left, cv2.BORDER_CONSTANT,
                              value=(114, 114, 114))
