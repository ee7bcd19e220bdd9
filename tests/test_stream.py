"""StreamClassify through `kubeinfer serve`: window averages, stream isolation, the cap and idle eviction."""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from classify_support import (
    COLOURS,
    colour_models,
    expected_probabilities,
    noisy,
    scores,
    shared_runtime,
    solid,
    write_labels,
)
from conftest import png_bytes
from runtime_support import RuntimeProcess

from kubeinfer.clients import Client
from kubeinfer.clients.types import StreamFrame, StreamPrediction

WINDOW = 5


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stream-labels")


@pytest.fixture(scope="module")
def small_starting(runtime_factory: Callable[..., RuntimeProcess], labels_dir: Path) -> RuntimeProcess:
    """Two streams at most, evicted after 3 s idle; started but not waited for: it loads while the main one does."""
    labels = write_labels(labels_dir / "txt", "txt")
    return shared_runtime(runtime_factory, "stream-small", "--task", "stream-classify", "--model",
                          str(colour_models().torchscript), "--labels", str(labels), "--window", "3",
                          "--max-streams", "2", "--stream-idle-seconds", "3", "--model-name", "colour-small",
                          wait=False)


@pytest.fixture(scope="module")
def runtime(runtime_factory: Callable[..., RuntimeProcess], labels_dir: Path,
            small_starting: RuntimeProcess) -> RuntimeProcess:
    labels = write_labels(labels_dir / "json", "json-index-map")
    return shared_runtime(runtime_factory, "stream", "--task", "stream-classify", "--model",
                          str(colour_models().torchscript), "--labels", str(labels), "--window", str(WINDOW),
                          "--model-name", "colour-stream", "--top-k", "3", "--max-batch-delay-ms", "5")


@pytest.fixture(scope="module")
def small_runtime(small_starting: RuntimeProcess) -> RuntimeProcess:
    return small_starting.wait_ready()


@pytest.fixture(scope="module")
def client(runtime: RuntimeProcess) -> Iterator[Client]:
    with Client(runtime.grpc_target) as connection:
        yield connection


def expected_label(frames: list[np.ndarray], window: int) -> list[str]:
    """The averaged label after each frame, predicted from the model's known answers."""
    probabilities = [expected_probabilities(f) for f in frames]
    return [COLOURS[int(np.argmax(np.mean(probabilities[max(0, i - window + 1):i + 1], axis=0)))]
            for i in range(len(frames))]


def test_the_averaged_label_switches_exactly_where_the_window_predicts(client: Client) -> None:
    reds, blues = 7, 8
    frames = [noisy("red", i) for i in range(reds)] + [noisy("blue", 100 + i) for i in range(blues)]
    predictions = list(client.stream_classify(frames, stream_id="cam-1", mode="rgb"))

    assert [p.sequence for p in predictions] == list(range(len(frames)))
    assert all((p.stream_id, p.mode, p.error) == ("cam-1", "rgb", None) for p in predictions)
    assert [p.window_fill for p in predictions] == [min(i + 1, WINDOW) for i in range(len(frames))]
    assert [p.raw.label for p in predictions] == ["red"] * reds + ["blue"] * blues
    averaged = [p.averaged.label for p in predictions]
    assert averaged == expected_label(frames, WINDOW)
    assert averaged.index("blue") == reds + WINDOW // 2  # blue needs a majority of the window
    raw = [scores(p.raw) for p in predictions]
    for i, p in enumerate(predictions):
        np.testing.assert_allclose(scores(p.raw), expected_probabilities(frames[i]), atol=1e-5)
        np.testing.assert_allclose(scores(p.averaged), np.mean(raw[max(0, i - WINDOW + 1):i + 1], axis=0), atol=1e-6)


def test_streams_interleaved_in_one_call_keep_their_own_windows(client: Client) -> None:
    frames = []
    for i in range(6):
        frames.append(StreamFrame(png_bytes(noisy("green", i)), stream_id="left", mode="camera"))
        frames.append(StreamFrame(png_bytes(noisy("blue", 50 + i)), stream_id="right", mode="screen",
                                  sequence=1000 + i))
    predictions = list(client.stream_classify(frames))
    left = [p for p in predictions if p.stream_id == "left"]
    right = [p for p in predictions if p.stream_id == "right"]
    assert [p.window_fill for p in left] == [p.window_fill for p in right] == [1, 2, 3, 4, 5, 5]
    assert {p.averaged.label for p in left} == {"green"} and {p.mode for p in left} == {"camera"}
    assert {p.averaged.label for p in right} == {"blue"} and {p.mode for p in right} == {"screen"}
    assert [p.sequence for p in left] == [0, 2, 4, 6, 8, 10]
    assert [p.sequence for p in right] == [1000 + i for i in range(6)]


class Lockstep:
    """A StreamClassify call driven one frame at a time: send a frame, get its prediction."""

    def __init__(self, client: Client, **kwargs: object) -> None:
        self._frames: queue.Queue[object] = queue.Queue()

        def source() -> Iterator[object]:
            while (frame := self._frames.get()) is not None:
                yield frame

        self._predictions = client.stream_classify(source(), **kwargs)

    def send(self, frame: object) -> StreamPrediction:
        self._frames.put(frame)
        return next(self._predictions)

    def close(self) -> None:
        self._frames.put(None)
        assert list(self._predictions) == []


def test_two_clients_with_the_same_stream_id_never_mix(runtime: RuntimeProcess) -> None:
    with Client(runtime.grpc_target) as first, Client(runtime.grpc_target) as second:
        reds, blues = Lockstep(first, stream_id="cam"), Lockstep(second, stream_id="cam")
        for i in range(2 * WINDOW):
            red = reds.send(solid("red"))
            blue = blues.send(solid("blue"))
            assert (red.averaged.label, blue.averaged.label) == ("red", "blue")
            assert red.averaged.score > 0.999 and blue.averaged.score > 0.999  # nothing of the other leaked in
            assert red.window_fill == blue.window_fill == min(i + 1, WINDOW)
            assert first.model_info().active_streams == 2
        reds.close()
        blues.close()


def active_streams_gauge(runtime: RuntimeProcess, model: str) -> float:
    pattern = rf'^kubeinfer_active_streams{{model="{model}",task="stream-classify"}} (\S+)$'
    match = re.search(pattern, runtime.metrics(), re.MULTILINE)
    assert match, runtime.metrics()
    return float(match.group(1))


def frames_counter(runtime: RuntimeProcess, model: str) -> float:
    pattern = rf'^kubeinfer_frames_processed_total{{model="{model}",task="stream-classify"}} (\S+)$'
    match = re.search(pattern, runtime.metrics(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_streams_state_ends_with_its_call_and_is_visible_in_info_and_metrics(client: Client,
                                                                               runtime: RuntimeProcess) -> None:
    frames_before = frames_counter(runtime, "colour-stream")
    call = Lockstep(client)
    for stream_id in ("a", "b", "c"):
        call.send(StreamFrame(solid("green"), stream_id=stream_id))
    info = client.model_info()
    assert (info.task, info.window, info.max_streams, info.active_streams) == ("stream-classify", WINDOW, 1024, 3)
    assert info.labels == COLOURS
    assert active_streams_gauge(runtime, "colour-stream") == 3
    call.close()
    assert client.model_info().active_streams == 0
    assert active_streams_gauge(runtime, "colour-stream") == 0
    assert frames_counter(runtime, "colour-stream") - frames_before == 3

    again = Lockstep(client)
    assert again.send(StreamFrame(solid("green"), stream_id="a")).window_fill == 1  # a new call starts afresh
    again.close()


def test_closing_the_iterator_early_cancels_the_call_and_frees_its_streams(client: Client) -> None:
    def endless() -> Iterator[np.ndarray]:
        while True:
            yield solid("red")

    predictions = client.stream_classify(endless(), stream_id="endless")
    assert next(predictions).raw.label == "red"
    assert client.model_info().active_streams == 1
    predictions.close()
    deadline = time.monotonic() + 10
    while client.model_info().active_streams != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_bad_frame_fails_alone_and_leaves_the_window_untouched(client: Client) -> None:
    frames = [solid("red"), solid("red"), b"not an image", solid("blue"), StreamFrame(solid("blue"), top_k=0),
              solid("blue"), StreamFrame(solid("blue"), top_k=1)]
    predictions = list(client.stream_classify(frames, stream_id="s"))
    assert [p.window_fill for p in predictions] == [1, 2, 2, 3, 3, 4, 5]
    bad, bad_top_k = predictions[2], predictions[4]
    assert bad.error is not None and bad.error.code == "INVALID_ARGUMENT"
    assert "image 2: not a decodable" in bad.error.message
    assert (bad.raw, bad.averaged) == (None, None)
    assert bad_top_k.error is not None and bad_top_k.error.code == "INVALID_ARGUMENT"
    assert "top_k must be at least 1" in bad_top_k.error.message
    assert [p.averaged.label for p in predictions if p.error is None] == ["red", "red", "red", "red", "blue"]
    assert len(predictions[6].averaged.top) == 1 and len(predictions[5].averaged.top) == 3


def test_classify_and_clips_work_on_a_stream_runtime(client: Client) -> None:
    results = client.classify([solid("green"), noisy("red", 3)], top_k=1)
    assert [r.label for r in results] == ["green", "red"]
    clip = client.classify_clip([solid("blue")] * 3 + [solid("red")] * 2)
    assert (clip.frames, clip.result.label) == (5, "blue")


def test_past_max_streams_new_streams_are_refused_and_idle_ones_are_evicted(small_runtime: RuntimeProcess) -> None:
    with Client(small_runtime.grpc_target) as a, Client(small_runtime.grpc_target) as b, \
            Client(small_runtime.grpc_target) as c:
        first, second, third = Lockstep(a, stream_id="a"), Lockstep(b, stream_id="b"), Lockstep(c, stream_id="c")
        first.send(solid("red"))
        assert first.send(solid("red")).window_fill == 2
        second.send(solid("blue"))
        last_frame = time.monotonic()
        refused = third.send(solid("green"))
        assert refused.error is not None and refused.error.code == "RESOURCE_EXHAUSTED"
        assert "stream 'c' refused: 2 streams are open, the limit is 2 (--max-streams)" in refused.error.message
        assert refused.raw is None and refused.averaged is None
        assert a.model_info().active_streams == 2
        assert active_streams_gauge(small_runtime, "colour-small") == 2

        deadline = time.monotonic() + 15  # a and b go idle: evicted after 3 s, with no frame arriving anywhere
        while a.model_info().active_streams != 0:
            assert time.monotonic() < deadline, "idle streams were never evicted"
            time.sleep(0.1)
        assert time.monotonic() - last_frame >= 2.9
        assert active_streams_gauge(small_runtime, "colour-small") == 0

        admitted = third.send(solid("green"))  # the same call, refused before, is served now
        assert admitted.error is None and admitted.window_fill == 1 and admitted.averaged.label == "green"
        assert first.send(solid("red")).window_fill == 1  # a's window was dropped with it
        for call in (first, second, third):
            call.close()
        assert a.model_info().active_streams == 0


def test_a_request_stream_without_frames_ends_cleanly(client: Client) -> None:
    assert list(client.stream_classify([], stream_id="empty")) == []


def test_stream_frames_share_the_batcher_with_other_streams(runtime: RuntimeProcess) -> None:
    """Eight concurrent calls: the model sees batches of several frames, from different calls."""
    import threading

    def batches() -> tuple[float, float]:
        text = runtime.metrics()
        count = float(re.search(r"^kubeinfer_batch_size_count\S* (\S+)$", text, re.MULTILINE).group(1))
        total = float(re.search(r"^kubeinfer_batch_size_sum\S* (\S+)$", text, re.MULTILINE).group(1))
        return count, total

    before = batches()
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            with Client(runtime.grpc_target) as connection:
                colour = COLOURS[index % 3]
                out = list(connection.stream_classify([solid(colour)] * 30, stream_id="same"))
                assert [p.averaged.label for p in out] == [colour] * 30
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    after = batches()
    assert after[1] - before[1] == 240
    assert (after[1] - before[1]) / (after[0] - before[0]) > 2  # mean batch size
