"""The messages between a frontend and the model process, over one Unix socket per frontend.

Each message is a 4-byte big-endian length and a pickle. Only small things cross it: the model's facts once,
then per request the slot numbers (with, for detect, original sizes and box selections), and back per image
the selected boxes or the class probabilities (a few hundred bytes). Pixels travel through the ``ring``; a
JPEG left encoded for the model's device (``--decode-device model``) travels here, as the compressed bytes it
arrived as.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass

import numpy as np

from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.models.image_model import Preprocessing
from kubeinfer.runtime.models.yolo_io import Detection, Selection

HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class DetectorFacts:
    """What a frontend needs of the loaded detector to check parameters, letterbox and label boxes."""

    names: dict[int, str]
    image_size: int
    segmentation: bool
    device: str
    format: str
    engine: str
    gpu_uuid: str  # the model's GPU as NVML names it ("" on the CPU): frontends export its metrics


@dataclass(frozen=True, slots=True)
class ClassifierFacts:
    """What a frontend needs of the loaded classifier to resize images and name its classes."""

    preprocessing: Preprocessing
    output_size: int
    class_names: list[str]  # the model's own (ultralytics classifiers), else empty
    format: str
    gpu_uuid: str


ModelFacts = DetectorFacts | ClassifierFacts


@dataclass(frozen=True, slots=True)
class FrontendHello:
    """A frontend's first message on its link: which frontend it is (its ring)."""

    index: int
    pid: int


@dataclass(frozen=True, slots=True)
class Hello:
    """The model process's answer, once the model is loaded and warmed: the model, and the frontend's ring."""

    facts: ModelFacts
    ring_name: str
    slots: int
    slot_shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LinkItem:
    """One image of a request: in ring slot ``slot`` (letterboxed, or resized for a classifier), or an encoded
    ``jpeg`` for the device; ``selection``: a detector's box selection (None for a classifier)."""

    slot: int | None
    jpeg: bytes | None
    index: int
    original_height: int
    original_width: int
    selection: Selection | None


@dataclass(frozen=True, slots=True)
class BatchRequest:
    id: int
    items: list[LinkItem]


@dataclass(frozen=True, slots=True)
class LinkError:
    """An InferenceError, as data (exceptions do not pickle reliably)."""

    code: str
    message: str
    http_status: int
    retry_after_s: float | None = None

    @classmethod
    def of(cls, error: InferenceError) -> LinkError:
        return cls(error.code.name, error.message, error.http_status, error.retry_after_s)

    def error(self) -> InferenceError:
        return InferenceError(Code[self.code], self.message, http_status=self.http_status,
                              retry_after_s=self.retry_after_s)


@dataclass(frozen=True, slots=True)
class BatchReply:
    """Per image its boxes (original pixels, polygons when asked for) or class probabilities, or its error;
    ``error``: the request's."""

    id: int
    results: list[list[Detection] | np.ndarray | LinkError]
    error: LinkError | None = None


async def send(writer: asyncio.StreamWriter, message: object) -> None:
    """One message, written in one piece (so concurrent senders on one loop never interleave)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(HEADER.pack(len(payload)) + payload)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> object | None:
    """The next message, or None once the other side closed the link."""
    try:
        header = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        if size > MAX_MESSAGE_BYTES:
            raise ConnectionError(f"link message of {size} bytes")
        return pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
