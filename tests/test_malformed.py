"""Malformed input is the client's error (INVALID_ARGUMENT / 400), never a server fault; a client that goes away
is CANCELLED (REST 499 in the metrics), logged at INFO at most."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from runtime_support import EmptyDetect, in_process_runtime

from kubeinfer.runtime.config import ServeConfig


@pytest_asyncio.fixture(loop_scope="function")
async def runtime(tmp_path: Path) -> AsyncIterator[ServeConfig]:
    async with in_process_runtime(tmp_path, "--model-name", "m", task=EmptyDetect) as config:
        yield config


HUGE = "9" * 400
DEEP = "[" * 100_000 + "]" * 100_000
IMAGES = '"images": [{"b64": "eA=="}]'
OIP_INPUT = '{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"]}'
HTTP_CASES = [
    ("/v1/detect", '{' + IMAGES + ', "parameters": {"confidence": ' + HUGE + '}}', "must be finite"),
    ("/v1/detect", '{' + IMAGES + ', "parameters": {"max_detections": ' + HUGE + '}}', "must be finite"),
    ("/v1/detect", DEEP, "nested too deeply"),
    ("/v1/detect", '{"images": ' + DEEP + '}', "nested too deeply"),
    ("/v2/models/m/infer", DEEP, "nested too deeply"),
    ("/v2/models/m/infer", '{"inputs": [' + OIP_INPUT + '], "parameters": {"confidence": ' + HUGE + '}}',
     "must be finite"),
    ("/v2/models/m/infer", '{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [0, 1000000000000, '
     '1000000000000, 3], "data": []}]}', "is too large"),
    ("/v2/models/m/infer", '{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [0, 99999999999999999999], '
     '"parameters": {"binary_data_size": 0}}]}', "is too large"),
    ("/v2/models/m/infer", '{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 1, 1, 3], "data": ['
     + HUGE + ', 1, 1]}]}', "UINT8 values must be integers"),
    ("/v2/models/m/infer", '{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [' + HUGE + '], '
     '"data": [1]}]}', "is too large"),
]


@pytest.mark.asyncio(loop_scope="function")
async def test_malformed_http_bodies_are_400(runtime: ServeConfig, caplog: pytest.LogCaptureFixture) -> None:
    base = f"http://127.0.0.1:{runtime.http_port}"
    with caplog.at_level(logging.WARNING):
        async with aiohttp.ClientSession() as session:
            for path, body, message in HTTP_CASES:
                async with session.post(base + path, data=body.encode(),
                                        headers={"Content-Type": "application/json"}) as reply:
                    answer = await reply.json()
                    assert (reply.status, answer["code"]) == (400, "INVALID_ARGUMENT"), (path, body[:80], answer)
                    assert message in answer["error"], (path, body[:80], answer)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.parametrize("method", ["/kubeinfer.v1.Inference/Detect", "/inference.GRPCInferenceService/ModelInfer",
                                    "/kubeinfer.v1.Inference/GetModelInfo"])
async def test_a_body_that_is_not_protobuf_is_invalid_argument(runtime: ServeConfig, method: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call(b"\xff\xff\xff\xff not protobuf")
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value
    assert "not a valid protobuf message" in (failure.value.details() or "")


@pytest.mark.asyncio(loop_scope="function")
async def test_a_client_that_goes_away_mid_upload_is_cancelled_and_logged_at_info(
        runtime: ServeConfig, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({"images": [{"b64": "eA=="}] * 100}).encode()
    with caplog.at_level(logging.INFO):
        _, writer = await asyncio.open_connection("127.0.0.1", runtime.http_port)
        writer.write(f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is reading the body
        writer.close()
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                async with session.get(f"http://127.0.0.1:{runtime.http_port}/metrics") as reply:
                    text = await reply.text()
                if 'code="CANCELLED",model="m",protocol="rest",rpc="Detect"' in text:
                    break
                await asyncio.sleep(0.02)
    assert 'kubeinfer_requests_total{code="CANCELLED",model="m",protocol="rest",rpc="Detect"} 1.0' in text
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("Detect cancelled (the client went away" in r.getMessage() for r in caplog.records)
