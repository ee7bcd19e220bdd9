"""Large gRPC requests are parsed in the worker pool, not on the event loop, and answer exactly as small ones do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from runtime_support import EmptyDetect, in_process_runtime

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.transports.grpc import PARSE_OFF_LOOP_BYTES, Malformed, Received, request_parser
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

LARGE = PARSE_OFF_LOOP_BYTES + 1


def test_messages_are_parsed_on_the_loop_when_small_and_in_the_pool_when_large() -> None:
    parse = request_parser(pb.DetectRequest.FromString, PARSE_OFF_LOOP_BYTES)
    assert parse is not None
    small = pb.DetectRequest(images=[pb.Image(encoded=b"x" * 100)])
    received = parse(small.SerializeToString())
    assert isinstance(received, Received) and len(received.data) == small.ByteSize()
    assert asyncio.run(received.parse(None)) == small
    assert isinstance(asyncio.run(parse(b"\xff\xff not protobuf").parse(None)), Malformed)

    large = pb.DetectRequest(images=[pb.Image(encoded=b"y" * LARGE)])
    in_pool: list[str] = []

    class Pool(ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            in_pool.append("parse")
            return super().submit(*args, **kwargs)

    with Pool(1) as pool:
        assert asyncio.run(parse(small.SerializeToString()).parse(pool)) == small
        assert in_pool == []
        assert asyncio.run(parse(large.SerializeToString()).parse(pool)) == large
        assert isinstance(asyncio.run(parse(b"\xff" * LARGE).parse(pool)), Malformed)
    assert in_pool == ["parse", "parse"]


@pytest_asyncio.fixture(loop_scope="function")
async def runtime(tmp_path: Path) -> AsyncIterator[ServeConfig]:
    async with in_process_runtime(tmp_path, "--model-name", "m", task=EmptyDetect) as config:
        yield config


@pytest.mark.asyncio(loop_scope="function")
async def test_large_requests_are_answered_alongside_small_ones(runtime: ServeConfig) -> None:
    """Large and small Detect calls at once: every one answered, one result per image."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)
        large = pb.DetectRequest(images=[pb.Image(encoded=b"a" * LARGE), pb.Image(encoded=b"b" * 10)])
        small = pb.DetectRequest(images=[pb.Image(encoded=b"c" * 10)])
        replies = await asyncio.gather(*(stub.Detect(large if i % 2 else small) for i in range(8)))
    assert [len(reply.results) for reply in replies] == [1, 2] * 4


@pytest.mark.asyncio(loop_scope="function")
async def test_a_large_body_that_is_not_protobuf_is_invalid_argument(runtime: ServeConfig) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        call = channel.unary_unary("/kubeinfer.v1.Inference/Detect", request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call(b"\xff" * LARGE)
        ok = await pb_grpc.InferenceStub(channel).Detect(pb.DetectRequest(images=[pb.Image(encoded=b"z")]))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value
    assert "not a valid protobuf message" in (failure.value.details() or "")
    assert len(ok.results) == 1  # the server goes on serving
