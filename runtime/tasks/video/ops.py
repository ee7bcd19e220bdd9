"""The video task's frame operations: parsed and checked once per stream, applied to every frame in the pool.

A pipeline is an ordered list of named operations with numeric parameters (on the
command line ``edges:low=50:high=150``). Everything is validated when a stream
opens, so an unknown operation or a bad parameter fails the call with
INVALID_ARGUMENT before any frame is processed.

``detect`` needs the detector engine (its one dynamic batcher, here or in the model
process), which is awaited on the event loop, so a pipeline is split around it:
``start_frame`` runs the operations before it and letterboxes the frame with its box
selection (pool), the engine runs the model and answers with the boxes,
``finish_frame`` draws them, runs the remaining operations and encodes the JPEG
(pool). Detections are reported in the pixels of the processed frame: a later
``resize`` scales them along.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import cv2
import numpy as np

from kubeinfer.runtime.detection import DetectionRequests
from kubeinfer.runtime.errors import Code, InferenceError, StartupError, invalid_argument
from kubeinfer.runtime.models.yolo_io import Detection, Letterboxed, Selection
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.video.pipeline_spec import OpSpec, PipelineSpec

OPERATIONS = ("grayscale", "blur", "edges", "resize", "detect", "faces")
FACE_CASCADE = "haarcascade_frontalface_default.xml"
FACE_LABEL = "face"
MAX_SIDE = 16384
DETECT_COLOUR = (0, 255, 0)  # BGR
FACE_COLOUR = (255, 128, 0)


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter's default (None: optional, no default) and its allowed closed range."""

    default: float | None
    low: float
    high: float
    integer: bool = False


@dataclass(slots=True)
class Frame:
    """A frame on its way through the pipeline: BGR (H, W, 3) or grey (H, W) pixels, and what was found so far."""

    pixels: np.ndarray
    detections: list[Detection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """A finished frame: JPEG bytes, its size and the detections in its pixels."""

    jpeg: bytes
    width: int
    height: int
    detections: list[Detection]


class FaceCascade:
    """OpenCV's shipped frontal-face Haar cascade, loaded once per runtime.

    A CascadeClassifier is not safe to call from several threads at once, so calls
    from the worker pool take turns on a lock.
    """

    def __init__(self) -> None:
        path = cv2.data.haarcascades + FACE_CASCADE
        self._classifier = cv2.CascadeClassifier(path)
        if self._classifier.empty():
            raise StartupError(f"cannot load OpenCV's face cascade {path}")
        self._lock = threading.Lock()

    def find(self, grey: np.ndarray, scale: float, neighbors: int, min_size: int) -> list[tuple[int, int, int, int]]:
        with self._lock:
            found = self._classifier.detectMultiScale(grey, scaleFactor=scale, minNeighbors=neighbors,
                                                      minSize=(min_size, min_size))
        return [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]


class Operation(ABC):
    """One step applied to every frame; parameters were validated when the operation was built."""

    name: ClassVar[str]
    PARAMS: ClassVar[dict[str, Param]] = {}

    @abstractmethod
    def apply(self, frame: Frame) -> None:
        """Transform ``frame`` in place (worker pool)."""


class Grayscale(Operation):
    name = "grayscale"

    def apply(self, frame: Frame) -> None:
        frame.pixels = to_grey(frame.pixels)


class Blur(Operation):
    """Gaussian blur with an odd square kernel."""

    name = "blur"
    PARAMS = {"ksize": Param(5, 1, 99, integer=True)}

    def __init__(self, ksize: float) -> None:
        if int(ksize) % 2 == 0:
            raise invalid_argument(f"blur: ksize must be odd, got {int(ksize)}")
        self.ksize = int(ksize)

    def apply(self, frame: Frame) -> None:
        frame.pixels = cv2.GaussianBlur(frame.pixels, (self.ksize, self.ksize), 0)


class Edges(Operation):
    """Canny edges of the grey frame; the frame becomes the (grey) edge map."""

    name = "edges"
    PARAMS = {"low": Param(100, 0, 10000), "high": Param(200, 0, 10000)}

    def __init__(self, low: float, high: float) -> None:
        if low > high:
            raise invalid_argument(f"edges: low ({low:g}) must not exceed high ({high:g})")
        self.low, self.high = low, high

    def apply(self, frame: Frame) -> None:
        frame.pixels = cv2.Canny(to_grey(frame.pixels), self.low, self.high)


class Resize(Operation):
    """Resize to width x height; with only one of them, the other follows the aspect ratio."""

    name = "resize"
    PARAMS = {"width": Param(None, 1, MAX_SIDE, integer=True), "height": Param(None, 1, MAX_SIDE, integer=True)}

    def __init__(self, width: float | None, height: float | None, max_pixels: int) -> None:
        if width is None and height is None:
            raise invalid_argument("resize: give width, height or both")
        self.width = None if width is None else int(width)
        self.height = None if height is None else int(height)
        if self.width is not None and self.height is not None and self.width * self.height > max_pixels:
            raise invalid_argument(f"resize: {self.width}x{self.height} exceeds the limit of {max_pixels} pixels "
                                   "(--max-image-pixels)")
        self.max_pixels = max_pixels

    def target(self, height: int, width: int) -> tuple[int, int]:
        """(width, height) for a frame of this size."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        if self.width is not None:
            return self.width, max(1, round(height * self.width / width))
        assert self.height is not None
        return max(1, round(width * self.height / height)), self.height

    def apply(self, frame: Frame) -> None:
        height, width = frame.pixels.shape[:2]
        new_w, new_h = self.target(height, width)
        if new_w * new_h > self.max_pixels:
            raise invalid_argument(f"resize: {width}x{height} -> {new_w}x{new_h} exceeds the limit of "
                                   f"{self.max_pixels} pixels (--max-image-pixels)")
        if (new_w, new_h) == (width, height):
            return
        shrinking = new_w * new_h < width * height
        frame.pixels = cv2.resize(frame.pixels, (new_w, new_h),
                                  interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        sx, sy = new_w / width, new_h / height
        for d in frame.detections:
            d.x1, d.x2, d.y1, d.y2 = d.x1 * sx, d.x2 * sx, d.y1 * sy, d.y2 * sy
            d.polygons = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(p)] for p in d.polygons]


class Faces(Operation):
    """Frontal faces with the Haar cascade: boxes drawn and reported as detections labelled "face"."""

    name = "faces"
    PARAMS = {"scale": Param(1.1, 1.01, 2.0), "neighbors": Param(5, 0, 50, integer=True),
              "min_size": Param(30, 1, MAX_SIDE, integer=True)}

    def __init__(self, cascade: FaceCascade, scale: float, neighbors: float, min_size: float) -> None:
        self.cascade = cascade
        self.scale, self.neighbors, self.min_size = scale, int(neighbors), int(min_size)

    def apply(self, frame: Frame) -> None:
        found = self.cascade.find(to_grey(frame.pixels), self.scale, self.neighbors, self.min_size)
        # Haar cascades give no probability: a kept face scores 1.
        faces = [Detection(float(x), float(y), float(x + w), float(y + h), 1.0, -1, FACE_LABEL)
                 for x, y, w, h in found]
        frame.detections.extend(faces)
        frame.pixels = draw(frame.pixels, faces, FACE_COLOUR, with_score=False)


class Detect(Operation):
    """The detector's boxes with their labels; the model itself runs in the detector engine, between two halves."""

    name = "detect"
    PARAMS = {"confidence": Param(None, 0, 1), "iou": Param(None, 0, 1),
              "max_detections": Param(None, 1, 1000, integer=True)}

    def __init__(self, detector: DetectionRequests, selection: Selection) -> None:
        self.detector = detector
        self.selection = selection

    def prepare(self, frame: Frame) -> Letterboxed:
        return self.detector.prepare(to_bgr(frame.pixels), self.selection)

    def finish(self, frame: Frame, found: list[Detection]) -> None:
        """The engine's boxes (labelled, in the frame's pixels): reported and drawn."""
        frame.detections.extend(found)
        frame.pixels = draw(frame.pixels, found, DETECT_COLOUR, with_score=True)

    def apply(self, frame: Frame) -> None:
        raise AssertionError("detect runs through the batcher: use start_frame / finish_frame")


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A validated pipeline: the operations before ``detect``, the detection (if any), the ones after it."""

    before: tuple[Operation, ...]
    detect: Detect | None
    after: tuple[Operation, ...]
    jpeg_quality: int

    @property
    def names(self) -> list[str]:
        middle = [self.detect.name] if self.detect else []
        return [op.name for op in self.before] + middle + [op.name for op in self.after]


def parse_pipeline(spec: PipelineSpec, *, detector: DetectionRequests | None, faces: FaceCascade,
                   default_quality: int, max_pixels: int) -> Pipeline:
    """Build every operation, checking names and parameters (INVALID_ARGUMENT; detect without a model:
    FAILED_PRECONDITION)."""
    quality = default_quality if spec.jpeg_quality is None else spec.jpeg_quality
    if not 1 <= quality <= 100:
        raise invalid_argument(f"jpeg_quality must be in 1..100, got {quality}")
    before: list[Operation] = []
    after: list[Operation] = []
    detect: Detect | None = None
    for position, op in enumerate(spec.operations):
        built = _build(op, position, detector, faces, max_pixels)
        if isinstance(built, Detect):
            if detect is not None:
                raise invalid_argument(f"operation {position}: detect may appear only once in a pipeline")
            detect = built
        else:
            (before if detect is None else after).append(built)
    return Pipeline(tuple(before), detect, tuple(after), quality)


def _build(op: OpSpec, position: int, detector: DetectionRequests | None, faces: FaceCascade,
           max_pixels: int) -> Operation:
    kinds: dict[str, type[Operation]] = {k.name: k for k in (Grayscale, Blur, Edges, Resize, Detect, Faces)}
    kind = kinds.get(op.name)
    if kind is None:
        raise invalid_argument(f"operation {position}: unknown operation {op.name!r}; "
                               f"known: {', '.join(OPERATIONS)}")
    values = _check_params(kind, dict(op.params), position)
    if kind is Grayscale:
        return Grayscale()
    if kind is Blur:
        return Blur(values["ksize"])
    if kind is Edges:
        return Edges(values["low"], values["high"])
    if kind is Resize:
        return Resize(values["width"], values["height"], max_pixels)
    if kind is Faces:
        return Faces(faces, values["scale"], values["neighbors"], values["min_size"])
    if detector is None:
        raise InferenceError(Code.FAILED_PRECONDITION,
                             f"operation {position}: detect needs a runtime started with --model DETECTOR; "
                             "this one only offers the OpenCV operations")
    return Detect(detector, detector.selection(Parameters(values)))


def _check_params(kind: type[Operation], given: dict[str, float], position: int) -> dict[str, float | None]:
    """Every given parameter known, finite, in range and integral where needed; defaults filled in."""
    unknown = sorted(set(given) - set(kind.PARAMS))
    if unknown:
        allowed = ", ".join(kind.PARAMS) or "none"
        raise invalid_argument(f"operation {position} ({kind.name}): unknown parameter(s) {', '.join(unknown)}; "
                               f"allowed: {allowed}")
    values: dict[str, float | None] = {}
    for name, param in kind.PARAMS.items():
        value = given.get(name, param.default)
        if value is not None:
            where = f"operation {position} ({kind.name}): {name}"
            if not math.isfinite(value) or not param.low <= value <= param.high:
                raise invalid_argument(f"{where} must be in [{param.low:g}, {param.high:g}], got {value:g}")
            if param.integer and value != int(value):
                raise invalid_argument(f"{where} must be a whole number, got {value:g}")
        values[name] = value
    return values


def start_frame(pipeline: Pipeline, pixels: np.ndarray) -> tuple[Frame, Letterboxed | None]:
    """The operations before ``detect`` and, when it follows, the letterboxed model input (worker pool)."""
    frame = Frame(pixels)
    for op in pipeline.before:
        op.apply(frame)
    boxed = pipeline.detect.prepare(frame) if pipeline.detect is not None else None
    return frame, boxed


def finish_frame(pipeline: Pipeline, frame: Frame, found: list[Detection] | None = None) -> EncodedFrame:
    """The detector's boxes drawn, the operations after ``detect``, and the JPEG (worker pool)."""
    if pipeline.detect is not None:
        assert found is not None
        pipeline.detect.finish(frame, found)
    for op in pipeline.after:
        op.apply(frame)
    return encode(frame, pipeline.jpeg_quality)


def run_pipeline(pipeline: Pipeline, pixels: np.ndarray) -> EncodedFrame:
    """The whole pipeline of one frame in one go, for pipelines without ``detect`` (worker pool)."""
    frame, _ = start_frame(pipeline, pixels)
    return finish_frame(pipeline, frame)


def encode(frame: Frame, quality: int) -> EncodedFrame:
    ok, data = cv2.imencode(".jpg", frame.pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InferenceError(Code.INTERNAL, f"JPEG encoding of a {frame.pixels.shape} frame failed")
    height, width = frame.pixels.shape[:2]
    return EncodedFrame(data.tobytes(), width, height, frame.detections)


def to_grey(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)


def to_bgr(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else pixels


def draw(pixels: np.ndarray, detections: list[Detection], colour: tuple[int, int, int],
         with_score: bool) -> np.ndarray:
    """Boxes and labels drawn on a (colour) copy of the frame, so a grey frame shows coloured boxes."""
    if not detections:
        return pixels
    canvas = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else pixels.copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 200))
    font_scale = max(0.3, min(height, width) / 800)
    for d in detections:
        p1, p2 = (round(d.x1), round(d.y1)), (round(d.x2) - 1, round(d.y2) - 1)
        cv2.rectangle(canvas, p1, p2, colour, thickness)
        text = f"{d.label} {d.score:.2f}" if with_score else d.label
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = p1[1] - th - base if p1[1] - th - base >= 0 else p1[1]
        cv2.rectangle(canvas, (p1[0], top), (p1[0] + tw, top + th + base), colour, -1)
        cv2.putText(canvas, text, (p1[0], top + th), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas
