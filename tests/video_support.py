"""Helpers of the video tests: a generated clip whose rectangle position is known, video files, metric values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

RECT_RGB = (40, 60, 230)  # blue: far from the green overlay of detect


@dataclass(frozen=True)
class ClipFrame:
    """An RGB frame and the rectangle drawn on it (x1, y1, x2, y2; x2/y2 exclusive)."""

    pixels: np.ndarray
    box: tuple[int, int, int, int]


def moving_rectangle_clip(count: int = 120, size: int = 128, seed: int = 7) -> list[ClipFrame]:
    """A rectangle gliding over blurred noise (the detector's training look), one step per frame.

    The rectangle is about 30% of the frame, like the training rectangles, and sweeps the
    frame diagonally and back, so consecutive boxes differ and the order of frames shows.
    """
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(noise, (0, 0), sigmaX=size / 32)
    w, h = round(size * 0.3), round(size * 0.24)
    frames = []
    for i in range(count):
        phase = (i % 60) / 59 if (i // 60) % 2 == 0 else 1 - (i % 60) / 59
        x1 = round(4 + phase * (size - w - 8))
        y1 = round(4 + (0.5 + 0.5 * np.sin(i / 9)) * (size - h - 8))
        pixels = background.copy()
        cv2.rectangle(pixels, (x1, y1), (x1 + w - 1, y1 + h - 1), RECT_RGB, thickness=-1)
        frames.append(ClipFrame(pixels, (x1, y1, x1 + w, y1 + h)))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fourcc: str, fps: float) -> Path:
    """RGB frames into a video file with cv2.VideoWriter."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    """Every frame (BGR) of a video file and its frame rate."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"OpenCV cannot open {path}"
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


def metric(exposition: str, sample: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition, 0 when absent."""
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def edge_mismatch(jpeg_grey: np.ndarray, expected: np.ndarray) -> float:
    """Pixels where a JPEG-compressed edge map (thresholded at half) disagrees with the exact one, per edge pixel.

    Relative to the edge count, since edges are a few percent of a frame: an all-black answer scores 1.
    """
    edges = int(np.count_nonzero(expected))
    assert edges > 0, "the reference edge map is empty: the test frame has no edges"
    return float(np.count_nonzero((jpeg_grey >= 128) != (expected > 0))) / edges
