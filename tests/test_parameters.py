"""One parameter parser for every transport: the same input gives the same answer or the same error everywhere.

The table drives the detection overrides through native gRPC, native REST (JSON and multipart),
and the Open Inference Protocol over REST and gRPC, against the real transports in-process with a
detect task that echoes the parameters it resolved (the real ``DetectionRequests.selection`` range checks).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator, Sequence
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
from kubeinfer.runtime.detection import DetectionRequests, DetectResult
from kubeinfer.runtime.engine.detector import DetectorFacts
from kubeinfer.runtime.errors import InferenceError
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.models.yolo_io import Detection
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc


def invalid(call: Any) -> str:
    with pytest.raises(InferenceError) as failure:
        call()
    assert failure.value.code.name == "INVALID_ARGUMENT"
    return failure.value.message


def test_the_parser_rules() -> None:
    params = Parameters({"confidence": "0.5", "iou": 0.3, "max_detections": 7.0, "classes": "0,2", "top_k": "3"})
    assert (params.number("confidence"), params.number("iou"), params.number("missing")) == (0.5, 0.3, None)
    assert (params.integer("max_detections"), params.integer("top_k")) == (7, 3)
    assert params.integers("classes") == (0, 2)
    assert Parameters({"c": 1}).integers("c") == Parameters({"c": [1]}).integers("c") == (1,)
    assert Parameters({"c": "[1, 2]"}).integers("c") == Parameters({"c": [1.0, "2"]}).integers("c") == (1, 2)
    assert Parameters({"b": "yes"}).boolean("b") is True and Parameters({"b": False}).boolean("b") is False
    assert invalid(lambda: Parameters({"x": "high"}).number("x")) == "parameter 'x' must be a number, got high"
    assert invalid(lambda: Parameters({"x": 2.5}).integer("x")) == "parameter 'x' must be an integer, got 2.5"
    assert invalid(lambda: Parameters({"x": "2.5"}).integer("x")) == "parameter 'x' must be an integer, got 2.5"
    assert invalid(lambda: Parameters({"x": True}).number("x")) == "parameter 'x' must be a number, got true"
    assert invalid(lambda: Parameters({"x": math.inf}).number("x")) == "parameter 'x' must be finite, got Infinity"
    assert invalid(lambda: Parameters({"x": 10**400}).integer("x")).startswith("parameter 'x' must be finite")
    assert invalid(lambda: Parameters({"x": [1]}).number("x")) == "parameter 'x' must be a number, got [1]"
    assert invalid(lambda: Parameters({"c": "a,b"}).integers("c")) == "parameter 'c' must be a list of integers, got a"
    assert invalid(lambda: Parameters({"a": 1}).check_known(["b"], "/v1/x")).startswith("unknown parameter(s) ['a']")


# -- the same table through every transport

NAMES = {0: "a", 1: "b", 2: "c"}


class EchoDetect:
    """A detect task whose one detection's label is the parameters it resolved (the real range checks)."""

    name = "detect"

    def __init__(self, config: ServeConfig) -> None:
        facts = DetectorFacts(NAMES, 640, segmentation=False, device="cpu", format="onnx", backend="onnx",
                              decodes_jpegs=False)
        self.requests = DetectionRequests(config, facts)

    def info(self, base: ModelInfo) -> ModelInfo:
        return base

    async def detect(self, images: Sequence[ImageInput], params: Parameters) -> list[DetectResult]:
        p = self.requests.selection(params)
        label = f"confidence={p.confidence:g} iou={p.iou:g} max={p.max_detections} classes={list(p.classes)}"
        return [DetectResult([Detection(0, 0, 1, 1, 0.5, 0, label)], [label], 1, 1) for _ in images]


@pytest_asyncio.fixture(loop_scope="function")
async def echo_runtime(tmp_path: Path) -> AsyncIterator[ServeConfig]:
    async with in_process_runtime(tmp_path, "--model-name", "echo", task=EchoDetect) as config:
        yield config


DEFAULT = "confidence=0.25 iou=0.45 max=300 classes=[]"
# (parameters as a client would send them, the answer: a label, or the error message)
CASES: list[tuple[dict[str, Any], str]] = [
    ({}, DEFAULT),
    ({"confidence": 0.5}, "confidence=0.5 iou=0.45 max=300 classes=[]"),
    ({"confidence": 0.5, "iou": 0.25, "max_detections": 3, "classes": [0, 2]},
     "confidence=0.5 iou=0.25 max=3 classes=[0, 2]"),
    ({"max_detections": 3.0}, "confidence=0.25 iou=0.45 max=3 classes=[]"),
    ({"classes": [1]}, "confidence=0.25 iou=0.45 max=300 classes=[1]"),
    ({"confidence": 1.5}, "confidence must be in [0.0, 1.0], got 1.5"),
    ({"iou": -0.125}, "iou must be in [0.0, 1.0], got -0.125"),
    ({"max_detections": 0}, "max_detections must be in [1, 1000], got 0"),
    ({"max_detections": 2.5}, "parameter 'max_detections' must be an integer, got 2.5"),
    ({"max_detections": "many"}, "parameter 'max_detections' must be an integer, got many"),
    ({"confidence": "high"}, "parameter 'confidence' must be a number, got high"),
    ({"confidence": "NaN"}, "parameter 'confidence' must be finite, got NaN"),
    ({"confidence": True}, "parameter 'confidence' must be a number, got true"),
    ({"classes": [7]}, "classes [7] are not in the model's classes 0..2"),
    ({"classes": "0,x"}, "parameter 'classes' must be a list of integers, got x"),
    ({"return_masks": True}, "return_masks needs a segmentation model; this detector only predicts boxes"),
    ({"return_masks": "maybe"}, "parameter 'return_masks' must be true or false, got maybe"),
]


def text(value: Any) -> str:
    """A value as a form field or a string parameter carries it (lists as "0,2")."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def grpc_typed(params: dict[str, Any]) -> pb.DetectParameters | None:
    """The native gRPC message, when its typed fields can carry these values (else None: not sent there)."""
    message = pb.DetectParameters()
    for name, value in params.items():
        if name in ("confidence", "iou") and isinstance(value, float | int) and not isinstance(value, bool):
            setattr(message, name, value)
        elif (name == "max_detections" and isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            message.max_detections = value
        elif name == "classes" and isinstance(value, list):
            message.classes.extend(value)
        elif name == "return_masks" and isinstance(value, bool):
            message.return_masks = value
        else:
            return None
    return message


def oip_parameter(value: Any) -> oip_pb.InferParameter:
    if isinstance(value, bool):
        return oip_pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return oip_pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return oip_pb.InferParameter(double_param=value)
    return oip_pb.InferParameter(string_param=text(value))


async def answers(config: ServeConfig, params: dict[str, Any]) -> dict[str, str]:
    """Each transport's answer: the label of the one detection, or the error message."""
    got: dict[str, str] = {}
    image = base64.b64encode(b"x").decode()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{config.grpc_port}") as channel:
        typed = grpc_typed(params)
        if typed is not None:
            try:
                reply = await pb_grpc.InferenceStub(channel).Detect(
                    pb.DetectRequest(images=[pb.Image(encoded=b"x")], parameters=typed))
                got["grpc"] = reply.results[0].detections[0].label
            except grpc.aio.AioRpcError as exc:
                got["grpc"] = f"{exc.code().name}: {exc.details()}"
        request = oip_pb.ModelInferRequest(model_name="echo", inputs=[oip_pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="BYTES", shape=[1], contents=oip_pb.InferTensorContents(bytes_contents=[b"x"]))])
        for name, value in params.items():
            request.parameters[name].CopyFrom(oip_parameter(value))
        try:
            reply = await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            labels = next(o for o in reply.outputs if o.name == "labels")
            got["oip-grpc"] = labels.contents.bytes_contents[0].decode()
        except grpc.aio.AioRpcError as exc:
            got["oip-grpc"] = f"{exc.code().name}: {exc.details()}"
    base = f"http://127.0.0.1:{config.http_port}"
    async with aiohttp.ClientSession() as session:
        async def rest(name: str, method: str, path: str, **kwargs: Any) -> None:
            async with session.request(method, base + path, **kwargs) as reply:
                body = await reply.json()
                if reply.status == 200:
                    got[name] = (body["results"][0]["detections"][0]["label"] if "results" in body
                                 else next(o for o in body["outputs"] if o["name"] == "labels")["data"][0])
                else:
                    assert reply.status == 400, body
                    got[name] = f"{body['code']}: {body['error']}"

        await rest("rest-json", "POST", "/v1/detect", json={"images": [{"b64": image}], "parameters": params})
        form = aiohttp.FormData()
        form.add_field("images", b"x", filename="x.jpg")
        for name, value in params.items():
            form.add_field(name, text(value))
        await rest("rest-multipart", "POST", "/v1/detect", data=form)
        oip_params = {name: value if isinstance(value, bool | int | float | str) else text(value)
                      for name, value in params.items()}
        await rest("oip-rest", "POST", "/v2/models/echo/infer", json={
            "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
            "parameters": oip_params})
    return got


@pytest.mark.asyncio(loop_scope="function")
async def test_every_transport_gives_the_same_answer_to_the_same_parameters(echo_runtime: ServeConfig) -> None:
    for params, want in CASES:
        expected = want if want.startswith("confidence=") else f"INVALID_ARGUMENT: {want}"
        got = await answers(echo_runtime, params)
        assert len(got) >= 4, got
        assert got == dict.fromkeys(got, expected), params
