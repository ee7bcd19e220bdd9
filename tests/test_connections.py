"""Connection hygiene: idle HTTP keep-alive connections and slow request bodies are cut; idle gRPC connections get
GOAWAY; connection age and ping policing reach the gRPC server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from runtime_support import EmptyDetect, in_process_runtime

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.transports.grpc import server_options
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc


@pytest_asyncio.fixture(loop_scope="function")
async def strict(tmp_path: Path) -> AsyncIterator[ServeConfig]:
    async with in_process_runtime(tmp_path, "--model-name", "m", "--http-keepalive-timeout", "0.5",
                                  "--http-body-timeout", "0.5", "--grpc-max-connection-idle", "0.5",
                                  task=EmptyDetect) as config:
        yield config


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(65536), seconds):
            pass
    except TimeoutError:
        return False
    return True


@pytest.mark.asyncio(loop_scope="function")
async def test_an_idle_keep_alive_connection_is_closed(strict: ServeConfig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert await closed_within(reader, 5.0)  # aiohttp's default keeps it an hour
    assert time.monotonic() - started < 3.0
    writer.close()


@pytest.mark.asyncio(loop_scope="function")
async def test_headers_that_never_end_are_cut_at_the_keep_alive_timeout(strict: ServeConfig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a slowloris client
    await writer.drain()
    started = time.monotonic()
    assert await closed_within(reader, 5.0)
    assert time.monotonic() - started < 3.0
    writer.close()


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.parametrize("path", ["/v1/detect", "/v2/models/m/infer"])
async def test_a_body_slower_than_the_timeout_is_408(strict: ServeConfig, path: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.http_port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 1000\r\n\r\n{".encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5.0)
    assert status.startswith(b"HTTP/1.1 408"), status
    writer.close()


@pytest.mark.asyncio(loop_scope="function")
async def test_an_idle_grpc_connection_gets_goaway(strict: ServeConfig) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{strict.grpc_port}") as channel:
        await pb_grpc.InferenceStub(channel).GetModelInfo(pb.ModelInfoRequest())
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        deadline = time.monotonic() + 5
        while channel.get_state() == grpc.ChannelConnectivity.READY:  # GOAWAY after 0.5 s without calls
            assert time.monotonic() < deadline, "the idle connection was never closed"
            await asyncio.sleep(0.05)
        assert channel.get_state() == grpc.ChannelConnectivity.IDLE
        await pb_grpc.InferenceStub(channel).GetModelInfo(pb.ModelInfoRequest())  # reconnects


def test_connection_age_and_ping_policing_reach_the_server(tmp_path: Path) -> None:
    from kubeinfer.runtime.commands.serve import parse

    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    config = parse(["--model", str(model), "--grpc-max-connection-age", "300", "--grpc-max-connection-age-grace",
                    "20", "--grpc-min-ping-interval", "15"])
    options = dict(server_options(config))
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 20_000
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 15_000
    assert "grpc.max_connection_idle_ms" not in options  # 0: never
