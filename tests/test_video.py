"""The video task through `kubeinfer serve` and the gRPC client: streams, video files, detection overlay, errors."""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from conftest import iou, png_bytes
from runtime_support import RuntimeProcess
from video_support import edge_mismatch, metric, moving_rectangle_clip, write_video

from kubeinfer.clients import Client
from kubeinfer.clients.types import ProcessedFrame, VideoSummary
from kubeinfer.clients.video import frame_pixels
from kubeinfer.runtime import metrics as names
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

MODEL = "video-test"


@pytest.fixture(scope="module")
def runtimes(runtime_factory: Callable[..., RuntimeProcess],
             detector_model: Path) -> Iterator[tuple[RuntimeProcess, RuntimeProcess]]:
    """(with the detector, without one), started together so that their imports and model loads overlap."""
    started = (runtime_factory("--task", "video", "--model", str(detector_model), "--model-name", MODEL,
                               "--max-frames-in-flight", "4", "--max-batch-delay-ms", "5", wait=False),
               runtime_factory("--task", "video", "--model-name", "video-plain", wait=False))
    for runtime in started:
        runtime.wait_ready()
    yield started
    for runtime in started:  # free their memory for the rest of the suite; both sit out the shutdown delay at once
        runtime.process.send_signal(signal.SIGTERM)
    for runtime in started:
        runtime.terminate()


@pytest.fixture(scope="module")
def video_runtime(runtimes: tuple[RuntimeProcess, RuntimeProcess]) -> RuntimeProcess:
    return runtimes[0]


@pytest.fixture(scope="module")
def plain_runtime(runtimes: tuple[RuntimeProcess, RuntimeProcess]) -> RuntimeProcess:
    """The video task without a detector: the OpenCV operations only."""
    return runtimes[1]


def boxes(frame: ProcessedFrame) -> list[tuple[float, float, float, float]]:
    return [(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in frame.detections]


def test_model_info_lists_the_operations(video_runtime: RuntimeProcess, plain_runtime: RuntimeProcess) -> None:
    with Client(video_runtime.grpc_target) as client:
        info = client.model_info()
    assert info.task == "video"
    assert info.operations == ["grayscale", "blur", "edges", "resize", "detect", "faces"]
    assert info.labels == ["rectangle"]
    assert info.active_streams == 0
    with Client(plain_runtime.grpc_target) as client:
        plain = client.model_info()
        assert plain.operations == ["grayscale", "blur", "edges", "resize", "faces"]
        with pytest.raises(grpc.RpcError) as failure:
            list(client.process_video([np.zeros((8, 8, 3), np.uint8)], ops=["detect"]))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--model" in (failure.value.details() or "")


def test_120_frames_come_back_in_order_as_the_canny_edges_of_each_input(video_runtime: RuntimeProcess) -> None:
    clip = moving_rectangle_clip(count=120)
    with Client(video_runtime.grpc_target) as client:
        out = list(client.process_video((f.pixels for f in clip), ops=["edges:low=50:high=150"], stream_id="clip",
                                        jpeg_quality=95))
    assert [f.sequence for f in out] == list(range(120))
    assert all(f.stream_id == "clip" and f.error is None and (f.width, f.height) == (128, 128) for f in out)
    for frame, sent in zip(out, clip, strict=True):
        expected = cv2.Canny(cv2.cvtColor(sent.pixels, cv2.COLOR_RGB2GRAY), 50, 150)
        assert edge_mismatch(frame_pixels(frame)[:, :, 0], expected) < 0.05, f"frame {frame.sequence}"
    # The frames differ from each other (the rectangle moves), so a reordering would have failed above.
    assert not np.array_equal(frame_pixels(out[0]), frame_pixels(out[30]))


def test_detect_boxes_follow_the_moving_rectangle(video_runtime: RuntimeProcess) -> None:
    clip = moving_rectangle_clip(count=120, seed=11)
    with Client(video_runtime.grpc_target) as client:
        out = list(client.process_video([png_bytes(f.pixels) for f in clip], ops=["detect"], stream_id="det"))
        resized = list(client.process_video([f.pixels for f in clip[:10]], ops=["detect", "resize:width=256"]))
    assert [f.sequence for f in out] == list(range(120))
    matches = [max((iou(f.box, b) for b in boxes(o)), default=0.0) for f, o in zip(clip, out, strict=True)]
    assert sum(m >= 0.5 for m in matches) >= 114, f"IoU per frame: {np.round(matches, 2).tolist()}"
    assert np.mean(matches) > 0.75
    for frame in out:
        assert all(d.label == "rectangle" and d.class_id == 0 and 0.25 <= d.score <= 1 for d in frame.detections)
    # The overlay: a green outline along the top edge of the found box.
    best = max(out[5].detections, key=lambda d: d.score)
    drawn = frame_pixels(out[5]).astype(int)
    row, columns = round(best.box.y1), slice(round(best.box.x1) + 3, round(best.box.x2) - 3)
    top, underneath = drawn[row, columns], clip[5].pixels[row, columns].astype(int)
    assert np.mean((top[:, 1] > top[:, 0] + 60) & (top[:, 1] > top[:, 2] + 40)) > 0.8  # green (JPEG blurs colour)
    assert (top[:, 1] - underneath[:, 1]).mean() > 80
    # resize after detect: boxes in the 256-px output frame, i.e. twice the clip's coordinates.
    assert all((f.width, f.height) == (256, 256) for f in resized)
    for f, o in zip(clip[:10], resized, strict=True):
        doubled = tuple(2 * v for v in f.box)
        assert max(iou(doubled, b) for b in boxes(o)) >= 0.5


def test_many_streams_share_the_detector_batcher(video_runtime: RuntimeProcess) -> None:
    clips = [moving_rectangle_clip(count=30, seed=20 + i) for i in range(3)]
    results: dict[int, list[ProcessedFrame]] = {}
    before = video_runtime.metrics()

    def stream(index: int) -> None:
        with Client(video_runtime.grpc_target) as client:
            results[index] = list(client.process_video([f.pixels for f in clips[index]], ops=["detect"],
                                                       stream_id=f"cam-{index}"))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    after = video_runtime.metrics()
    for index, clip in enumerate(clips):
        got = results[index]
        assert [f.sequence for f in got] == list(range(30))
        assert {f.stream_id for f in got} == {f"cam-{index}"}
        found = [max((iou(c.box, b) for b in boxes(f)), default=0) for c, f in zip(clip, got, strict=True)]
        assert sum(m >= 0.5 for m in found) >= 27

    def grew(sample: str, **labels: str) -> float:
        return metric(after, sample, model=MODEL, **labels) - metric(before, sample, model=MODEL, **labels)

    images, batches = grew(names.BATCH_SIZE + "_sum"), grew(names.BATCH_SIZE + "_count")
    assert images == 90
    assert batches < images  # frames of several streams (and in-flight frames of one) shared model calls
    assert grew(names.FRAMES, task="video") == 90
    assert grew(names.IMAGES, task="video") == 90


@pytest.mark.parametrize(("fourcc", "suffix"), [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_a_video_file_comes_back_with_the_same_frame_count(video_runtime: RuntimeProcess, tmp_path: Path,
                                                           fourcc: str, suffix: str) -> None:
    clip = moving_rectangle_clip(count=45, size=160)
    path = write_video(tmp_path / f"clip{suffix}", [f.pixels for f in clip], fourcc, fps=15.0)
    with Client(video_runtime.grpc_target) as client:
        events = list(client.process_video_file(path, ops=["grayscale", "resize:width=80"]))
    *frames, summary = events
    assert isinstance(summary, VideoSummary)
    assert (summary.frame_count, summary.fps, summary.width, summary.height) == (45, 15.0, 160, 160)
    assert all(isinstance(f, ProcessedFrame) and f.error is None for f in frames)
    assert [f.sequence for f in frames] == list(range(45))
    assert all((f.width, f.height) == (80, 80) for f in frames)
    first = frame_pixels(frames[0])
    assert np.array_equal(first[:, :, 0], first[:, :, 1])  # grey
    # Frame 20 shows the rectangle where the clip drew it (dark blue turned grey, halved in size).
    x1, y1, x2, y2 = (v // 2 for v in clip[20].box)
    inside = frame_pixels(frames[20])[y1 + 2:y2 - 2, x1 + 2:x2 - 2, 0].astype(int)
    grey_of_rect = cv2.cvtColor(np.uint8([[[40, 60, 230]]]), cv2.COLOR_RGB2GRAY)[0, 0]
    assert abs(inside.mean() - grey_of_rect) < 12 and inside.std() < 8


def test_an_undecodable_video_file_is_an_invalid_argument(video_runtime: RuntimeProcess) -> None:
    with Client(video_runtime.grpc_target) as client:
        for data in (b"certainly not a video" * 100, b""):
            with pytest.raises(grpc.RpcError) as failure:
                list(client.process_video_file(data, ops=["edges"]))
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "video file" in (failure.value.details() or "")


@pytest.mark.parametrize(("ops", "fragment"), [
    (["edges", "sharpen"], "operation 1: unknown operation 'sharpen'"),
    (["blur:ksize=4"], "ksize must be odd"),
    (["edges:low=200:high=100"], "must not exceed high"),
    (["detect:confidence=2"], "confidence must be in [0, 1]"),
    (["resize"], "give width, height or both"),
])
def test_a_bad_pipeline_is_refused_before_any_frame_is_processed(video_runtime: RuntimeProcess, ops: list[str],
                                                                 fragment: str) -> None:
    frames = [png_bytes(f.pixels) for f in moving_rectangle_clip(count=5)]
    before = video_runtime.metrics()
    received: list[ProcessedFrame] = []
    with Client(video_runtime.grpc_target) as client, pytest.raises(grpc.RpcError) as failure:
        for frame in client.process_video(frames, ops=ops):
            received.append(frame)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (failure.value.details() or "")
    assert received == []
    after = video_runtime.metrics()
    assert metric(after, names.FRAMES, model=MODEL) == metric(before, names.FRAMES, model=MODEL)
    assert metric(after, names.REQUESTS, rpc="ProcessVideo", code="INVALID_ARGUMENT") == \
        metric(before, names.REQUESTS, rpc="ProcessVideo", code="INVALID_ARGUMENT") + 1


def test_an_undecodable_frame_gets_its_own_error_and_the_stream_goes_on(video_runtime: RuntimeProcess) -> None:
    clip = moving_rectangle_clip(count=4)
    frames = [png_bytes(clip[0].pixels), b"\x89PNG but not really", png_bytes(clip[2].pixels), clip[3].pixels]
    with Client(video_runtime.grpc_target) as client:
        out = list(client.process_video(frames, ops=["grayscale"], stream_id="s"))
    assert [f.sequence for f in out] == [0, 1, 2, 3]
    assert out[1].error is not None and out[1].jpeg == b""
    assert out[1].error.code == "INVALID_ARGUMENT"
    assert out[1].error.message.startswith("frame 1: ")
    for ok in (out[0], out[2], out[3]):
        assert ok.error is None and ok.jpeg and (ok.width, ok.height) == (128, 128)


def test_the_first_message_must_carry_the_pipeline(video_runtime: RuntimeProcess) -> None:
    frame = pb.Image(encoded=png_bytes(moving_rectangle_clip(count=1)[0].pixels))
    with grpc.insecure_channel(video_runtime.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            list(stub.ProcessVideo(iter([pb.VideoRequest(sequence=0, image=frame)]), timeout=30))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "first message" in (failure.value.details() or "")
        # A later message may repeat the same pipeline, but not change it.
        same = pb.VideoPipeline(operations=[pb.VideoOperation(name="grayscale")])
        other = pb.VideoPipeline(operations=[pb.VideoOperation(name="edges")])
        requests = [pb.VideoRequest(pipeline=same),  # pipeline only, no frame
                    pb.VideoRequest(sequence=1, image=frame, pipeline=same),
                    pb.VideoRequest(sequence=2, image=frame, pipeline=other)]
        got = []
        with pytest.raises(grpc.RpcError) as failure:
            for response in stub.ProcessVideo(iter(requests), timeout=30):
                got.append(response.sequence)
        assert got == [1]
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot change" in (failure.value.details() or "")


def test_a_cancelled_stream_frees_its_state_at_once(video_runtime: RuntimeProcess) -> None:
    frame = png_bytes(moving_rectangle_clip(count=1)[0].pixels)
    sent = itertools.count()

    def endless() -> Iterator[bytes]:
        while True:
            next(sent)
            yield frame

    before = video_runtime.metrics()
    with Client(video_runtime.grpc_target) as client:
        stream = client.process_video(endless(), ops=["detect"], stream_id="live")
        assert [next(stream).sequence for _ in range(3)] == [0, 1, 2]
        assert client.model_info().active_streams == 1
        assert metric(video_runtime.metrics(), names.ACTIVE_STREAMS, model=MODEL, task="video") == 1
        stream.close()  # cancels the call
        deadline = time.monotonic() + 5
        while client.model_info().active_streams and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.model_info().active_streams == 0
    after = video_runtime.metrics()
    assert metric(after, names.ACTIVE_STREAMS, model=MODEL, task="video") == 0
    # Frames already queued for the model when the call ended are skipped, not run: the queue empties quickly.
    while metric(after, names.QUEUE_DEPTH, model=MODEL) and time.monotonic() < deadline:
        time.sleep(0.02)
        after = video_runtime.metrics()
    assert metric(after, names.QUEUE_DEPTH, model=MODEL) == 0
    assert metric(after, names.REQUESTS, rpc="ProcessVideo", code="CANCELLED") == \
        metric(before, names.REQUESTS, rpc="ProcessVideo", code="CANCELLED") + 1
    # Nothing is processed for the cancelled stream any more.
    processed = metric(after, names.FRAMES, model=MODEL)
    time.sleep(0.3)
    assert metric(video_runtime.metrics(), names.FRAMES, model=MODEL) == processed
