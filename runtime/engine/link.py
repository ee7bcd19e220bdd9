"""The messages between a frontend and the model process, over one Unix socket per frontend.

Each message is a 4-byte big-endian length and a pickle. Only small things cross it: the model's facts once (and
again when they change: a reloaded gallery), then per request the slot numbers (with, for a detector, original
sizes and box selections) and the request's options, and back per image the engine's output: the selected boxes,
the class probabilities, a gallery match (a few hundred bytes). Pixels travel through the ``ring``; a JPEG left
encoded for the model's device (``--decode-device model``) travels here, as the compressed bytes it arrived as.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass

from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.models.yolo_io import Selection

HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class FrontendHello:
    """A frontend's first message on its link: which frontend it is (its ring)."""

    index: int
    pid: int


@dataclass(frozen=True, slots=True)
class Hello:
    """The model process's answer, once the model is loaded and warmed: the model's facts (None: the runtime serves
    no model, a video task's OpenCV operations alone), the frontend's ring, and the model's GPU as NVML names it
    ("" on the CPU: the frontends export its metrics)."""

    facts: object | None
    ring_name: str
    slots: int
    slot_shape: tuple[int, ...]
    gpu_uuid: str


@dataclass(frozen=True, slots=True)
class FactsChanged:
    """The model's facts changed while serving (a gallery reloaded): the frontend's engine reports the new ones."""

    facts: object


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
    """One request's items; ``options``: what applies to all of them (a gallery search's threshold and top k)."""

    id: int
    items: list[LinkItem]
    options: object | None = None


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
    """Per image the engine's output (boxes in original pixels, class probabilities, a gallery match), or, in
    ``error``, why the request failed."""

    id: int
    results: list[object]
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
