"""Segmentation masks from a YOLO head's prototypes, and their outlines in the original image: numpy and OpenCV.

The same masks as ultralytics' ``process_mask(..., upsample=True)``: each kept row's coefficients times the
prototypes, upsampled bilinearly to the model's input (OpenCV's INTER_LINEAR and torch's ``interpolate`` both
sample at half-pixel centres), positive logits kept, cropped to the row's box.
"""

from __future__ import annotations

import cv2
import numpy as np

from kubeinfer.runtime.models.yolo_io import letterbox_geometry

RESIZE_CHANNELS = 512  # the most channels one cv2.resize call takes (CV_CN_MAX)


def instance_masks(prototypes: np.ndarray, kept: np.ndarray, size: int) -> np.ndarray:
    """[k, size, size] uint8 (0/1) masks for the kept rows ([k, 6 + coefficients], boxes in model pixels) from one
    image's prototypes ([coefficients, height, width])."""
    count = kept.shape[0]
    channels, height, width = prototypes.shape
    if count == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    logits = (kept[:, 6:6 + channels].astype(np.float32) @ prototypes.reshape(channels, -1).astype(np.float32))
    planes = logits.reshape(count, height, width).transpose(1, 2, 0)  # HWC: one resize for many masks
    upsampled = np.empty((count, size, size), dtype=np.uint8)
    for start in range(0, count, RESIZE_CHANNELS):
        part = np.ascontiguousarray(planes[:, :, start:start + RESIZE_CHANNELS])
        resized = cv2.resize(part, (size, size), interpolation=cv2.INTER_LINEAR).reshape(size, size, -1)
        upsampled[start:start + part.shape[2]] = (resized > 0).transpose(2, 0, 1)
    columns = np.arange(size, dtype=np.float32)
    x1, y1, x2, y2 = (kept[:, k, None] for k in range(4))
    upsampled *= ((columns >= x1) & (columns < x2))[:, None, :]
    upsampled *= ((columns >= y1) & (columns < y2))[:, :, None]
    return upsampled


def mask_polygons(mask: np.ndarray, size: int, original: tuple[int, int]) -> list[list[float]]:
    """Outlines of one letterboxed binary mask, as flat x,y lists in original-image pixels (one decimal)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    height, width = original
    g = letterbox_geometry(height, width, size)
    gain_x, gain_y = g.new_width / width, g.new_height / height
    outlines = []
    for contour in contours:
        if len(contour) < 3:
            continue
        points = contour.reshape(-1, 2).astype(np.float32)
        points[:, 0] -= g.left
        points[:, 1] -= g.top
        points[:, 0] /= gain_x
        points[:, 1] /= gain_y
        np.clip(points[:, 0], 0, width, out=points[:, 0])
        np.clip(points[:, 1], 0, height, out=points[:, 1])
        outlines.append([round(float(v), 1) for v in points.reshape(-1)])
    return outlines
