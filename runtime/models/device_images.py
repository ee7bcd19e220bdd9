"""Batch JPEG decoding and letterboxing with torch ops, on the model's device.

With a CUDA model the batcher thread decodes a whole batch's JPEGs in one nvJPEG call (torchvision's
``decode_jpeg`` on a list) and letterboxes them with tensor ops, so the worker pool only reads headers and
decoded pixels never cross the host-device bus. On the CPU the same code runs with libjpeg-turbo, which is
how it is tested on machines without a GPU. The letterbox geometry is shared with the OpenCV path
(``YoloDetector.preprocess``), so both paths put every pixel in the same place.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from kubeinfer.runtime.models.yolo_io import LETTERBOX_FILL, letterbox_geometry

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec, which is not installed here and
# has no batched nvJPEG decode of in-memory files yet; the warning would repeat on every batch.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def decode_jpegs(data: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """RGB, CHW, uint8 images on ``device``, one decoder call for the batch; ``None`` for a file no decoder
    takes. A file the device decoder refuses (nvJPEG lacks a few JPEG variants; libjpeg-turbo is stricter than
    OpenCV about damaged tails) is decoded by OpenCV on the CPU, so this path accepts what the CPU path does."""
    if not data:
        return []
    encoded = [torch.frombuffer(bytearray(item), dtype=torch.uint8) for item in data]
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except (RuntimeError, ValueError):
        pass  # one bad file fails the whole call: decode one by one to find it
    images: list[torch.Tensor | None] = []
    for item, raw in zip(encoded, data, strict=True):
        try:
            images.append(decode_jpeg(item, mode=ImageReadMode.RGB, device=device))
        except (RuntimeError, ValueError):
            images.append(_decode_with_opencv(raw, device))
    return images


def _decode_with_opencv(data: bytes, device: torch.device) -> torch.Tensor | None:
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1).to(device)


def letterbox_into(target: torch.Tensor, image: torch.Tensor, order: str = "rgb") -> None:
    """Resize ``image`` (RGB, CHW, uint8) bilinearly (OpenCV's INTER_LINEAR: half-pixel centres, no
    antialiasing) into ``target`` ([3, S, S] uint8, on the same device and already filled with
    ``LETTERBOX_FILL``), channels in ``order`` ("rgb" or "bgr")."""
    height, width = image.shape[1:]
    g = letterbox_geometry(height, width, target.shape[-1])
    if (g.new_height, g.new_width) != (height, width):
        resized = F.interpolate(image[None].float(), size=(g.new_height, g.new_width), mode="bilinear",
                                align_corners=False, antialias=False)[0]
        image = resized.round_().clamp_(0, 255).to(torch.uint8)
    if order == "bgr":
        image = image.flip(0)
    target[:, g.top:g.top + g.new_height, g.left:g.left + g.new_width] = image


def letterbox_batch(images: Sequence[torch.Tensor], size: int, order: str = "rgb") -> torch.Tensor:
    """[B, 3, size, size] uint8 on the images' device: each image letterboxed into its own slot."""
    device = images[0].device if images else torch.device("cpu")
    batch = torch.full((len(images), 3, size, size), LETTERBOX_FILL, dtype=torch.uint8, device=device)
    for slot, image in zip(batch, images, strict=True):
        letterbox_into(slot, image, order)
    return batch
