"""The dynamic batcher in-process: real threads and event loop, a model stand-in that records its batches."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from kubeinfer.runtime.batching import DynamicBatcher
from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.metrics import RuntimeMetrics


class RecordingModel:
    """Doubles its inputs; remembers each batch; can be told to fail or to be slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail_on: set[int] = set()
        self.threads: set[str] = set()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on & set(items):
            raise ValueError("boom")
        return [2 * i for i in items]


def make(model: RecordingModel, **kwargs: float) -> DynamicBatcher[int, int]:
    options = {"max_batch_size": 8, "max_delay_s": 0.05, "max_queue_size": 64, **kwargs}
    batcher: DynamicBatcher[int, int] = DynamicBatcher("test", model, **options)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def test_concurrent_callers_share_one_batch_and_get_their_own_results() -> None:
    model = RecordingModel()
    batcher = make(model, max_delay_s=0.2)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
    batcher.stop()
    assert results == [0, 2, 4, 6, 8, 10]
    assert model.batches == [[0, 1, 2, 3, 4, 5]]
    assert model.threads == {"batcher-test"}


async def test_batches_never_exceed_max_size_and_one_request_may_span_several() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=4)
    results = await batcher.submit_many(list(range(10)))
    batcher.stop()
    assert results == [2 * i for i in range(10)]
    assert [len(b) for b in model.batches] == [4, 4, 2]


async def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=4, max_delay_s=5.0)
    started = time.monotonic()
    await batcher.submit_many([1, 2, 3, 4])
    batcher.stop()
    assert time.monotonic() - started < 2.0


async def test_a_lone_item_waits_at_most_the_delay() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=64, max_delay_s=0.1)
    started = time.monotonic()
    assert await batcher.submit(21) == 42
    elapsed = time.monotonic() - started
    batcher.stop()
    assert 0.09 <= elapsed < 2.0


async def test_items_queued_while_the_model_runs_form_the_next_batch() -> None:
    model = RecordingModel(delay=0.3)
    batcher = make(model, max_batch_size=16, max_delay_s=0.0)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.1)  # the model is busy with [0]
    rest = await asyncio.gather(*(batcher.submit(i) for i in range(1, 9)))
    await first
    batcher.stop()
    assert rest == [2 * i for i in range(1, 9)]
    assert model.batches == [[0], list(range(1, 9))]


async def test_instances_run_their_batches_at_the_same_time() -> None:
    """Two instances: each batch waits at a barrier for the other, which only a second thread can reach."""
    meeting = threading.Barrier(2, timeout=5)
    seen: set[str] = set()

    def meet(items: Sequence[int]) -> list[int]:
        seen.add(threading.current_thread().name)
        meeting.wait()
        return [2 * i for i in items]

    batcher: DynamicBatcher[int, int] = DynamicBatcher("pair", meet, max_batch_size=4, max_delay_s=0.0,
                                                       max_queue_size=64, instances=2)
    batcher.start()
    results = await batcher.submit_many(list(range(8)))
    await asyncio.to_thread(batcher.stop)
    assert results == [2 * i for i in range(8)]
    assert not meeting.broken
    assert seen == {"batcher-pair", "batcher-pair-1"}
    assert batcher.instances == 2


async def test_one_instance_runs_one_batch_at_a_time() -> None:
    """The default: a second batch waits for the first (a barrier for two would time out, failing them)."""
    meeting = threading.Barrier(2, timeout=0.3)

    def meet(items: Sequence[int]) -> list[int]:
        meeting.wait()
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher("single", meet, max_batch_size=4, max_delay_s=0.0,
                                                       max_queue_size=64)
    batcher.start()
    with pytest.raises(InferenceError) as failed:
        await batcher.submit_many(list(range(8)))
    await asyncio.to_thread(batcher.stop)
    assert failed.value.code is Code.INTERNAL


async def test_stop_lets_every_instance_finish_the_queue() -> None:
    model = RecordingModel(delay=0.05)
    batcher = make(model, max_batch_size=2, max_delay_s=0.0, instances=3)
    pending = asyncio.ensure_future(batcher.submit_many(list(range(12))))
    await asyncio.sleep(0.02)
    await asyncio.to_thread(batcher.stop)
    assert await pending == [2 * i for i in range(12)]
    assert sorted(i for batch in model.batches for i in batch) == list(range(12))
    assert all(len(batch) <= 2 for batch in model.batches)
    assert len(model.threads) > 1
    with pytest.raises(InferenceError) as refused:
        await batcher.submit(1)
    assert refused.value.code is Code.UNAVAILABLE


def test_instances_must_be_positive() -> None:
    with pytest.raises(ValueError, match="instances"):
        DynamicBatcher("none", RecordingModel(), max_batch_size=1, max_delay_s=0.0, max_queue_size=1, instances=0)


async def test_a_failing_batch_fails_its_callers_only_and_the_thread_keeps_serving() -> None:
    model = RecordingModel()
    model.fail_on = {13}
    batcher = make(model, max_delay_s=0.0)
    with pytest.raises(InferenceError) as failure:
        await batcher.submit(13)
    assert failure.value.code is Code.INTERNAL
    assert "internal error" in failure.value.message and "boom" not in failure.value.message  # the log has it
    assert await batcher.submit(5) == 10
    batcher.stop()


async def test_a_full_queue_refuses_the_whole_request_with_resource_exhausted() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=4, max_queue_size=8)
    with pytest.raises(InferenceError) as refused:
        await batcher.submit_many(list(range(9)))
    assert refused.value.code is Code.RESOURCE_EXHAUSTED
    assert model.batches == []  # all or nothing: none of the nine was queued
    assert await batcher.submit_many(list(range(8))) == [2 * i for i in range(8)]
    batcher.stop()


async def test_stop_finishes_queued_work_then_refuses_new_items() -> None:
    model = RecordingModel(delay=0.1)
    batcher = make(model, max_batch_size=2, max_delay_s=0.0)
    pending = asyncio.ensure_future(batcher.submit_many(list(range(6))))
    await asyncio.sleep(0.05)
    await asyncio.to_thread(batcher.stop)
    assert await pending == [2 * i for i in range(6)]
    with pytest.raises(InferenceError) as refused:
        await batcher.submit(1)
    assert refused.value.code is Code.UNAVAILABLE


async def test_cancelled_callers_are_skipped_by_the_model() -> None:
    model = RecordingModel(delay=0.3)
    batcher = make(model, max_batch_size=8, max_delay_s=0.0)
    busy = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.1)
    doomed = asyncio.ensure_future(batcher.submit(99))
    await asyncio.sleep(0.01)
    doomed.cancel()
    kept = await batcher.submit(7)
    await busy
    batcher.stop()
    assert kept == 14
    assert all(99 not in batch for batch in model.batches)


async def test_metrics_record_batch_sizes_and_waits() -> None:
    metrics = RuntimeMetrics("unit")
    model = RecordingModel()
    batcher: DynamicBatcher[int, int] = DynamicBatcher("m", model, max_batch_size=8, max_delay_s=0.1,
                                                      max_queue_size=64, metrics=metrics)
    batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    batcher.stop()
    registry = metrics.registry
    assert registry.get_sample_value("kubeinfer_batch_size_count", {"model": "unit"}) == 1
    assert registry.get_sample_value("kubeinfer_batch_size_sum", {"model": "unit"}) == 5
    assert registry.get_sample_value("kubeinfer_queue_wait_seconds_count", {"model": "unit"}) == 5
    assert registry.get_sample_value("kubeinfer_queue_depth", {"model": "unit"}) == 0


async def test_with_reservations_a_lone_request_skips_the_delay() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=64, max_delay_s=1.0)
    started = time.monotonic()
    with batcher.reserve(1) as reservation:
        assert await batcher.submit_many([21], reservation) == [42]
    elapsed = time.monotonic() - started
    batcher.stop()
    assert elapsed < 0.5


async def test_reserved_items_still_on_their_way_are_waited_for() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=64, max_delay_s=2.0)

    async def request(values: list[int], decode_time: float) -> list[int]:
        with batcher.reserve(len(values)) as reservation:
            await asyncio.sleep(decode_time)  # stands in for decoding in the pool
            return await batcher.submit_many(values, reservation)

    fast, slow = await asyncio.gather(request([1, 2], 0.0), request([3], 0.2))
    batcher.stop()
    assert (fast, slow) == ([2, 4], [6])
    assert model.batches == [[1, 2, 3]]


async def test_a_failed_request_releases_its_reservation() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=64, max_delay_s=1.0)
    with pytest.raises(ValueError), batcher.reserve(3):
        raise ValueError("undecodable image")  # never submits
    started = time.monotonic()
    with batcher.reserve(1) as reservation:
        await batcher.submit_many([5], reservation)
    batcher.stop()
    assert time.monotonic() - started < 0.5
