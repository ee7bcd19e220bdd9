"""A task defined outside the runtime's package, as a new task would be: one module that registers itself when it is
imported (``test_task_registry`` imports it). ``sizes`` answers each image's decoded width and height, times the
request's ``scale`` (default ``--sizes-scale``); it needs no model.

Its messages are built here from descriptors (``kubeinfer.test.SizesRequest``, ``SizesResponse``), as protoc would
have made them: the request's ``images`` are ``kubeinfer.v1.Image``, as an ``ImagesRpc`` needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from kubeinfer.runtime import codec
from kubeinfer.runtime.config import Flag, at_least
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.oip.tensors import Tensor, TensorSpec
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.base import Task, require_images
from kubeinfer.runtime.tasks.registry import ImagesRpc, OipOutputs, TaskSpec, register
from kubeinfer.v1 import inference_pb2 as pb

NAME = "sizes"
PROTO_FILE = "kubeinfer/test/sizes.proto"
SCALE = Flag("sizes-scale", int, 1, "sizes: the default factor of every answer", "sizes", at_least(1, "sizes-scale"))


def _messages() -> tuple[type[Message], type[Message]]:
    """SizesRequest {repeated kubeinfer.v1.Image images = 1; optional int32 scale = 2;} and SizesResponse
    {repeated int32 widths = 1; repeated int32 heights = 2;}, added once to the default pool."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(PROTO_FILE)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto(name=PROTO_FILE, package="kubeinfer.test", syntax="proto3",
                                                   dependency=[pb.DESCRIPTOR.name])
        F = descriptor_pb2.FieldDescriptorProto
        request = proto.message_type.add(name="SizesRequest")
        request.field.add(name="images", number=1, label=F.LABEL_REPEATED, type=F.TYPE_MESSAGE,
                          type_name=".kubeinfer.v1.Image")
        request.field.add(name="scale", number=2, label=F.LABEL_OPTIONAL, type=F.TYPE_INT32, oneof_index=0,
                          proto3_optional=True)
        request.oneof_decl.add(name="_scale")
        response = proto.message_type.add(name="SizesResponse")
        response.field.add(name="widths", number=1, label=F.LABEL_REPEATED, type=F.TYPE_INT32)
        response.field.add(name="heights", number=2, label=F.LABEL_REPEATED, type=F.TYPE_INT32)
        pool.Add(proto)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("kubeinfer.test.SizesRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("kubeinfer.test.SizesResponse")))


SizesRequest, SizesResponse = _messages()


class SizesTask(Task):
    """Decodes each image (with the runtime's pixel guard, in the pool) and answers its size, scaled."""

    name = NAME

    def info(self, base: ModelInfo) -> ModelInfo:
        return base

    async def sizes(self, images: Sequence[ImageInput], params: Parameters) -> list[tuple[int, int]]:
        require_images(images)
        scale = params.integer("scale")
        scale = self.config.flag(SCALE) if scale is None else scale
        decoded = await self.map_in_pool(self.decode, images, range(len(images)))
        return [(pixels.shape[1] * scale, pixels.shape[0] * scale) for pixels in decoded]


def response_to_proto(results: list[tuple[int, int]]) -> Message:
    return SizesResponse(widths=[w for w, _ in results], heights=[h for _, h in results])


def tensors(results: list[tuple[int, int]]) -> list[Tensor]:
    return [Tensor("widths", "INT32", np.array([w for w, _ in results], np.int32)),
            Tensor("heights", "INT32", np.array([h for _, h in results], np.int32))]


SIZES = ImagesRpc(
    "Sizes", SizesRequest, SizesResponse, ("scale",),
    lambda request: Parameters(codec.present_fields(request, "scale")),
    lambda task, images, params: task.sizes(images, params),
    response_to_proto, rest="sizes",
    oip=OipOutputs((TensorSpec("widths", "INT32", (-1,)), TensorSpec("heights", "INT32", (-1,))), tensors))

SPEC = register(TaskSpec(NAME, SizesTask, None, (SIZES,), oip=SIZES, flags=(SCALE,), model_optional=True))
