"""HTTP transport (aiohttp, on the same event loop as gRPC): health, readiness, metrics, the REST API and /v2.

One middleware, ``observe``, owns what every route shares: the request id (the client's
``X-Request-Id`` or a fresh one, echoed in the answer), the in-flight gauge, the outcome in the
metrics, and the mapping of an exception to its answer: ``{"error": message, "code": status
name}`` with the HTTP status of the error's kind (``errors.public_error``; a ``Retry-After`` header
when overloaded). Handlers parse, call the data plane, encode, and raise.

The native REST API, ``POST /v1/<task>``, takes either body:

* ``multipart/form-data``: each part with a file name (or named ``image``, ``images``,
  ``file`` or ``files``) is an encoded image, in order; every other part is a parameter
  (``top_k=3``), or a part named ``parameters`` holds a JSON object of them::

      curl -F images=@a.jpg -F images=@b.png -F top_k=3 http://127.0.0.1:8080/v1/classify

* ``application/json``: ``{"images": [{"b64": "<base64 of the file>"}], "parameters": {"top_k": 3}}``
  (a ``data:image/...;base64,`` prefix is accepted).

A 200 carries the gRPC response message as JSON with the proto field names and every field
present, e.g. ``{"results": [{"top": [{"label": "red", "class_id": 0, "score": 0.99}]}]}`` for
``/v1/classify``. Statuses: see the table in ``kubeinfer.runtime.errors``; 415 for another content type.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web
from google.protobuf.json_format import MessageToDict

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.dataplane import ByteBudget, DataPlane
from kubeinfer.runtime.errors import (
    Cancelled,
    Code,
    InferenceError,
    StartupError,
    invalid_argument,
    public_error,
    too_large,
)
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import NATIVE_REST, RuntimeMetrics
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks import registry
from kubeinfer.runtime.tasks.registry import ImagesRpc
from kubeinfer.runtime.transports import oip_http
from kubeinfer.runtime.transports.observe import Call, Route

log = logging.getLogger(__name__)
IMAGE_FIELDS = {"image", "images", "file", "files"}
CHUNK_BYTES = 256 * 1024
JSON_TYPE = "application/json"  # exactly: KServe's client reads error bodies only for this content type
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES = web.AppKey("kubeinfer_routes", dict)  # aiohttp route -> how it is counted
METRICS = web.AppKey("kubeinfer_metrics", RuntimeMetrics)
LIMIT = web.AppKey("kubeinfer_max_message_bytes", int)


class Requests:
    """Every request whose handler runs (uploads included), so a drain can wait for them; not only counted ones."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


REQUESTS = web.AppKey("kubeinfer_requests", Requests)
BUDGET = web.AppKey("kubeinfer_request_bytes", ByteBudget)


def add_route(app: web.Application, method: str, path: str, handler: Handler, observed: Route | None) -> None:
    """Register ``handler``; with ``observed``, the middleware counts its calls under that protocol and RPC."""
    route = app.router.add_route(method, path, handler)
    if observed is not None:
        app[ROUTES][route] = observed


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status,
                        headers={"Content-Type": JSON_TYPE, **(headers or {})})


def error_response(error: InferenceError, request_id: str) -> web.Response:
    headers = {"X-Request-Id": request_id}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    return json_response({"error": error.message, "code": error.code.name}, error.http_status, headers)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route: request id, metrics, and any exception mapped to its status (the one place that does)."""
    app = request.app
    route = app[ROUTES].get(request.match_info.route)
    call = Call(app[METRICS], route, request.headers.get("X-Request-Id")) if route is not None else None
    request_id = call.request_id if call is not None else "-"
    requests = app[REQUESTS]
    requests.enter()
    held = 0
    try:
        try:
            if call is not None and request.body_exists:
                size = request.content_length if request.content_length is not None else app[LIMIT]
                held = app[BUDGET].acquire(min(size, app[LIMIT]))
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            error = too_large(app[LIMIT])
        except ConnectionResetError:  # the client went away mid-request (aiohttp's ClientConnectionResetError)
            error = Cancelled()
        except web.HTTPException:  # aiohttp's own answers (404 of an unknown path, 405...)
            if call is not None:
                call.finish("OK")
            raise
        except asyncio.CancelledError:
            if call is not None:
                call.finish("CANCELLED")
            raise
        except Exception as exc:
            error = public_error(exc, f"{request.method} {request.path}")
        else:
            if call is not None:
                call.finish("OK")
                response.headers["X-Request-Id"] = request_id
            if requests.draining:
                response.force_close()  # no further request on this connection
            return response
        if call is not None:
            call.finish(error.code.name)
        answer = error_response(error, request_id)
        if requests.draining:
            answer.force_close()
        return answer
    finally:
        if held:
            app[BUDGET].release(held)
        requests.leave()
        if call is not None:
            call.close()


@contextlib.asynccontextmanager
async def body_deadline(seconds: float) -> AsyncIterator[None]:
    """A request body that takes longer than ``seconds`` to arrive is answered 408 (--http-body-timeout)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise InferenceError(Code.DEADLINE_EXCEEDED, f"the request body did not arrive within {seconds:g}s "
                                                     "(--http-body-timeout)", http_status=408) from None


def build_app(config: ServeConfig, dataplane: DataPlane, metrics: RuntimeMetrics) -> web.Application:
    app = web.Application(client_max_size=config.max_message_bytes, middlewares=[observe])
    app[ROUTES] = {}
    app[METRICS] = metrics
    app[LIMIT] = config.max_message_bytes
    app[REQUESTS] = Requests()
    app[BUDGET] = dataplane.request_bytes

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        if dataplane.ready:
            return json_response({"status": "ready", "model": config.model_name})
        reason = "draining" if dataplane.draining else "loading"
        return json_response({"status": reason, "model": config.model_name}, status=503)

    async def metrics_page(_: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    add_route(app, "GET", "/healthz", healthz, None)
    add_route(app, "GET", "/readyz", readyz, None)
    add_route(app, "GET", "/metrics", metrics_page, None)
    add_v1_routes(app, config, dataplane)
    oip_http.add_routes(app, dataplane, add_route, body_deadline)
    return app


# -- the native REST API

def add_v1_routes(app: web.Application, config: ServeConfig, dataplane: DataPlane) -> None:
    """``POST /v1/<rest>`` for every registered images RPC that has a REST route (``tasks.registry``)."""
    for rpc in registry.rpcs():
        if isinstance(rpc, ImagesRpc) and rpc.rest is not None:
            add_v1_route(app, config, dataplane, rpc)


def add_v1_route(app: web.Application, config: ServeConfig, dataplane: DataPlane, rpc: ImagesRpc[Any]) -> None:
    """``POST /v1/<rpc.rest>``: parse images and the RPC's parameters (others are refused), run it, answer its
    response message as JSON.

    The request is counted in metrics, and checked by the data plane, as the RPC; a runtime of another task
    answers 412 before the body is read.
    """
    path = f"/v1/{rpc.rest}"

    async def endpoint(request: web.Request) -> web.Response:
        dataplane.served(rpc.name)
        async with body_deadline(config.http_body_timeout):
            images, values = await _read_body(request, config.max_message_bytes)
        params = Parameters(values)
        params.check_known(rpc.parameters, path)
        message = rpc.response_to_proto(await dataplane.infer_images(rpc, images, params))
        return json_response(MessageToDict(message, preserving_proto_field_name=True,
                                           always_print_fields_with_no_presence=True))

    add_route(app, "POST", path, endpoint, Route(NATIVE_REST, rpc.name))


async def _read_body(request: web.Request, limit: int) -> tuple[list[ImageInput], dict[str, Any]]:
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    if request.content_type == "multipart/form-data":
        return await _read_multipart(request, limit)
    if request.content_type == "application/json":
        return await _read_json(request, limit)
    raise InferenceError(Code.INVALID_ARGUMENT,
                         f"send multipart/form-data or application/json, not {request.content_type!r}", http_status=415)


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
                    raise too_large(limit)
                data.extend(chunk)
            if part.filename is not None or part.name in IMAGE_FIELDS:
                images.append(ImageInput(encoded=bytes(data)))
            elif part.name == "parameters":
                values.update(_json_object(bytes(data), "the parameters part"))
            elif part.name:
                values[part.name] = data.decode("utf-8", errors="replace")
            else:
                raise invalid_argument("a multipart part has no name")
    except InferenceError:
        raise
    except (ValueError, AssertionError, RuntimeError) as exc:  # aiohttp's malformed-multipart errors
        raise invalid_argument(f"malformed multipart body: {exc}") from None
    return images, values


async def _read_json(request: web.Request, limit: int) -> tuple[list[ImageInput], dict[str, Any]]:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None
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
    except RecursionError:
        raise invalid_argument(f"{what} is nested too deeply") from None
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


class HttpTransport:
    def __init__(self, config: ServeConfig, dataplane: DataPlane, metrics: RuntimeMetrics) -> None:
        self.config = config
        self.app = build_app(config, dataplane, metrics)
        # the drain below waits the grace period itself; aiohttp's own wait then only cancels what is left
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1,
                                    keepalive_timeout=config.http_keepalive_timeout)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.http_port,
                           reuse_port=self.config.frontends > 1)  # frontends share the port
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.config.host}:{self.config.http_port} for HTTP: {exc}") from exc

    async def drain(self, grace: float) -> None:
        """Stop listening; requests in progress (uploads still receiving their body included) get ``grace``
        seconds, answered with ``Connection: close``; then the rest are cancelled and every connection closed.

        (aiohttp's own shutdown stops reading from every connection first, which would cut uploads short.)
        """
        requests = self.app[REQUESTS]
        requests.draining = True
        for site in list(self.runner.sites):
            await site.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(requests.idle.wait(), grace)
        await self.runner.cleanup()

    async def stop(self) -> None:
        await self.runner.cleanup()
