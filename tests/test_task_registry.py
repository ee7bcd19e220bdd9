"""A task is one module that registers itself: a task defined here, in tests/ (``sizes_task``), is served by every
transport once imported (native gRPC, ``POST /v1/sizes``, the Open Inference Protocol over gRPC and HTTP), with its
flag and its request parameter; a runtime serving it answers another task's RPC with FAILED_PRECONDITION (412 on
REST), and a runtime serving another task answers its RPC so.
"""

from __future__ import annotations

import base64
import importlib
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import cv2
import grpc
import numpy as np
import pytest
from operator_support import load_crd
from runtime_support import EmptyDetect, in_process_runtime

from kubeinfer.oip import grpc_service_pb2 as oip_pb
from kubeinfer.oip import grpc_service_pb2_grpc as oip_grpc
from kubeinfer.operator.spec import TASKS
from kubeinfer.runtime.commands.serve import parse
from kubeinfer.runtime.config import ConfigError, ServeConfig
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.tasks import registry
from kubeinfer.runtime.transports.grpc import SERVICE_NAME
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

SHAPES = [(30, 40), (10, 20)]  # (height, width) of the request's two images
MODEL = "sizer"


@pytest.fixture
def sizes() -> Iterator[ModuleType]:
    """The test task's module, imported (which registers it); forgotten afterwards, so other tests never see it."""
    module = importlib.import_module("sizes_task")
    try:
        yield module
    finally:
        registry.unregister(module.NAME)
        del sys.modules["sizes_task"]


def encoded_images() -> list[bytes]:
    images = []
    for height, width in SHAPES:
        ok, data = cv2.imencode(".png", np.full((height, width, 3), 127, np.uint8))
        assert ok
        images.append(data.tobytes())
    return images


def expected(scale: int) -> tuple[list[int], list[int]]:
    return [w * scale for _, w in SHAPES], [h * scale for h, _ in SHAPES]


def test_the_task_is_registered_with_its_rpc_and_flag(sizes: ModuleType) -> None:
    assert "sizes" in registry.task_names() and "sizes" in registry.oip_tasks()
    assert registry.tasks_serving("Sizes") == ["sizes"]
    assert sizes.SCALE in registry.flags()
    assert parse(["--task", "sizes", "--sizes-scale", "4"]).flag(sizes.SCALE) == 4
    with pytest.raises(ConfigError, match="--sizes-scale must be at least 1"):
        parse(["--task", "sizes", "--sizes-scale", "0"])
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(registry.TaskSpec("sizes", sizes.SizesTask, None, ()))


def test_a_forgotten_task_is_no_longer_served(sizes: ModuleType) -> None:
    registry.unregister(sizes.NAME)
    try:
        assert "sizes" not in registry.task_names() and registry.tasks_serving("Sizes") == []
    finally:
        registry.register(sizes.SPEC)


@pytest.mark.asyncio(loop_scope="function")
async def test_every_transport_serves_a_registered_task(sizes: ModuleType, tmp_path: Path) -> None:
    images = encoded_images()
    with ThreadPoolExecutor(2) as pool:
        def task(config: ServeConfig) -> Any:
            return sizes.SizesTask(config, None, RuntimeMetrics(MODEL), pool)

        async with in_process_runtime(tmp_path, "--task", "sizes", "--model-name", MODEL, "--sizes-scale", "3",
                                      task=task) as config:
            grpc_target = f"127.0.0.1:{config.grpc_port}"
            http = f"http://127.0.0.1:{config.http_port}"
            async with grpc.aio.insecure_channel(grpc_target) as channel:
                call = channel.unary_unary(f"/{SERVICE_NAME}/Sizes",
                                           request_serializer=sizes.SizesRequest.SerializeToString,
                                           response_deserializer=sizes.SizesResponse.FromString)
                request_images = [pb.Image(encoded=data) for data in images]
                asked = await call(sizes.SizesRequest(images=request_images, scale=2))
                flagged = await call(sizes.SizesRequest(images=request_images))
                with pytest.raises(grpc.aio.AioRpcError) as other_task:
                    await pb_grpc.InferenceStub(channel).Detect(pb.DetectRequest(images=request_images))

                oip = oip_grpc.GRPCInferenceServiceStub(channel)
                metadata = await oip.ModelMetadata(oip_pb.ModelMetadataRequest(name=MODEL))
                inferred = await oip.ModelInfer(oip_pb.ModelInferRequest(
                    model_name=MODEL, parameters={"scale": oip_pb.InferParameter(int64_param=2)},
                    inputs=[oip_pb.ModelInferRequest.InferInputTensor(
                        name="images", datatype="BYTES", shape=[len(images)],
                        contents=oip_pb.InferTensorContents(bytes_contents=images))]))

            b64 = [base64.b64encode(data).decode() for data in images]
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{http}/v1/sizes", json={
                        "images": [{"b64": e} for e in b64], "parameters": {"scale": 2}}) as response:
                    rest = (response.status, await response.json())
                async with session.post(f"{http}/v1/sizes", json={
                        "images": [{"b64": e} for e in b64], "parameters": {"top_k": 2}}) as response:
                    unknown_parameter = response.status
                async with session.post(f"{http}/v1/detect", json={"images": [{"b64": b64[0]}]}) as response:
                    rest_other_task = response.status
                async with session.post(f"{http}/v2/models/{MODEL}/infer", json={
                        "parameters": {"scale": 2},
                        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)], "data": b64,
                                    "parameters": {"content_type": "base64"}}]}) as response:
                    oip_http = (response.status, await response.json())

    widths, heights = expected(2)
    assert (list(asked.widths), list(asked.heights)) == (widths, heights)
    assert (list(flagged.widths), list(flagged.heights)) == expected(3)
    assert other_task.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Detect needs a runtime serving task detect" in (other_task.value.details() or "")

    assert [(o.name, o.datatype, list(o.shape)) for o in metadata.outputs] == [
        ("widths", "INT32", [-1]), ("heights", "INT32", [-1])]
    assert metadata.platform == "kubeinfer_sizes"
    assert not inferred.raw_output_contents  # typed contents in, typed contents out
    assert {o.name: (list(o.shape), list(o.contents.int_contents)) for o in inferred.outputs} == {
        "widths": ([2], widths), "heights": ([2], heights)}

    assert rest == (200, {"widths": widths, "heights": heights})
    assert unknown_parameter == 400
    assert rest_other_task == 412
    status, body = oip_http
    assert status == 200, body
    assert {o["name"]: o["data"] for o in body["outputs"]} == {"widths": widths, "heights": heights}


@pytest.mark.asyncio(loop_scope="function")
async def test_a_runtime_of_another_task_refuses_the_registered_tasks_rpc(sizes: ModuleType, tmp_path: Path) -> None:
    images = encoded_images()
    async with in_process_runtime(tmp_path, "--model-name", "m", task=EmptyDetect) as config:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{config.grpc_port}") as channel:
            call = channel.unary_unary(f"/{SERVICE_NAME}/Sizes",
                                       request_serializer=sizes.SizesRequest.SerializeToString,
                                       response_deserializer=sizes.SizesResponse.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(sizes.SizesRequest(images=[pb.Image(encoded=data) for data in images]))
        body = {"images": [{"b64": base64.b64encode(images[0]).decode()}]}
        async with (aiohttp.ClientSession() as session,
                    session.post(f"http://127.0.0.1:{config.http_port}/v1/sizes", json=body) as response):
            rest = (response.status, await response.text())
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "Sizes needs a runtime serving task sizes; this one serves 'detect'"
    assert rest[0] == 412 and "Sizes needs a runtime serving task sizes" in rest[1]


def test_the_operator_and_the_crd_name_exactly_the_runtimes_tasks() -> None:
    """The operator keeps its own list (it must not import the runtime); a task added to the registry and not to
    operator/spec.py and the CRD's enum, or the other way round, fails here."""
    served = sorted(registry.task_names())
    enum = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["task"]
    assert sorted(TASKS) == served
    assert sorted(enum["enum"]) == served
