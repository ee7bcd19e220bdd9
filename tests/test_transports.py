"""The real gRPC and HTTP transports in-process, before any model is attached: the loading state."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc


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
