"""The video task's pieces in-process: pipeline validation, each OpenCV operation, and ordered, bounded streaming."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import cv2
import numpy as np
import pytest
from matplotlib import cbook
from video_support import moving_rectangle_clip

from kubeinfer.runtime.concurrency import ordered_map
from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.models.yolo_io import Detection
from kubeinfer.runtime.tasks.video.ops import (
    FaceCascade,
    Frame,
    Resize,
    parse_pipeline,
    run_pipeline,
)
from kubeinfer.runtime.tasks.video.pipeline_spec import OpSpec, PipelineSpec

MAX_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def faces() -> FaceCascade:
    return FaceCascade()


def parse(faces: FaceCascade, *ops: OpSpec, quality: int | None = None):
    return parse_pipeline(PipelineSpec(tuple(ops), quality), detector=None, faces=faces, default_quality=85,
                          max_pixels=MAX_PIXELS)


def decoded(jpeg: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flags)
    assert image is not None
    return image


@pytest.mark.parametrize(("ops", "quality", "fragment"), [
    ([OpSpec.of("sharpen")], None, "unknown operation 'sharpen'"),
    ([OpSpec.of("grayscale"), OpSpec.of("Blur")], None, "operation 1: unknown operation 'Blur'"),
    ([OpSpec.of("blur", {"ksize": 4})], None, "ksize must be odd"),
    ([OpSpec.of("blur", {"ksize": 101})], None, "ksize must be in [1, 99]"),
    ([OpSpec.of("blur", {"ksize": 3.5})], None, "must be a whole number"),
    ([OpSpec.of("blur", {"size": 3})], None, "unknown parameter(s) size; allowed: ksize"),
    ([OpSpec.of("grayscale", {"strength": 1})], None, "allowed: none"),
    ([OpSpec.of("edges", {"low": 200, "high": 100})], None, "low (200) must not exceed high (100)"),
    ([OpSpec.of("edges", {"low": float("nan")})], None, "low must be in"),
    ([OpSpec.of("edges", {"high": -1})], None, "high must be in [0, 10000]"),
    ([OpSpec.of("resize")], None, "give width, height or both"),
    ([OpSpec.of("resize", {"width": 0})], None, "width must be in [1, 16384]"),
    ([OpSpec.of("resize", {"width": 4000, "height": 4000})], None, "exceeds the limit of 4000000 pixels"),
    ([OpSpec.of("faces", {"scale": 1.0})], None, "scale must be in [1.01, 2]"),
    ([], 0, "jpeg_quality must be in 1..100"),
    ([], 101, "jpeg_quality must be in 1..100"),
])
def test_bad_pipelines_are_refused_with_a_precise_message(faces: FaceCascade, ops: list[OpSpec],
                                                          quality: int | None, fragment: str) -> None:
    with pytest.raises(InferenceError) as failure:
        parse(faces, *ops, quality=quality)
    assert failure.value.code is Code.INVALID_ARGUMENT
    assert fragment in failure.value.message


def test_detect_without_a_detector_is_a_failed_precondition(faces: FaceCascade) -> None:
    with pytest.raises(InferenceError) as failure:
        parse(faces, OpSpec.of("grayscale"), OpSpec.of("detect"))
    assert failure.value.code is Code.FAILED_PRECONDITION
    assert "operation 1: detect needs a runtime started with --model" in failure.value.message


def test_operations_run_in_the_given_order_with_their_parameters(faces: FaceCascade) -> None:
    bgr = cv2.cvtColor(moving_rectangle_clip(count=1)[0].pixels, cv2.COLOR_RGB2BGR)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)

    out = run_pipeline(parse(faces, OpSpec.of("grayscale"), quality=100), bgr)
    assert (out.width, out.height) == (128, 128)
    assert np.abs(decoded(out.jpeg).astype(int) - grey).max() <= 3

    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    out = run_pipeline(parse(faces, OpSpec.of("blur", {"ksize": 9}), quality=100), noise)
    assert np.abs(decoded(out.jpeg).astype(int) - cv2.GaussianBlur(noise, (9, 9), 0)).mean() < 3
    assert np.abs(decoded(out.jpeg).astype(int) - noise).mean() > 30  # it did blur

    out = run_pipeline(parse(faces, OpSpec.of("edges", {"low": 30, "high": 90}), quality=100), bgr)
    expected = cv2.Canny(grey, 30, 90)
    assert np.count_nonzero(expected) > 100
    assert np.count_nonzero((decoded(out.jpeg) >= 128) != (expected > 0)) <= 0.02 * np.count_nonzero(expected)

    # Order matters: resize first gives a different edge map than resizing the edges.
    small_then_edges = run_pipeline(parse(faces, OpSpec.of("resize", {"width": 64}), OpSpec.of("edges")), bgr)
    edges_then_small = run_pipeline(parse(faces, OpSpec.of("edges"), OpSpec.of("resize", {"width": 64})), bgr)
    assert (small_then_edges.width, small_then_edges.height) == (64, 64)
    assert (edges_then_small.width, edges_then_small.height) == (64, 64)
    assert not np.array_equal(decoded(small_then_edges.jpeg), decoded(edges_then_small.jpeg))


def test_resize_keeps_the_aspect_ratio_and_scales_earlier_detections() -> None:
    found = Detection(10, 20, 50, 60, 0.9, 0, "rectangle", [[10, 20, 50, 60]])
    frame = Frame(np.zeros((100, 200, 3), np.uint8), [found])
    Resize(None, 50, MAX_PIXELS).apply(frame)
    assert frame.pixels.shape == (50, 100, 3)
    d = frame.detections[0]
    assert (d.x1, d.y1, d.x2, d.y2) == (5, 10, 25, 30)
    assert d.polygons == [[5, 10, 25, 30]]


def test_jpeg_quality_is_applied(faces: FaceCascade) -> None:
    bgr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    low = run_pipeline(parse(faces, quality=10), bgr)
    high = run_pipeline(parse(faces, quality=95), bgr)
    assert len(low.jpeg) * 2 < len(high.jpeg)


def test_faces_finds_a_real_face_and_draws_it(faces: FaceCascade) -> None:
    with cbook.get_sample_data("grace_hopper.jpg") as file:  # a portrait that ships with matplotlib
        portrait = cv2.imdecode(np.frombuffer(file.read(), np.uint8), cv2.IMREAD_COLOR)
    out = run_pipeline(parse(faces, OpSpec.of("faces"), quality=95), portrait)
    assert len(out.detections) == 1
    face = out.detections[0]
    assert face.label == "face" and face.class_id == -1
    # The face is in the upper middle of the 512x600 portrait.
    assert 100 < face.x1 < face.x2 < 420 and 50 < face.y1 < face.y2 < 380
    assert face.x2 - face.x1 > 100
    drawn = decoded(out.jpeg, cv2.IMREAD_COLOR).astype(int)
    border = drawn[round(face.y1) + 1, round(face.x1) + 10: round(face.x2) - 10]
    assert np.abs(border - np.array([255, 128, 0])).mean() < 40  # the box outline, in the face colour
    # On noise there is no face.
    noise = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8), (0, 0), 4)
    assert run_pipeline(parse(faces, OpSpec.of("faces")), noise).detections == []


async def test_ordered_map_keeps_order_although_items_finish_out_of_order() -> None:
    async def source() -> AsyncIterator[int]:
        for i in range(40):
            yield i

    async def slow_for_even(i: int) -> int:
        await asyncio.sleep(0.01 if i % 2 == 0 else 0)
        return i * 10

    got = [r async for r in ordered_map(source(), slow_for_even, limit=4)]
    assert got == [i * 10 for i in range(40)]


async def test_ordered_map_reads_no_further_ahead_than_its_limit() -> None:
    pulled: list[int] = []

    async def source() -> AsyncIterator[int]:
        for i in range(1000):
            pulled.append(i)
            yield i

    async def identity(i: int) -> int:
        return i

    results = ordered_map(source(), identity, limit=3)
    async with contextlib.aclosing(results):
        assert await anext(results) == 0
        await asyncio.sleep(0.05)  # a slow consumer: the feeder must wait for it
        assert len(pulled) == 3
        assert [await anext(results) for _ in range(5)] == [1, 2, 3, 4, 5]
        await asyncio.sleep(0.05)
        assert len(pulled) == 8


async def test_closing_ordered_map_cancels_pending_work_at_once() -> None:
    started: list[int] = []
    cancelled: list[int] = []
    never = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        for i in range(100):
            yield i

    async def stuck(i: int) -> int:
        started.append(i)
        try:
            if i > 0:
                await never.wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    results = ordered_map(source(), stuck, limit=4)
    assert await anext(results) == 0
    await asyncio.sleep(0.02)
    await results.aclose()
    assert sorted(cancelled) == sorted(i for i in started if i > 0)
    assert cancelled and len(started) == 4  # 0..3 filled the 4 slots; 1..3 were pending, nothing more was read


async def test_ordered_map_ends_with_the_source_error_after_earlier_results() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise InferenceError(Code.INVALID_ARGUMENT, "bad message")

    async def identity(i: int) -> int:
        return i

    got = []
    with pytest.raises(InferenceError, match="bad message"):
        async for r in ordered_map(source(), identity, limit=8):
            got.append(r)
    assert got == [1, 2]
