"""One error mapping for every transport: the same failure gives the same status kind on native gRPC and REST
and on both Open Inference Protocol bindings; a server fault shows the client a request id, never its text."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from runtime_support import in_process_runtime

from kubeinfer.oip import grpc_service_pb2 as oip_pb
from kubeinfer.oip import grpc_service_pb2_grpc as oip_grpc
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.detection import DetectResult
from kubeinfer.runtime.errors import Overloaded
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

SECRET = "secret-path-/etc/kubeinfer/model.pt"


class FailingDetect:
    """Fails by the image it is sent: b"crash" raises a plain exception, b"busy" is an overload."""

    name = "detect"

    def __init__(self, config: ServeConfig) -> None:
        self.config = config

    def info(self, base: ModelInfo) -> ModelInfo:
        return base

    async def detect(self, images: Sequence[ImageInput], params: Parameters) -> list[DetectResult]:
        if images[0].encoded == b"busy":
            raise Overloaded("inference queue is full; retry later", retry_after_s=2.0)
        raise RuntimeError(SECRET)


@pytest_asyncio.fixture(loop_scope="function")
async def failing(tmp_path: Path) -> AsyncIterator[ServeConfig]:
    async with in_process_runtime(tmp_path, "--model-name", "failing", "--max-message-bytes", "2048",
                                  task=FailingDetect) as config:
        yield config


async def outcomes(config: ServeConfig, image: bytes) -> dict[str, tuple[str, str, Mapping[str, str]]]:
    """(status, message, hints) of each transport for one image."""
    got: dict[str, tuple[str, str, Mapping[str, str]]] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{config.grpc_port}") as channel:
        calls: dict[str, Any] = {
            "grpc": pb_grpc.InferenceStub(channel).Detect(pb.DetectRequest(images=[pb.Image(encoded=image)])),
            "oip-grpc": oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(oip_pb.ModelInferRequest(
                model_name="failing", inputs=[oip_pb.ModelInferRequest.InferInputTensor(
                    name="images", datatype="BYTES", shape=[1],
                    contents=oip_pb.InferTensorContents(bytes_contents=[image]))])),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await call
            trailers = {k: v for k, v in (failure.value.trailing_metadata() or ()) if isinstance(v, str)}
            got[name] = (failure.value.code().name, failure.value.details() or "", trailers)
    base = f"http://127.0.0.1:{config.http_port}"
    text = base64.b64encode(image).decode()
    async with aiohttp.ClientSession() as session:
        for name, path, body in [
            ("rest", "/v1/detect", {"images": [{"b64": text}]}),
            ("oip-rest", "/v2/models/failing/infer",
             {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [text]}],
              "parameters": {}}),
        ]:
            if name == "oip-rest":
                body["inputs"][0]["parameters"] = {"content_type": "base64"}
            async with session.post(base + path, json=body) as reply:
                answer = await reply.json()
                assert reply.headers["Content-Type"] == "application/json"
                got[name] = (str(reply.status), answer["error"], reply.headers.copy())  # case-insensitive
    return got


@pytest.mark.asyncio(loop_scope="function")
async def test_a_server_fault_shows_a_request_id_and_never_the_exception(failing: ServeConfig,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        got = await outcomes(failing, b"crash")
    assert {name: status for name, (status, _, _) in got.items()} == {
        "grpc": "INTERNAL", "oip-grpc": "INTERNAL", "rest": "500", "oip-rest": "500"}
    for _, message, _ in got.values():
        assert SECRET not in message
        request_id = re.fullmatch(r"internal error \(request id ([0-9a-f]{16})\)", message)
        assert request_id is not None, message
        logged = [r for r in caplog.records if request_id.group(1) in r.getMessage()]
        assert logged and logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])
    assert got["rest"][2]["X-Request-Id"] in got["rest"][1]


@pytest.mark.asyncio(loop_scope="function")
async def test_overload_is_429_or_resource_exhausted_with_a_retry_hint(failing: ServeConfig) -> None:
    got = await outcomes(failing, b"busy")
    assert {name: status for name, (status, _, _) in got.items()} == {
        "grpc": "RESOURCE_EXHAUSTED", "oip-grpc": "RESOURCE_EXHAUSTED", "rest": "429", "oip-rest": "429"}
    assert {message for _, message, _ in got.values()} == {"inference queue is full; retry later"}
    assert got["grpc"][2]["grpc-retry-pushback-ms"] == got["oip-grpc"][2]["grpc-retry-pushback-ms"] == "2000"
    assert got["rest"][2]["Retry-After"] == got["oip-rest"][2]["Retry-After"] == "2"


@pytest.mark.asyncio(loop_scope="function")
async def test_too_large_is_413_or_resource_exhausted_without_a_retry_hint(failing: ServeConfig) -> None:
    got = await outcomes(failing, b"x" * 4096)  # --max-message-bytes 2048
    assert {name: status for name, (status, _, _) in got.items()} == {
        "grpc": "RESOURCE_EXHAUSTED", "oip-grpc": "RESOURCE_EXHAUSTED", "rest": "413", "oip-rest": "413"}
    assert "grpc-retry-pushback-ms" not in got["grpc"][2] and "Retry-After" not in got["rest"][2]
    assert "exceeds 2048 bytes (--max-message-bytes)" in got["rest"][1] == got["oip-rest"][1]
