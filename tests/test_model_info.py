"""GetModelInfo and the Open Inference Protocol's model metadata name the model file and its format, never the
server's paths; thresholds appear only for the tasks that have them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from runtime_support import in_process_runtime

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.tasks.base import TOP_K
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc


class OnnxClassify:
    name = "classify"

    def __init__(self, config: ServeConfig) -> None:
        self.config = config

    def info(self, base: ModelInfo) -> ModelInfo:
        return replace(base, model_format="onnx", labels=("a", "b"), top_k=self.config.flag(TOP_K))


@pytest_asyncio.fixture(loop_scope="function")
async def runtime(tmp_path: Path) -> AsyncIterator[ServeConfig]:
    async with in_process_runtime(tmp_path, "--task", "classify", "--model-name", "m", task=OnnxClassify) as config:
        yield config


@pytest.mark.asyncio(loop_scope="function")
async def test_the_model_is_named_by_its_file_and_format_only(runtime: ServeConfig, tmp_path: Path) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        info = await pb_grpc.InferenceStub(channel).GetModelInfo(pb.ModelInfoRequest())
    assert (info.model_path, info.model_format) == ("model.pt", "onnx")
    assert not info.HasField("thresholds")  # classification has none
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{runtime.http_port}/v2/models/m") as reply:
        meta = await reply.json()
    assert meta["parameters"] == {"model_file": "model.pt", "model_format": "onnx"}
    assert str(tmp_path) not in str(info) + str(meta)
