"""Synthetic brand logos, their distorted copies, unrelated images, and a fixed logo encoder for recognize tests.

The encoder is deterministic and untrained: colour proportions over a fixed palette,
an edge-orientation histogram, and globally pooled responses of fixed random
zero-mean filters, standardised with statistics measured once on a calibration set
(the logos plus generic images from a seed the tests never use). Global pooling
makes it tolerant to shifts, moderate scaling, noise and JPEG; the colour and edge
statistics keep the brands apart (checked by ``test_encoder_separates_the_brands``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from runtime_support import CACHE

SIZE = 128
INPUT_SIZE = 64
ENCODER_VERSION = "logo-encoder-v1"
Logo = Callable[[], np.ndarray]


def _canvas(background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    canvas = np.empty((SIZE, SIZE, 3), np.uint8)
    canvas[:] = background
    return canvas


def acme() -> np.ndarray:
    image = _canvas()
    cv2.circle(image, (64, 64), 44, (220, 30, 30), -1)
    cv2.putText(image, "A", (44, 86), cv2.FONT_HERSHEY_SIMPLEX, 2.2, (255, 255, 255), 6)
    return image


def delta() -> np.ndarray:
    image = _canvas()
    cv2.fillPoly(image, [np.array([[64, 16], [112, 108], [16, 108]], np.int32)], (30, 60, 200))
    return image


def stripe() -> np.ndarray:
    image = _canvas()
    for start in range(-128, 256, 20):
        cv2.line(image, (start, 0), (start + 128, 128), (20, 150, 40), 8)
    image[:14], image[-14:], image[:, :14], image[:, -14:] = 255, 255, 255, 255
    return image


def checker() -> np.ndarray:
    image = _canvas()
    for row in range(4):
        for col in range(4):
            colour = (240, 140, 20) if (row + col) % 2 else (110, 40, 150)
            cv2.rectangle(image, (16 + col * 24, 16 + row * 24), (39 + col * 24, 39 + row * 24), colour, -1)
    return image


def star() -> np.ndarray:
    image = _canvas((20, 30, 70))
    angles = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, 50, 20)
    points = np.stack([64 + radii * np.cos(angles), 64 + radii * np.sin(angles)], 1).astype(np.int32)
    cv2.fillPoly(image, [points], (250, 220, 30))
    return image


def kube() -> np.ndarray:
    image = _canvas()
    cv2.rectangle(image, (8, 38), (120, 90), (40, 200, 210), -1)
    cv2.putText(image, "KUBE", (14, 78), cv2.FONT_HERSHEY_DUPLEX, 1.3, (0, 0, 0), 3)
    return image


def rings() -> np.ndarray:
    image = _canvas()
    for radius in (52, 36, 20):
        cv2.circle(image, (64, 64), radius, (200, 40, 180), 7)
    return image


# RGB images, 128 x 128. "rings" is held back: the reload tests add it to a running gallery.
BRANDS: dict[str, Logo] = {"acme": acme, "delta": delta, "stripe": stripe, "checker": checker, "star": star,
                           "kube": kube}
NEW_BRAND = "rings"
ALL_BRANDS: dict[str, Logo] = {**BRANDS, NEW_BRAND: rings}


# -- distortions


def _background(image: np.ndarray) -> tuple[int, int, int]:
    return (int(image[0, 0, 0]), int(image[0, 0, 1]), int(image[0, 0, 2]))


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, (SIZE, SIZE), borderValue=_background(image))


def scaled(image: np.ndarray, factor: float) -> np.ndarray:
    matrix = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), 0, factor)
    return cv2.warpAffine(image, matrix, (SIZE, SIZE), borderValue=_background(image))


def noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def jpeg_recompressed(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def queries(image: np.ndarray) -> dict[str, np.ndarray]:
    """Distorted copies of a logo, none of them in any gallery."""
    return {
        "shifted": shifted(image, 12, -9),
        "scaled-down": scaled(image, 0.85),
        "scaled-up": scaled(image, 1.15),
        "noisy": noisy(image, 15, seed=1),
        "jpeg": jpeg_recompressed(image, 35),
        "all-at-once": jpeg_recompressed(noisy(scaled(shifted(image, -8, 6), 0.9), 10, seed=2), 50),
    }


def gallery_views(image: np.ndarray) -> list[np.ndarray]:
    """The images of one brand in a base-data folder: the logo and two mild variants."""
    return [image, shifted(image, 4, 3), noisy(image, 6, seed=7)]


def unrelated_images(seed: int) -> list[np.ndarray]:
    """Images of no brand: noise, a gradient, random ellipses, random lines, blurred noise."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)]
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    images.append(np.stack([np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE)),
                            np.full((SIZE, SIZE), 128, np.float32)], 2).astype(np.uint8))
    ellipses = _canvas((int(rng.integers(0, 256)),) * 3)
    for _ in range(6):
        centre = (int(rng.integers(0, SIZE)), int(rng.integers(0, SIZE)))
        axes = (int(rng.integers(5, 40)), int(rng.integers(5, 40)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.ellipse(ellipses, centre, axes, float(rng.integers(0, 180)), 0, 360, colour, -1)
    images.append(ellipses)
    lines = _canvas((128, 128, 128))
    for _ in range(10):
        start = tuple(int(v) for v in rng.integers(0, SIZE, 2))
        end = tuple(int(v) for v in rng.integers(0, SIZE, 2))
        cv2.line(lines, start, end, (0, 0, 0), 2)
    images.append(lines)
    images.append(cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), (0, 0), 6))
    return images


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_base_data(directory: Path, brands: dict[str, Logo]) -> Path:
    """DIR/<brand>/<n>.png with the gallery views of each brand."""
    for name, logo in brands.items():
        for index, view in enumerate(gallery_views(logo())):
            write_png(directory / name / f"{index}.png", view)
    return directory


# -- the encoder


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """What the runtime does with the sidecar below: stretch to 64 px, RGB, pixels in [0, 1], CHW."""
    resized = cv2.resize(rgb, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(resized.astype(np.float32).transpose(2, 0, 1) / 255.0)


def _encoder_module(calibration: list[np.ndarray]) -> Any:  # torch is imported lazily
    import torch
    import torch.nn.functional as functional

    class LogoEncoder(torch.nn.Module):
        """[B, 3, 64, 64] RGB in [0, 1] -> [B, 83] standardised features (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            levels = torch.tensor([0.0, 0.5, 1.0])
            self.register_buffer("palette", torch.cartesian_prod(levels, levels, levels).reshape(1, 27, 3, 1, 1))
            filters = torch.randn(32, 3, 5, 5, generator=generator)
            self.register_buffer("filters", filters - filters.mean(dim=(1, 2, 3), keepdim=True))
            self.register_buffer("mixers", torch.randn(48, 32, 3, 3, generator=generator) / 10)
            sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).reshape(1, 1, 3, 3)
            self.register_buffer("sobel_x", sobel)
            self.register_buffer("sobel_y", sobel.transpose(2, 3).contiguous())
            angles = torch.arange(8) * torch.pi / 8
            self.register_buffer("cos2", torch.cos(angles).reshape(1, 8, 1, 1))
            self.register_buffer("sin2", torch.sin(angles).reshape(1, 8, 1, 1))
            self.register_buffer("center", torch.zeros(1, 83))
            self.register_buffer("scale", torch.ones(1, 83))

        def features(self, x: torch.Tensor) -> torch.Tensor:
            x = functional.avg_pool2d(x, 2)
            distance = ((x.unsqueeze(1) - self.palette) ** 2).sum(2)
            colours = torch.softmax(-distance / 0.05, dim=1).mean(dim=(2, 3)).sqrt()
            grey = x.mean(1, keepdim=True)
            gx = functional.conv2d(grey, self.sobel_x, padding=1)
            gy = functional.conv2d(grey, self.sobel_y, padding=1)
            magnitude = torch.sqrt(gx * gx + gy * gy + 1e-6)
            oriented = functional.relu(((gx * gx - gy * gy) * self.cos2 + 2 * gx * gy * self.sin2) / magnitude)
            orientation = oriented.mean(dim=(2, 3))
            orientation = orientation / (orientation.sum(1, keepdim=True) + 1e-6)
            responses = functional.relu(functional.conv2d(x, self.filters, padding=2))
            texture = functional.relu(functional.conv2d(responses, self.mixers, padding=1)).mean(dim=(2, 3))
            texture = texture / (texture.norm(dim=1, keepdim=True) + 1e-6)
            return torch.cat([colours, orientation, texture], 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.features(x) - self.center) / self.scale

    encoder = LogoEncoder().eval()
    with torch.no_grad():
        stats = encoder.features(torch.from_numpy(np.stack([preprocess(i) for i in calibration])))
        encoder.center.copy_(stats.mean(0, keepdim=True))
        encoder.scale.copy_(stats.std(0, keepdim=True) + 0.02)
    return encoder


@dataclass(frozen=True)
class EncoderFiles:
    torchscript: Path  # sidecar without "output": the recognize task must use raw outputs anyway
    onnx: Path  # sidecar says "output": "logits": the recognize task must still not softmax
    dimension: int


SIDECAR = {"input_size": INPUT_SIZE, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "rgb",
           "resize_mode": "stretch"}


def logo_encoders() -> EncoderFiles:
    """Export the encoder to TorchScript and ONNX once, cached under .cache/models/."""
    directory = CACHE / "models" / ENCODER_VERSION
    files = EncoderFiles(directory / "encoder.pt", directory / "encoder.onnx", 83)
    if files.torchscript.exists() and files.onnx.exists():
        return files
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    calibration = [logo() for logo in ALL_BRANDS.values()] + unrelated_images(99) + unrelated_images(98)
    encoder = _encoder_module(calibration)
    example = torch.from_numpy(np.stack([preprocess(acme()), preprocess(star())]))
    with torch.no_grad():
        traced = torch.jit.trace(encoder, example)
    _write_json(files.torchscript.with_suffix(".json"), SIDECAR)
    _write_json(files.onnx.with_suffix(".json"), {**SIDECAR, "output": "logits"})
    onnx_tmp = directory / f".encoder.{os.getpid()}.onnx"
    torch.onnx.export(encoder, (example,), str(onnx_tmp), dynamo=False, input_names=["images"],
                      output_names=["embeddings"], dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                      opset_version=17)
    os.replace(onnx_tmp, files.onnx)
    ts_tmp = directory / f".encoder.{os.getpid()}.pt"
    traced.save(str(ts_tmp))
    os.replace(ts_tmp, files.torchscript)
    return files


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def embed(model: Path, images: list[np.ndarray]) -> np.ndarray:
    """The encoder's unit vectors for RGB images, computed here (not by the runtime), for building test galleries."""
    import torch

    module = torch.jit.load(str(model))
    with torch.no_grad():
        out = module(torch.from_numpy(np.stack([preprocess(i) for i in images]))).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)
