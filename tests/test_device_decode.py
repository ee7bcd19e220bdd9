"""JPEGs decoded and letterboxed in the batch step with torch ops (--decode-device model), checked on the CPU.

With --device cuda this path runs nvJPEG and the letterbox on the GPU; here the same code runs on the CPU
(torchvision's libjpeg-turbo decoder, the same torch letterbox), so what it must equal is the OpenCV path:
the same boxes within a fraction of a pixel's rounding, each bad file failing alone with its index.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import torch
from conftest import fresh_images, jpeg_bytes, png_bytes
from PIL import Image
from runtime_support import RuntimeProcess

from kubeinfer.clients import Client
from kubeinfer.clients.types import DetectResult
from kubeinfer.runtime.metrics import BATCH_SIZE
from kubeinfer.runtime.models.device_images import LETTERBOX_FILL, letterbox_batch, letterbox_geometry
from kubeinfer.runtime.models.yolo import EncodedJpeg, Selection, YoloDetector

# (height, width): square, wide, tall, odd sides, an upscale, a large downscale
SHAPES = [(128, 128), (200, 300), (96, 240), (300, 100), (77, 131), (64, 64), (480, 640)]
BOX_TOLERANCE_PX = 2.0
SCORE_TOLERANCE = 0.05
SELECTION = Selection(0.25, 0.45, 300)
# torchvision 0.29 deprecates its codecs (for TorchCodec); the runtime filters this warning, pytest shows it again
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def sized_jpegs(seed: int) -> list[bytes]:
    """Fresh synthetic images stretched to each of ``SHAPES``, as JPEG files."""
    samples = fresh_images(seed=seed, count=len(SHAPES))
    return [jpeg_bytes(cv2.resize(s.pixels, (w, h), interpolation=cv2.INTER_LINEAR))
            for s, (h, w) in zip(samples, SHAPES, strict=True)]


def truncated(jpeg: bytes) -> bytes:
    """Half a JPEG: the header (and so every size guard) reads fine, no decoder finishes the image."""
    return jpeg[: len(jpeg) // 2]


def assert_same_detections(got: DetectResult, want: DetectResult) -> None:
    assert (got.height, got.width) == (want.height, want.width)
    assert len(got.detections) == len(want.detections)
    for g, w in zip(got.detections, want.detections, strict=True):
        assert g.class_id == w.class_id and g.label == w.label
        assert abs(g.score - w.score) <= SCORE_TOLERANCE, (g.score, w.score)
        box_g, box_w = (g.box.x1, g.box.y1, g.box.x2, g.box.y2), (w.box.x1, w.box.y1, w.box.x2, w.box.y2)
        assert max(abs(a - b) for a, b in zip(box_g, box_w, strict=True)) <= BOX_TOLERANCE_PX, (box_g, box_w)


@pytest.fixture(scope="module")
def torch_detectors(detector_model: Path) -> Callable[[int | None], YoloDetector]:
    """The detector on torch at an input size, loaded once per size."""
    loaded: dict[int | None, YoloDetector] = {}

    def get(size: int | None) -> YoloDetector:
        if size not in loaded:
            loaded[size] = YoloDetector(detector_model, "cpu", size)
        return loaded[size]

    return get


@pytest.fixture(scope="module")
def runtimes(runtime_factory: Callable[..., RuntimeProcess],
             detector_model: Path) -> tuple[RuntimeProcess, RuntimeProcess]:
    """The same detector served twice: OpenCV decoding in the pool, and decoding in the batch step."""
    common = ("--task", "detect", "--model", str(detector_model), "--device", "cpu", "--max-batch-delay-ms", "20")
    opencv = runtime_factory(*common, "--decode-device", "cpu")
    device = runtime_factory(*common, "--decode-device", "model")
    return opencv, device


@pytest.mark.parametrize("size", [128, 320])
@pytest.mark.parametrize(("height", "width"), [*SHAPES, (1080, 1920), (37, 301), (257, 129)])
def test_letterbox_matches_the_opencv_preprocess(torch_detectors: Callable[[int | None], YoloDetector], size: int,
                                                 height: int, width: int) -> None:
    """Same geometry exactly (padding where OpenCV pads, 114 there), pixels within one level of OpenCV's
    fixed-point INTER_LINEAR."""
    detector = torch_detectors(size)
    rng = np.random.default_rng(height * 7 + width)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 1.5)
    want = detector.preprocess(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)).pixels.astype(int)
    got = letterbox_batch([torch.from_numpy(rgb).permute(2, 0, 1)], size)[0].permute(1, 2, 0).numpy().astype(int)
    assert got.shape == want.shape == (size, size, 3)
    g = letterbox_geometry(height, width, size)
    inside = np.zeros((size, size), dtype=bool)
    inside[g.top:g.top + g.new_height, g.left:g.left + g.new_width] = True
    assert (got[~inside] == LETTERBOX_FILL).all() and (want[~inside] == LETTERBOX_FILL).all()
    difference = np.abs(got - want)
    assert difference.max() <= 1
    assert difference.mean() < 0.2
    bgr = letterbox_batch([torch.from_numpy(rgb).permute(2, 0, 1)], size, order="bgr")[0].permute(1, 2, 0).numpy()
    assert (bgr[..., ::-1] == got).all()


def test_a_corrupt_jpeg_fails_alone_in_the_batch_step(torch_detectors: Callable[[int | None], YoloDetector]) -> None:
    """In one model batch: the bad file gets its own error, named by its request index; the others get the boxes
    the OpenCV path finds."""
    torch_detector = torch_detectors(None)
    jpegs = sized_jpegs(seed=80)
    items = [EncodedJpeg(data, i, h, w, SELECTION) for i, (data, (h, w)) in enumerate(zip(jpegs, SHAPES, strict=True))]
    items.insert(2, EncodedJpeg(truncated(jpegs[0]), 5, 128, 128, SELECTION))
    raws = torch_detector.forward(items)
    bad = raws.pop(2)
    assert bad.error is not None and bad.error.message == "image 5: JPEG data is corrupt or truncated"
    found = 0
    for raw, data in zip(raws, jpegs, strict=True):
        assert raw.error is None and raw.boxes is not None
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        (want,) = torch_detector.forward([torch_detector.preprocess(bgr, SELECTION)])
        assert want.boxes is not None and len(raw.boxes) == len(want.boxes)
        for g, w in zip(raw.boxes, want.boxes, strict=True):
            assert g.class_id == w.class_id and abs(g.score - w.score) <= SCORE_TOLERANCE
            assert np.allclose((g.x1, g.y1, g.x2, g.y2), (w.x1, w.y1, w.x2, w.y2), atol=BOX_TOLERANCE_PX)
        found += len(raw.boxes)
    assert found >= len(jpegs)  # real boxes were compared


def test_the_device_path_serves_the_opencv_paths_boxes(runtimes: tuple[RuntimeProcess, RuntimeProcess]) -> None:
    """JPEGs of several sizes and aspect ratios, a grey JPEG, an EXIF-rotated JPEG (left to OpenCV, which
    rotates) and a PNG (always the CPU path), through gRPC on loopback. At the default threshold: far below it,
    a one-level pixel difference may let NMS keep the other of two near-equal overlapping candidates."""
    opencv, device = runtimes
    assert "decoded and letterboxed by OpenCV in the pool" in opencv.logs()
    assert "decoded and letterboxed in the batch step on cpu (--decode-device model)" in device.logs()
    sample = fresh_images(seed=81, count=1)[0]
    ok, grey = cv2.imencode(".jpg", cv2.cvtColor(sample.pixels, cv2.COLOR_RGB2GRAY))
    assert ok
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    Image.fromarray(cv2.resize(sample.pixels, (192, 128))).save(rotated, "JPEG", quality=95, exif=exif)
    images = [*sized_jpegs(seed=82), grey.tobytes(), rotated.getvalue(), png_bytes(sample.pixels)]
    with Client(opencv.grpc_target) as client:
        want = client.detect(images)
    with Client(device.grpc_target) as client:
        got = client.detect(images)
        one_by_one = [client.detect([image])[0] for image in images]
    assert (want[-2].height, want[-2].width) == (192, 128)  # the rotation was applied
    assert sum(len(r.detections) for r in want) >= len(images)
    for g, single, w in zip(got, one_by_one, want, strict=True):
        assert_same_detections(g, w)
        assert_same_detections(single, w)


def test_a_corrupt_jpeg_fails_its_request_only(runtimes: tuple[RuntimeProcess, RuntimeProcess]) -> None:
    """Requests sent together share model batches; the one with a truncated JPEG fails with INVALID_ARGUMENT
    naming that image, every other request gets its boxes."""
    opencv, device = runtimes
    good = sized_jpegs(seed=83)[:4]
    with Client(opencv.grpc_target) as client:
        want = client.detect(good)
    bad_request = [good[0], truncated(good[1]), good[2]]

    def send(images: list[bytes]) -> list[DetectResult] | grpc.RpcError:
        with Client(device.grpc_target) as client:
            try:
                return client.detect(images)
            except grpc.RpcError as error:
                return error

    batches_before = _batches(device.metrics())
    requests = [bad_request if i % 4 == 0 else good for i in range(16)]
    with ThreadPoolExecutor(8) as threads:
        answers = list(threads.map(send, requests))
    for sent, answer in zip(requests, answers, strict=True):
        if sent is bad_request:
            assert isinstance(answer, grpc.RpcError)
            assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert answer.details() == "image 1: JPEG data is corrupt or truncated"
        else:
            assert not isinstance(answer, grpc.RpcError), answer.details()
            for g, w in zip(answer, want, strict=True):
                assert_same_detections(g, w)
    assert _batches(device.metrics()) - batches_before < len(requests)  # requests did share batches


def _batches(exposition: str) -> float:
    """Model calls the runtime made so far (the batch-size histogram's count)."""
    match = re.search(rf"^{BATCH_SIZE}_count\{{[^}}]*\}} (\S+)$", exposition, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
