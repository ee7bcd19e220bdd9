"""The stream registry alone, on a fake clock: keys, the cap, idle eviction, state ending with its call."""

from __future__ import annotations

import numpy as np
import pytest

from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.tasks.stream import StreamRegistry, StreamWindow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def registry(max_streams: int = 3, idle: float = 10.0) -> tuple[StreamRegistry, Clock, list[int]]:
    clock = Clock()
    counts: list[int] = []
    return StreamRegistry(window=2, max_streams=max_streams, idle_seconds=idle, on_change=counts.append,
                          clock=clock), clock, counts


def test_equal_stream_ids_of_different_calls_are_different_streams() -> None:
    streams, _, counts = registry()
    first, second = streams.open_call(), streams.open_call()
    a = streams.admit(first, "cam")
    b = streams.admit(second, "cam")
    assert a is not b
    assert streams.admit(first, "cam") is a
    assert len(streams) == 2 and counts == [1, 2]


def test_past_the_cap_a_new_stream_is_resource_exhausted_but_known_ones_go_on() -> None:
    streams, _, _ = registry(max_streams=2)
    call = streams.open_call()
    streams.admit(call, "a")
    streams.admit(call, "b")
    with pytest.raises(InferenceError) as refused:
        streams.admit(call, "c")
    assert refused.value.code is Code.RESOURCE_EXHAUSTED
    assert refused.value.message == ("stream 'c' refused: 2 streams are open, the limit is 2 (--max-streams); "
                                     "retry later")
    streams.admit(call, "a")
    assert len(streams) == 2


def test_idle_streams_are_evicted_least_recently_seen_first() -> None:
    streams, clock, counts = registry(max_streams=10, idle=10.0)
    call = streams.open_call()
    old = streams.admit(call, "old")
    clock.now += 6
    streams.admit(call, "recent")
    clock.now += 5  # old idle 11 s, recent 5 s
    assert streams.evict_idle() == 1
    assert len(streams) == 1 and counts[-1] == 1
    assert streams.admit(call, "old") is not old  # a fresh window
    clock.now += 10
    assert streams.evict_idle() == 2
    assert len(streams) == 0 and counts[-1] == 0


def test_a_full_registry_evicts_idle_streams_before_refusing() -> None:
    streams, clock, _ = registry(max_streams=1, idle=10.0)
    call = streams.open_call()
    streams.admit(call, "a")
    clock.now += 10
    streams.admit(call, "b")
    assert len(streams) == 1


def test_closing_a_call_drops_only_its_streams() -> None:
    streams, _, counts = registry()
    first, second = streams.open_call(), streams.open_call()
    streams.admit(first, "a")
    streams.admit(first, "b")
    kept = streams.admit(second, "a")
    streams.close_call(first)
    assert len(streams) == 1 and counts[-1] == 1
    assert streams.admit(second, "a") is kept


def test_a_window_averages_its_last_frames_exactly() -> None:
    window = StreamWindow(size=2, now=0.0)
    mean, fill = window.add(np.array([1.0, 0.0], np.float32))
    assert fill == 1 and mean.tolist() == [1.0, 0.0]
    window.add(np.array([0.0, 1.0], np.float32))
    mean, fill = window.add(np.array([0.25, 0.75], np.float32))
    assert fill == 2 and mean.tolist() == [0.125, 0.875]
