"""Limits are checked before any work: images per request, pixels per request (from the headers), queue room
(reserved before decoding) and the request bytes in flight over both transports."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import pytest_asyncio
from conftest import png_bytes
from runtime_support import in_process_runtime

from kubeinfer.runtime.batching import DynamicBatcher
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.detection import DetectResult
from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc


class HoldingDetect:
    """Answers once ``release`` is set; counts the requests that reached it."""

    name = "detect"

    def __init__(self, config: ServeConfig) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.calls = 0

    def info(self, base: ModelInfo) -> ModelInfo:
        return base

    async def detect(self, images: Sequence[ImageInput], params: Parameters) -> list[DetectResult]:
        self.calls += 1
        await self.release.wait()
        return [DetectResult([], [], 1, 1) for _ in images]


TASK = HoldingDetect.__new__(HoldingDetect)


@pytest_asyncio.fixture(loop_scope="function")
async def limited(tmp_path: Path) -> AsyncIterator[ServeConfig]:
    HoldingDetect.__init__(TASK, None)  # type: ignore[arg-type]
    async with in_process_runtime(tmp_path, "--model-name", "limited", "--max-images-per-request", "2",
                                  "--max-request-pixels", "1000", "--max-message-bytes", "4096",
                                  "--max-inflight-bytes", "6000", task=TASK) as config:
        yield config


def png(side: int) -> bytes:
    return png_bytes(np.full((side, side, 3), 200, np.uint8))


async def via_grpc(config: ServeConfig, images: list[bytes]) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{config.grpc_port}") as channel:
        try:
            await pb_grpc.InferenceStub(channel).Detect(pb.DetectRequest(images=[pb.Image(encoded=i) for i in images]))
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return "OK"


async def via_rest(config: ServeConfig, images: list[bytes]) -> str:
    body = {"images": [{"b64": base64.b64encode(i).decode()} for i in images]}
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{config.http_port}/v1/detect", json=body) as reply:
        answer = await reply.json()
        return "OK" if reply.status == 200 else f"{reply.status}: {answer['error']}"


@pytest.mark.asyncio(loop_scope="function")
async def test_too_many_images_or_pixels_are_refused_before_the_task_sees_them(limited: ServeConfig) -> None:
    small = png(10)  # 100 pixels
    assert await via_grpc(limited, [small, small]) == await via_rest(limited, [small, small]) == "OK"
    assert TASK.calls == 2
    over = "the request holds 3 images, the limit is 2 (--max-images-per-request)"
    assert await via_grpc(limited, [small] * 3) == f"RESOURCE_EXHAUSTED: {over}"
    assert await via_rest(limited, [small] * 3) == f"413: {over}"
    big = png(30)  # 900 pixels each: two are over --max-request-pixels 1000
    over = "the request's images hold more than 1000 pixels together (--max-request-pixels)"
    assert await via_grpc(limited, [big, big]) == f"RESOURCE_EXHAUSTED: {over}"
    assert await via_rest(limited, [big, big]) == f"413: {over}"
    assert TASK.calls == 2


@pytest.mark.asyncio(loop_scope="function")
async def test_request_bytes_in_flight_have_one_budget_over_both_transports(limited: ServeConfig) -> None:
    payload = [bytes(1500)]  # undecodable, never decoded: the task answers without looking
    TASK.release.clear()
    held = [asyncio.create_task(via_grpc(limited, payload)), asyncio.create_task(via_rest(limited, payload))]
    while TASK.calls < 2:
        await asyncio.sleep(0.01)
    # ~1.5 kB gRPC + ~2 kB JSON held; 3 kB more over gRPC or 4 kB more over REST pass --max-inflight-bytes 6000
    grpc_refusal, rest_refusal = await via_grpc(limited, payload * 2), await via_rest(limited, payload * 2)
    assert grpc_refusal.startswith("RESOURCE_EXHAUSTED: ") and "(--max-inflight-bytes); retry later" in grpc_refusal
    assert rest_refusal.startswith("429: ") and "(--max-inflight-bytes)" in rest_refusal
    assert TASK.calls == 2
    TASK.release.set()
    assert await asyncio.gather(*held) == ["OK", "OK"]
    assert await via_rest(limited, payload) == "OK"  # the budget is given back


async def test_queue_room_is_reserved_before_decoding() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher("t", lambda items: list(items), max_batch_size=2,
                                                       max_delay_s=0.0, max_queue_size=4)
    with batcher.reserve(3):
        with pytest.raises(InferenceError) as refused:
            batcher.reserve(2)  # 3 on their way + 2 > 4: refused before the caller decodes anything
        assert refused.value.code is Code.RESOURCE_EXHAUSTED and refused.value.http_status == 429
        assert "queue is full" in refused.value.message
        batcher.reserve(1).__exit__()
    with batcher.reserve(4):
        pass
