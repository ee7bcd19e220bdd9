"""Every task as tensors: the image inputs all tasks take, each task's outputs and parameters, the data-plane call.

Inputs (exactly one of them per request):
  ``images``  BYTES [N]          encoded JPEG/PNG/WebP/BMP files (shape [N, 1] is accepted too)
  ``pixels``  UINT8 [N, H, W, 3] raw RGB pixels (or [N, H, W, 1] grey)

Outputs, per task, padded to the request's largest count K where images differ:
  detect     boxes FP32 [N,K,4] (x1, y1, x2, y2 in original pixels), scores FP32 [N,K],
             classes INT32 [N,K] (-1 pads), labels BYTES [N,K] ("" pads), counts INT32 [N]
  classify   labels BYTES [N,K], scores FP32 [N,K], classes INT32 [N,K]   (top-k, best first)
  recognize  label BYTES [N], similarity FP32 [N], known BOOL [N],
             candidate_labels BYTES [N,K], candidate_similarities FP32 [N,K]

Request parameters (optional) are the native RPCs' overrides, read by the same parser and builders
(``kubeinfer.runtime.parameters``): detect ``confidence``, ``iou``, ``max_detections``, ``classes``
("0,2"), ``return_masks``; classify ``top_k``; recognize ``threshold``, ``top_k``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from kubeinfer.runtime.errors import invalid_argument
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.oip.tensors import Tensor, bytes_tensor
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.classify import top_k_from_parameters

if TYPE_CHECKING:
    from kubeinfer.runtime.dataplane import DataPlane

ParameterValue = bool | int | float | str
IMAGES = "images"
PIXELS = "pixels"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor as ModelMetadata documents it; -1 is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


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


class TaskMapping(ABC):
    """One task's outputs and how a request becomes a data-plane call and the results become tensors."""

    outputs: ClassVar[tuple[TensorSpec, ...]]

    @abstractmethod
    async def run(self, dataplane: DataPlane, images: list[ImageInput], params: Parameters) -> list[Tensor]:
        """Every output tensor, in ``outputs`` order."""


def _padded(rows: Sequence[Sequence[Any]], width: int, fill: Any, dtype: Any) -> np.ndarray:
    array = np.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        array[i, :len(row)] = row
    return array


def _labels(name: str, rows: Sequence[Sequence[str]], width: int) -> Tensor:
    elements = [(row[j] if j < len(row) else "").encode() for row in rows for j in range(width)]
    return bytes_tensor(name, elements, (len(rows), width))


class DetectMapping(TaskMapping):
    outputs = (TensorSpec("boxes", "FP32", (-1, -1, 4)), TensorSpec("scores", "FP32", (-1, -1)),
               TensorSpec("classes", "INT32", (-1, -1)), TensorSpec("labels", "BYTES", (-1, -1)),
               TensorSpec("counts", "INT32", (-1,)))

    async def run(self, dataplane: DataPlane, images: list[ImageInput], params: Parameters) -> list[Tensor]:
        results = await dataplane.detect(images, params)
        detections = [r.detections for r in results]
        k = max((len(d) for d in detections), default=0)
        boxes = np.zeros((len(results), k, 4), np.float32)
        for i, found in enumerate(detections):
            if found:
                boxes[i, :len(found)] = [(d.x1, d.y1, d.x2, d.y2) for d in found]
        return [
            Tensor("boxes", "FP32", boxes),
            Tensor("scores", "FP32", _padded([[d.score for d in found] for found in detections], k, 0.0, np.float32)),
            Tensor("classes", "INT32", _padded([[d.class_id for d in found] for found in detections], k, -1, np.int32)),
            _labels("labels", [[d.label for d in found] for found in detections], k),
            Tensor("counts", "INT32", np.array([len(found) for found in detections], np.int32)),
        ]


class ClassifyMapping(TaskMapping):
    outputs = (TensorSpec("labels", "BYTES", (-1, -1)), TensorSpec("scores", "FP32", (-1, -1)),
               TensorSpec("classes", "INT32", (-1, -1)))

    async def run(self, dataplane: DataPlane, images: list[ImageInput], params: Parameters) -> list[Tensor]:
        results = await dataplane.classify(images, top_k_from_parameters(params))
        tops = [r.top for r in results]
        k = max((len(top) for top in tops), default=0)
        return [
            _labels("labels", [[c.label for c in top] for top in tops], k),
            Tensor("scores", "FP32", _padded([[c.score for c in top] for top in tops], k, 0.0, np.float32)),
            Tensor("classes", "INT32", _padded([[c.class_id for c in top] for top in tops], k, -1, np.int32)),
        ]


class RecognizeMapping(TaskMapping):
    outputs = (TensorSpec("label", "BYTES", (-1,)), TensorSpec("similarity", "FP32", (-1,)),
               TensorSpec("known", "BOOL", (-1,)), TensorSpec("candidate_labels", "BYTES", (-1, -1)),
               TensorSpec("candidate_similarities", "FP32", (-1, -1)))

    async def run(self, dataplane: DataPlane, images: list[ImageInput], params: Parameters) -> list[Tensor]:
        results = await dataplane.recognize(images, params)
        k = max((len(r.candidates) for r in results), default=0)
        return [
            bytes_tensor("label", [r.label.encode() for r in results], (len(results),)),
            Tensor("similarity", "FP32", np.array([r.similarity for r in results], np.float32)),
            Tensor("known", "BOOL", np.array([r.known for r in results], np.bool_)),
            _labels("candidate_labels", [[c.label for c in r.candidates] for r in results], k),
            Tensor("candidate_similarities", "FP32",
                   _padded([[c.similarity for c in r.candidates] for r in results], k, 0.0, np.float32)),
        ]


# config.task -> its mapping; the video task has no tensor form.
MAPPINGS: dict[str, TaskMapping] = {
    "detect": DetectMapping(),
    "classify": ClassifyMapping(),
    "stream-classify": ClassifyMapping(),
    "recognize": RecognizeMapping(),
}
