"""The Open Inference Protocol's gRPC binding: ``inference.GRPCInferenceService`` beside kubeinfer.v1.Inference.

Inputs arrive in ``raw_input_contents`` (Triton and KServe clients) or typed ``contents``.
Outputs go back in ``raw_output_contents`` when the request sent raw inputs (what Triton's
client reads) or asked for ``binary_data`` on an output, otherwise in typed ``contents``.
Errors, metrics and logging are the gRPC transport's interceptor's; a failed request inside a
ModelStreamInfer call becomes that request's ``error_message`` and the stream goes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from kubeinfer.oip import grpc_service_pb2 as pb
from kubeinfer.oip import grpc_service_pb2_grpc as pb_grpc
from kubeinfer.runtime.concurrency import ordered_map
from kubeinfer.runtime.dataplane import DataPlane
from kubeinfer.runtime.errors import invalid_argument, public_error
from kubeinfer.runtime.oip import tensors
from kubeinfer.runtime.oip.inputs import ParameterValue
from kubeinfer.runtime.oip.protocol import InferRequest, InferResponse, OipOperations, RequestedOutput
from kubeinfer.runtime.oip.tensors import Tensor

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
STREAM_WINDOW = 64  # requests of one ModelStreamInfer call in flight at once (the rest wait: flow control)

# Datatype -> the InferTensorContents field carrying it.
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def parameter_value(parameter: pb.InferParameter) -> ParameterValue | None:
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def parameters_from_proto(parameters: object) -> dict[str, ParameterValue]:
    values = {name: parameter_value(p) for name, p in parameters.items()}  # type: ignore[attr-defined]
    return {name: value for name, value in values.items() if value is not None}


def input_from_proto(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> Tensor:
    shape = list(tensor.shape)
    if raw is not None:
        return tensors.from_raw(tensor.name, tensor.datatype, shape, raw)
    tensors.check_datatype(tensor.name, tensor.datatype)
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise invalid_argument(f"tensor {tensor.name!r}: {tensor.datatype} data must come in raw_input_contents")
    return tensors.from_values(tensor.name, tensor.datatype, shape, getattr(tensor.contents, field))


def request_from_proto(request: pb.ModelInferRequest) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs; "
                               "send one per input, or none")
    inputs = [input_from_proto(tensor, raw[i] if raw else None) for i, tensor in enumerate(request.inputs)]
    outputs = []
    for output in request.outputs:
        binary = output.parameters["binary_data"].bool_param if "binary_data" in output.parameters else None
        outputs.append(RequestedOutput(output.name, binary))
    return InferRequest(request.model_name, request.model_version, request.id,
                        parameters_from_proto(request.parameters), inputs, outputs)


def wants_raw_outputs(request: pb.ModelInferRequest, parsed: InferRequest) -> bool:
    """Raw when any output asks for binary data, or the inputs came raw and no output refused it."""
    flags = [o.binary for o in parsed.outputs if o.binary is not None]
    return any(flags) or (len(request.raw_input_contents) > 0 and not flags)


def response_to_proto(response: InferResponse, raw: bool) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                    id=response.id)
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            message.raw_output_contents.append(tensors.to_raw(tensor))
        else:
            getattr(output.contents, CONTENTS_FIELD[tensor.datatype]).extend(tensors.to_values(tensor))
    return message


class OipServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Translates messages only: the operations live in ``OipOperations``."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.operations = OipOperations(dataplane)

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.operations.server_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.operations.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        name, version, extensions = self.operations.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        meta = self.operations.model_metadata(request.name, request.version)
        spec = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform,
            inputs=[spec(name=s.name, datatype=s.datatype, shape=s.shape) for s in meta.inputs],
            outputs=[spec(name=s.name, datatype=s.datatype, shape=s.shape) for s in meta.outputs])

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        parsed = request_from_proto(request)
        response = await self.operations.infer(parsed)
        return response_to_proto(response, wants_raw_outputs(request, parsed))

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return await self._infer(request)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently (so they batch together) and are answered in the order they came."""
        answers = ordered_map(aiter(request_iterator), self._stream_one, STREAM_WINDOW)
        async with contextlib.aclosing(answers) as stream:
            async for answer in stream:
                yield answer

    async def _stream_one(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        """One stream request's answer; its failure becomes error_message, the stream goes on."""
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request))
        except Exception as exc:
            error = public_error(exc, f"ModelStreamInfer request {request.id!r}")
        failed = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                       id=request.id)
        failed.parameters["error_code"].string_param = error.code.name
        return pb.ModelStreamInferResponse(error_message=error.message, infer_response=failed)


def add_to_server(server: grpc.aio.Server, dataplane: DataPlane) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(OipServicer(dataplane), server)
