"""REST API on the HTTP port: ``POST /v1/<task>`` with images; JSON results in the same shapes as gRPC.

Requests take either body:

* ``multipart/form-data``: each part with a file name (or named ``image``, ``images``,
  ``file`` or ``files``) is an encoded image, in order; every other part is a parameter
  (``top_k=3``), or a part named ``parameters`` holds a JSON object of them::

      curl -F images=@a.jpg -F images=@b.png -F top_k=3 http://127.0.0.1:8080/v1/classify

* ``application/json``: ``{"images": [{"b64": "<base64 of the file>"}], "parameters": {"top_k": 3}}``
  (a ``data:image/...;base64,`` prefix is accepted).

A 200 carries the gRPC response message as JSON with the proto field names and
every field present, e.g. ``{"results": [{"top": [{"label": "red", "class_id": 0,
"score": 0.99}]}]}`` for ``/v1/classify``. Errors carry ``{"error": message,
"code": status name}``: 400 bad image or parameter, 412 the runtime serves another
task, 413 a body over ``--max-message-bytes``, 415 another content type, 429 the
inference queue is full, 503 the model is still loading, 500 a server fault.

Tasks add their route with ``add_v1_route(app, name, handler, ...)`` once
``add_rest_api`` has run (``build_app`` does both).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from kubeinfer.runtime import codec
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.dataplane import DataPlane
from kubeinfer.runtime.errors import HTTP_STATUS, Code, InferenceError, invalid_argument
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.tasks.base import Task
from kubeinfer.runtime.tasks.classify import ClassifyTask
from kubeinfer.runtime.tasks.detect import DetectOverrides, DetectTask
from kubeinfer.runtime.tasks.recognize import RecognizeOverrides, RecognizeTask

log = logging.getLogger(__name__)
IMAGE_FIELDS = {"image", "images", "file", "files"}
CHUNK_BYTES = 256 * 1024


class Parameters:
    """Request parameters from JSON (typed values) or multipart (text); each getter checks the type, tasks the range."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    def integer(self, name: str) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise invalid_argument(f"parameter {name} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise invalid_argument(f"parameter {name} must be an integer, got {value!r}") from None

    def number(self, name: str) -> float | None:
        value = self.values.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise invalid_argument(f"parameter {name} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise invalid_argument(f"parameter {name} must be a number, got {value!r}") from None

    def boolean(self, name: str) -> bool | None:
        value = self.values.get(name)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise invalid_argument(f"parameter {name} must be true or false, got {value!r}")

    def integers(self, name: str) -> tuple[int, ...]:
        """A JSON list, or in multipart text ``1,2`` or ``[1, 2]``."""
        value = self.values.get(name)
        if value is None:
            return ()
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
            except ValueError:
                raise invalid_argument(f"parameter {name} must be a list of integers, got {text!r}") from None
        if not isinstance(value, list) or any(v is None for v in value):
            raise invalid_argument(f"parameter {name} must be a list of integers, got {value!r}")
        return tuple(int(Parameters({name: v}).integer(name) or 0) for v in value)


RestHandler = Callable[[DataPlane, list[ImageInput], Parameters], Awaitable[Message]]


@dataclass(frozen=True)
class _Context:
    config: ServeConfig
    dataplane: DataPlane
    metrics: RuntimeMetrics


_CONTEXT = web.AppKey("kubeinfer_rest_context", _Context)


class _TooLarge(Exception):
    """The body is over --max-message-bytes (413)."""


class _UnsupportedMedia(Exception):
    """Neither multipart nor JSON (415)."""


def add_rest_api(app: web.Application, config: ServeConfig, dataplane: DataPlane, metrics: RuntimeMetrics) -> None:
    """Make ``add_v1_route`` usable on ``app`` and add the built-in routes: classify, detect, recognize."""
    app[_CONTEXT] = _Context(config, dataplane, metrics)
    add_v1_route(app, "classify", _classify, parameters=("top_k",), requires=ClassifyTask)
    add_v1_route(app, "detect", _detect, requires=DetectTask,
                 parameters=("confidence", "iou", "max_detections", "classes", "return_masks"))
    add_v1_route(app, "recognize", _recognize, parameters=("threshold", "top_k"), requires=RecognizeTask)


def add_v1_route(app: web.Application, name: str, handler: RestHandler, *, parameters: Iterable[str] = (),
                 requires: type[Task] | None = None, rpc: str | None = None) -> None:
    """``POST /v1/<name>``: parse images and ``parameters`` (others are refused), call ``handler``, answer JSON.

    ``requires`` (the task class serving it) makes a runtime of another task answer 412 before the body is
    read; ``rpc`` names the request in metrics (default: the gRPC RPC name, ``name`` capitalised).
    """
    if _CONTEXT not in app:
        raise RuntimeError("call add_rest_api(app, ...) before add_v1_route")
    context = app[_CONTEXT]
    accepted = tuple(parameters)
    rpc_name = rpc or name[:1].upper() + name[1:]
    path = f"/v1/{name}"

    async def endpoint(request: web.Request) -> web.Response:
        started = time.monotonic()
        code = "OK"
        in_flight = context.metrics.in_flight.labels(context.metrics.model, "rest")
        in_flight.inc()
        try:
            dataplane = context.dataplane
            if dataplane.task is None:
                raise InferenceError(Code.UNAVAILABLE, "the model is still loading")
            if requires is not None:
                dataplane.served(requires, rpc_name)
            images, values = await _read_body(request, context.config.max_message_bytes)
            unknown = sorted(set(values) - set(accepted))
            if unknown:
                raise invalid_argument(f"unknown parameter(s) {unknown} for {path}; accepted: {list(accepted)}")
            message = await handler(dataplane, images, Parameters(values))
            return web.json_response(MessageToDict(message, preserving_proto_field_name=True,
                                                   always_print_fields_with_no_presence=True))
        except _TooLarge:
            code = Code.RESOURCE_EXHAUSTED.name
            return _error(413, code, f"request body exceeds {context.config.max_message_bytes} bytes "
                                     "(--max-message-bytes)")
        except _UnsupportedMedia as exc:
            code = Code.INVALID_ARGUMENT.name
            return _error(415, code, str(exc))
        except InferenceError as exc:
            code = exc.code.name
            # a full queue is overload, not an oversized request: 429 tells the client to retry
            status = 429 if exc.code is Code.RESOURCE_EXHAUSTED else HTTP_STATUS.get(exc.code, 500)
            return _error(status, code, exc.message)
        except Exception as exc:
            code = Code.INTERNAL.name
            log.exception("%s failed", path)
            return _error(500, code, f"internal error: {type(exc).__name__}: {exc}")
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            in_flight.dec()
            context.metrics.observe_request("rest", rpc_name, code, time.monotonic() - started)

    app.router.add_post(path, endpoint)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


async def _read_body(request: web.Request, limit: int) -> tuple[list[ImageInput], dict[str, Any]]:
    if request.content_length is not None and request.content_length > limit:
        raise _TooLarge
    if request.content_type == "multipart/form-data":
        return await _read_multipart(request, limit)
    if request.content_type == "application/json":
        return await _read_json(request)
    raise _UnsupportedMedia(f"send multipart/form-data or application/json, not {request.content_type!r}")


async def _read_multipart(request: web.Request, limit: int) -> tuple[list[ImageInput], dict[str, Any]]:
    images: list[ImageInput] = []
    values: dict[str, Any] = {}
    total = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise invalid_argument("nested multipart bodies are not supported")
            data = bytearray()
            while chunk := await part.read_chunk(CHUNK_BYTES):
                total += len(chunk)
                if total > limit:
                    raise _TooLarge
                data.extend(chunk)
            if part.filename is not None or part.name in IMAGE_FIELDS:
                images.append(ImageInput(encoded=bytes(data)))
            elif part.name == "parameters":
                values.update(_json_object(bytes(data), "the parameters part"))
            elif part.name:
                values[part.name] = data.decode("utf-8", errors="replace")
            else:
                raise invalid_argument("a multipart part has no name")
    except (InferenceError, _TooLarge):
        raise
    except (ValueError, AssertionError, RuntimeError) as exc:  # aiohttp's malformed-multipart errors
        raise invalid_argument(f"malformed multipart body: {exc}") from None
    return images, values


async def _read_json(request: web.Request) -> tuple[list[ImageInput], dict[str, Any]]:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _TooLarge from None
    document = _json_object(body, "the body")
    unknown = sorted(set(document) - {"images", "parameters"})
    if unknown:
        raise invalid_argument(f"unknown field(s) {unknown} in the body; expected images and parameters")
    entries = document.get("images", [])
    if not isinstance(entries, list):
        raise invalid_argument("images must be a list of {\"b64\": ...} objects")
    images = [ImageInput(encoded=_b64_image(entry, i)) for i, entry in enumerate(entries)]
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise invalid_argument("parameters must be a JSON object")
    return images, parameters


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise invalid_argument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid_argument(f"{what} must be a JSON object")
    return value


def _b64_image(entry: Any, index: int) -> bytes:
    if not isinstance(entry, dict) or not isinstance(entry.get("b64"), str):
        raise invalid_argument(f"images[{index}] must be an object with a base64 string \"b64\"")
    text: str = entry["b64"]
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"images[{index}].b64 is not valid base64") from None


async def _classify(dataplane: DataPlane, images: list[ImageInput], params: Parameters) -> Message:
    return codec.classify_response_to_proto(await dataplane.classify(images, params.integer("top_k")))


async def _detect(dataplane: DataPlane, images: list[ImageInput], params: Parameters) -> Message:
    overrides = DetectOverrides(confidence=params.number("confidence"), iou=params.number("iou"),
                                max_detections=params.integer("max_detections"), classes=params.integers("classes"),
                                return_masks=bool(params.boolean("return_masks")))
    return codec.detect_response_to_proto(await dataplane.detect(images, overrides))


async def _recognize(dataplane: DataPlane, images: list[ImageInput], params: Parameters) -> Message:
    overrides = RecognizeOverrides(threshold=params.number("threshold"), top_k=params.integer("top_k"))
    return codec.recognize_response_to_proto(await dataplane.recognize(images, overrides))
