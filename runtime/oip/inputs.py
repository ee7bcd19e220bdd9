"""The image inputs every task takes through the Open Inference Protocol (each task's outputs are its own: the
``oip`` of its ``ImagesRpc``, in its module).

Inputs (exactly one of them per request):
  ``images``  BYTES [N]          encoded JPEG/PNG/WebP/BMP files (shape [N, 1] is accepted too)
  ``pixels``  UINT8 [N, H, W, 3] raw RGB pixels (or [N, H, W, 1] grey)

Request parameters (optional) are those of the task's native RPC, read by the same parser and the same task code
(``kubeinfer.runtime.parameters``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kubeinfer.runtime.errors import invalid_argument
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.oip.tensors import Tensor, TensorSpec

ParameterValue = bool | int | float | str
IMAGES = "images"
PIXELS = "pixels"
INPUTS = (TensorSpec(IMAGES, "BYTES", (-1,)), TensorSpec(PIXELS, "UINT8", (-1, -1, -1, 3)))


def images_from_inputs(inputs: Sequence[Tensor]) -> list[ImageInput]:
    """The request's images from its one image input, with INVALID_ARGUMENT naming any bad input."""
    known = {spec.name for spec in INPUTS}
    for tensor in inputs:
        if tensor.name not in known:
            raise invalid_argument(f"unknown input {tensor.name!r}; this model takes {IMAGES!r} (BYTES [N], "
                                   f"encoded images) or {PIXELS!r} (UINT8 [N, H, W, 3], RGB pixels)")
    names = [t.name for t in inputs]
    if len(names) != 1:
        raise invalid_argument(f"send exactly one of the inputs {IMAGES!r} or {PIXELS!r}, got {names}")
    tensor = inputs[0]
    return _encoded(tensor) if tensor.name == IMAGES else _pixels(tensor)


def _encoded(tensor: Tensor) -> list[ImageInput]:
    if tensor.datatype != "BYTES":
        raise invalid_argument(f"input {IMAGES!r} must be BYTES (encoded image files), got {tensor.datatype}")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise invalid_argument(f"input {IMAGES!r} must have shape [N] (one encoded image each), got {shape}")
    return [ImageInput(encoded=element) for element in tensor.data.reshape(-1)]


def _pixels(tensor: Tensor) -> list[ImageInput]:
    if tensor.datatype != "UINT8":
        raise invalid_argument(f"input {PIXELS!r} must be UINT8 (RGB pixels), got {tensor.datatype}")
    shape = tensor.shape
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise invalid_argument(f"input {PIXELS!r} must have shape [N, H, W, 3] (or [N, H, W, 1]), got {shape}")
    _, height, width, channels = shape
    return [ImageInput(pixels=image.reshape(-1).data, height=height, width=width, channels=channels)
            for image in tensor.data]  # views of the request's raw contents, copied once, into the batch
