"""The Open Inference Protocol at the wire: typed vs raw contents, versions, the loading state, plain REST/JSON.

These use kubeinfer's own ``inference`` stubs and aiohttp, to reach what the Triton and KServe
clients never send (typed contents, mismatched raw entries, base64 JSON, malformed bodies).
"""

from __future__ import annotations

import base64
import json

import aiohttp
import grpc
import numpy as np
import pytest
from conftest import fresh_images, png_bytes
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from runtime_support import RuntimeProcess

from kubeinfer.oip import grpc_service_pb2 as pb
from kubeinfer.oip import grpc_service_pb2_grpc as pb_grpc
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.oip import tensors

MODEL = "rects"
ENCODED = [png_bytes(s.pixels) for s in fresh_images(seed=1, count=3)]
Input = pb.ModelInferRequest.InferInputTensor


def raw_request(**fields: object) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=MODEL, inputs=[Input(name="images", datatype="BYTES", shape=[len(ENCODED)])],
        raw_input_contents=[tensors.serialize_bytes(ENCODED)], **fields)


def typed_request(**fields: object) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=MODEL, inputs=[Input(name="images", datatype="BYTES", shape=[len(ENCODED)],
                                        contents=pb.InferTensorContents(bytes_contents=ENCODED))], **fields)


def decoded(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Outputs by name, from raw_output_contents or typed contents, whichever the response used."""
    out = {}
    for i, output in enumerate(response.outputs):
        if response.raw_output_contents:
            tensor = tensors.from_raw(output.name, output.datatype, list(output.shape), response.raw_output_contents[i])
        else:
            field = {"FP32": "fp32_contents", "INT32": "int_contents", "BYTES": "bytes_contents"}[output.datatype]
            tensor = tensors.from_values(output.name, output.datatype, list(output.shape),
                                         list(getattr(output.contents, field)))
        out[output.name] = tensor.data
    return out


async def test_typed_contents_in_typed_contents_out_and_raw_when_asked(detect_runtime: RuntimeProcess) -> None:
    async with grpc.aio.insecure_channel(detect_runtime.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        raw = await stub.ModelInfer(raw_request(id="raw"))
        typed = await stub.ModelInfer(typed_request(id="typed", model_version="1"))
        binary = pb.InferParameter(bool_param=True)
        asked = await stub.ModelInfer(typed_request(outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name="counts", parameters={"binary_data": binary})]))
    assert len(raw.raw_output_contents) == 5 and raw.id == "raw" and raw.model_version == "1"
    assert not typed.raw_output_contents and typed.id == "typed"
    assert len(typed.outputs[0].contents.fp32_contents) == int(np.prod(typed.outputs[0].shape))
    want, got = decoded(raw), decoded(typed)
    assert list(got) == ["boxes", "scores", "classes", "labels", "counts"]
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert want["counts"].tolist() == [1, 1, 3]
    assert [o.name for o in asked.outputs] == ["counts"] and len(asked.raw_output_contents) == 1
    assert decoded(asked)["counts"].tolist() == [1, 1, 3]


async def test_typed_uint8_pixels_match_encoded_images(detect_runtime: RuntimeProcess) -> None:
    pixels = np.stack([s.pixels for s in fresh_images(seed=1, count=3)])
    request = pb.ModelInferRequest(model_name=MODEL, inputs=[Input(
        name="pixels", datatype="UINT8", shape=list(pixels.shape),
        contents=pb.InferTensorContents(uint_contents=pixels.reshape(-1).tolist()))])
    async with grpc.aio.insecure_channel(detect_runtime.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        from_pixels = decoded(await stub.ModelInfer(request))
        from_files = decoded(await stub.ModelInfer(raw_request()))
    for name in from_files:
        assert np.array_equal(from_pixels[name], from_files[name]), name


@pytest.mark.parametrize(("request_", "code", "message"), [
    (raw_request(model_version="2"), grpc.StatusCode.NOT_FOUND, "model 'rects' has no version '2'"),
    (pb.ModelInferRequest(model_name=MODEL, inputs=[Input(name="images", datatype="BYTES", shape=[1])] * 2,
                          raw_input_contents=[tensors.serialize_bytes(ENCODED[:1])]),
     grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents holds 1 entries for 2 inputs"),
    (pb.ModelInferRequest(model_name=MODEL, inputs=[Input(name="images", datatype="BYTES", shape=[2])],
                          raw_input_contents=[tensors.serialize_bytes(ENCODED[:1])]),
     grpc.StatusCode.INVALID_ARGUMENT, "tensor 'images': shape [2] needs 2 BYTES elements, the data holds 1"),
    (pb.ModelInferRequest(model_name=MODEL, inputs=[Input(name="pixels", datatype="UINT8", shape=[1, 2, 2, 3],
                                                          contents=pb.InferTensorContents(uint_contents=[1] * 11))]),
     grpc.StatusCode.INVALID_ARGUMENT, "tensor 'pixels': shape [1, 2, 2, 3] needs 12 values, got 11"),
    (pb.ModelInferRequest(model_name=MODEL, inputs=[Input(name="pixels", datatype="FP16", shape=[1])]),
     grpc.StatusCode.INVALID_ARGUMENT, "tensor 'pixels': FP16 data must come in raw_input_contents"),
    (raw_request(parameters={"max_detections": pb.InferParameter(string_param="many")}),
     grpc.StatusCode.INVALID_ARGUMENT, "parameter 'max_detections' must be an integer, got many"),
])
async def test_malformed_grpc_requests(detect_runtime: RuntimeProcess, request_: pb.ModelInferRequest,
                                       code: grpc.StatusCode, message: str) -> None:
    async with grpc.aio.insecure_channel(detect_runtime.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request_)
    assert failure.value.code() == code
    assert message in (failure.value.details() or "")


async def test_rest_json_with_base64_images_and_versioned_routes(detect_runtime: RuntimeProcess) -> None:
    base = detect_runtime.http_url
    images = {"name": "images", "datatype": "BYTES", "shape": [len(ENCODED)],
              "parameters": {"content_type": "base64"}, "data": [base64.b64encode(e).decode() for e in ENCODED]}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v2/models/{MODEL}/versions/1/infer",
                                json={"id": "b64", "inputs": [images], "parameters": {"max_detections": 2}}) as reply:
            assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
            body = await reply.json()
        async with session.get(f"{base}/v2/models/{MODEL}/versions/1/ready") as reply:
            assert reply.status == 200 and (await reply.json()) == {"name": MODEL, "ready": True}
        async with session.get(f"{base}/v2/models/{MODEL}/versions/7") as reply:
            assert reply.status == 404
            assert "has no version '7'" in (await reply.json())["error"]
        async with session.post(f"{base}/v2/models/{MODEL}/infer", data=b"{oops") as reply:
            assert reply.status == 400 and reply.headers["Content-Type"] == "application/json"
            assert "the request's JSON is malformed" in (await reply.json())["error"]
    assert body["id"] == "b64" and body["model_name"] == MODEL
    counts = next(o for o in body["outputs"] if o["name"] == "counts")
    assert counts == {"name": "counts", "datatype": "INT32", "shape": [3], "data": [1, 1, 2]}  # capped at 2


async def test_while_loading_live_but_not_ready_and_inference_unavailable(loading_runtime: ServeConfig) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{loading_runtime.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live is True
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready is False
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="loading"))).ready is False
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="loading"))
        assert [t.name for t in metadata.outputs] == ["boxes", "scores", "classes", "labels", "counts"]
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.ModelInfer(pb.ModelInferRequest(model_name="loading", inputs=[
                Input(name="images", datatype="BYTES", shape=[1])], raw_input_contents=[
                tensors.serialize_bytes(ENCODED[:1])]))
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "still loading" in (failure.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.ModelReady(pb.ModelReadyRequest(name="other"))
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
        await reflection.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        services = {s.name for s in (await reflection.read()).list_services_response.service}
        await reflection.done_writing()
    assert "inference.GRPCInferenceService" in services

    base = f"http://127.0.0.1:{loading_runtime.http_port}"
    async with aiohttp.ClientSession() as session:
        for path, status, body in [("/v2/health/live", 200, {"live": True}),
                                   ("/v2/health/ready", 503, {"ready": False}),
                                   ("/v2/models/loading/ready", 503, {"name": "loading", "ready": False})]:
            async with session.get(base + path) as reply:
                assert (reply.status, await reply.json()) == (status, body), path
        payload = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})
        async with session.post(f"{base}/v2/models/loading/infer", data=payload) as reply:
            assert reply.status == 503 and "still loading" in (await reply.json())["error"]
        async with session.post(f"{base}/v2/models/other/infer", data=payload) as reply:
            assert reply.status == 404 and "unknown model 'other'" in (await reply.json())["error"]
