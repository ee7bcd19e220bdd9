"""Client side of the video task: pipelines from text or tuples, request streams, responses, JPEG decoding.

Operations are written ``name`` or ``name:param=value:param=value`` and chained with
commas, e.g. ``blur:ksize=5,edges:low=50:high=150,detect:confidence=0.4``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np

from kubeinfer.clients.images import ImageLike, to_proto_image
from kubeinfer.clients.types import ProcessedFrame
from kubeinfer.v1 import inference_pb2 as pb

# An operation: "edges:low=50:high=150", or ("edges", {"low": 50, "high": 150}).
OpLike = str | tuple[str, Mapping[str, float]]
T = TypeVar("T")


def parse_op(text: str) -> tuple[str, dict[str, float]]:
    """``"edges:low=50:high=150"`` -> ``("edges", {"low": 50.0, "high": 150.0})``; ValueError when malformed."""
    name, *pairs = text.strip().split(":")
    if not name:
        raise ValueError(f"operation {text!r}: missing the operation name")
    params: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"operation {text!r}: parameter {pair!r} is not NAME=NUMBER")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"operation {text!r}: {key}={value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"operation {text!r}: {key} must be finite")
        if key in params:
            raise ValueError(f"operation {text!r}: parameter {key} given twice")
        params[key] = number
    return name, params


def parse_ops(text: str) -> list[tuple[str, dict[str, float]]]:
    """Comma-separated operations (see ``parse_op``); an empty string is the empty pipeline."""
    return [parse_op(part) for part in text.split(",") if part.strip()]


def to_pipeline(ops: Iterable[OpLike], jpeg_quality: int | None = None) -> pb.VideoPipeline:
    operations = []
    for op in ops:
        name, params = parse_op(op) if isinstance(op, str) else (op[0], dict(op[1]))
        operations.append(pb.VideoOperation(name=name, params={k: float(v) for k, v in params.items()}))
    return pb.VideoPipeline(operations=operations, jpeg_quality=jpeg_quality)


def video_requests(frames: Iterable[ImageLike], pipeline: pb.VideoPipeline, stream_id: str = "",
                   first_sequence: int = 0) -> Iterator[pb.VideoRequest]:
    """The request stream: the pipeline rides on the first frame; frames are numbered from ``first_sequence``."""
    sent_pipeline = False
    for sequence, image in enumerate(frames, start=first_sequence):
        request = pb.VideoRequest(stream_id=stream_id, sequence=sequence, image=to_proto_image(image))
        if not sent_pipeline:
            request.pipeline.CopyFrom(pipeline)
            sent_pipeline = True
        yield request
    if not sent_pipeline:
        yield pb.VideoRequest(stream_id=stream_id, pipeline=pipeline)


def responses(call: Any, convert: Callable[[Any], T]) -> Iterator[T]:
    """Converted responses of a streaming call; closing the iterator early cancels the call on the server."""
    try:
        for message in call:
            yield convert(message)
    finally:
        call.cancel()  # a no-op once the call has finished


def frame_pixels(frame: ProcessedFrame) -> np.ndarray:
    """The processed frame as an RGB uint8 array (grey frames come back as RGB too)."""
    from PIL import Image

    if frame.error is not None:
        raise ValueError(f"frame {frame.sequence} failed: {frame.error.code}: {frame.error.message}")
    with Image.open(io.BytesIO(frame.jpeg)) as image:
        return np.asarray(image.convert("RGB"))

