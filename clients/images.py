"""Turn what users hold (paths, bytes, PIL images, numpy arrays) into request images without re-encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kubeinfer.v1 import inference_pb2 as pb

ImageLike = str | Path | bytes | bytearray | memoryview | np.ndarray | Any  # Any: PIL.Image.Image


def to_proto_image(image: ImageLike) -> pb.Image:
    """Files and bytes go as they are (encoded); arrays and PIL images as raw RGB/grey pixels."""
    if isinstance(image, str | Path):
        return pb.Image(encoded=Path(image).read_bytes())
    if isinstance(image, bytes | bytearray | memoryview):
        return pb.Image(encoded=bytes(image))
    if isinstance(image, np.ndarray):
        return _raw(image)
    if hasattr(image, "mode") and hasattr(image, "tobytes"):  # PIL.Image.Image, without importing PIL
        converted = image if image.mode in ("RGB", "L") else image.convert("RGB")
        return _raw(np.asarray(converted))
    raise TypeError(f"unsupported image type {type(image).__name__}: use a path, bytes, PIL image or numpy array")


def _raw(array: np.ndarray) -> pb.Image:
    if array.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise TypeError(f"numpy images must be HxW, HxWx1 or HxWx3 (RGB), got shape {array.shape}")
    height, width, channels = array.shape
    return pb.Image(raw=pb.RawImage(pixels=np.ascontiguousarray(array).tobytes(), height=height, width=width,
                                    channels=channels))
