"""The real gRPC and HTTP transports in-process, before any model is attached: the loading state."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from runtime_support import free_port

from kubeinfer.runtime.config import ServeConfig, add_arguments
from kubeinfer.runtime.dataplane import DataPlane
from kubeinfer.runtime.grpc_server import GrpcTransport
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.rest_server import HttpTransport
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc


def config_for(model: Path) -> ServeConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--task", "detect", "--model", str(model), "--grpc-port", str(free_port()),
                              "--http-port", str(free_port()), "--model-name", "loading"])
    return ServeConfig.from_args(args)


@pytest_asyncio.fixture(loop_scope="function")
async def loading_runtime(tmp_path: Path) -> AsyncIterator[ServeConfig]:
    model = tmp_path / "model.pt"
    model.write_bytes(b"never loaded in this test")
    config = config_for(model)
    metrics = RuntimeMetrics(config.model_name)
    dataplane = DataPlane(config, metrics)
    grpc_transport = GrpcTransport(config, dataplane, metrics)
    http_transport = HttpTransport(config, dataplane, metrics)
    await grpc_transport.start()
    await http_transport.start()
    yield config
    await grpc_transport.drain(0)
    await http_transport.stop()


async def test_while_loading_health_is_not_serving_and_requests_are_unavailable(
        loading_runtime: ServeConfig) -> None:
    target = f"127.0.0.1:{loading_runtime.grpc_port}"
    async with grpc.aio.insecure_channel(target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await pb_grpc.InferenceStub(channel).Detect(pb.DetectRequest(images=[pb.Image(encoded=b"x")]))
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "still loading" in (failure.value.details() or "")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{loading_runtime.http_port}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["status"] == "loading"
        async with session.get(f"http://127.0.0.1:{loading_runtime.http_port}/healthz") as response:
            assert response.status == 200


async def test_reflection_lists_the_services(loading_runtime: ServeConfig) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{loading_runtime.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
    names = {service.name for service in response.list_services_response.service}
    assert {"kubeinfer.v1.Inference", "grpc.health.v1.Health"} <= names
