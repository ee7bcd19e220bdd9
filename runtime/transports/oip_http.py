"""The Open Inference Protocol's REST binding: the /v2 routes on the runtime's HTTP port.

Bodies are JSON tensors, or JSON followed by binary tensor data (the binary-data extension
``tritonclient.http`` and KServe use): the ``Inference-Header-Content-Length`` header gives the
JSON's length, and each binary input says its ``binary_data_size``. An output comes back
binary when its ``binary_data`` parameter, or else the request's ``binary_data_output``, is true.
Errors are the HTTP transport's middleware's: ``{"error": message, "code": name}`` with the status
of the failure's kind (404 unknown model, 400 bad tensor, 413 too large, 429 overloaded...).
BYTES inputs in JSON are strings; ``"parameters": {"content_type": "base64"}`` sends them
base64-encoded, so encoded images can travel without the binary extension.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web

from kubeinfer.runtime.dataplane import DataPlane
from kubeinfer.runtime.errors import invalid_argument
from kubeinfer.runtime.oip import tensors
from kubeinfer.runtime.oip.inputs import ParameterValue
from kubeinfer.runtime.oip.protocol import InferRequest, InferResponse, ModelMetadata, OipOperations, RequestedOutput
from kubeinfer.runtime.oip.tensors import Tensor, TensorSpec
from kubeinfer.runtime.transports.observe import OIP, Route

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"  # exactly: KServe's client reads error bodies only for this content type
Handler = Callable[[web.Request], Awaitable[web.Response]]
AddRoute = Callable[[web.Application, str, str, Handler, Route | None], None]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, headers={"Content-Type": JSON_TYPE})


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid_argument(f"{what} must be a JSON object")
    return value


def _parameters(value: Any, what: str) -> dict[str, ParameterValue]:
    parameters = _object(value if value is not None else {}, f"{what} parameters")
    for name, item in parameters.items():
        if not isinstance(item, bool | int | float | str):
            raise invalid_argument(f"{what} parameter {name!r} must be a boolean, number or string")
    return parameters


def _flatten(values: Any) -> list[Any]:
    if not isinstance(values, list):
        return [values]
    flat: list[Any] = []
    for value in values:
        flat.extend(_flatten(value))
    return flat


def _json_bytes(name: str, values: list[Any], base64_encoded: bool) -> list[bytes]:
    if not all(isinstance(v, str) for v in values):
        raise invalid_argument(f"tensor {name!r}: BYTES data must be strings")
    if not base64_encoded:
        return [v.encode() for v in values]
    try:
        return [base64.b64decode(v, validate=True) for v in values]
    except (binascii.Error, ValueError):
        raise invalid_argument(f"tensor {name!r}: data is not valid base64 (content_type is base64)") from None


def parse_inputs(body: dict[str, Any], binary: memoryview) -> list[Tensor]:
    """The request's input tensors, binary ones taken in order from ``binary``, which they must use up."""
    entries = body.get("inputs")
    if not isinstance(entries, list):
        raise invalid_argument("the request needs an 'inputs' list")
    inputs: list[Tensor] = []
    offset = 0
    for position, entry in enumerate(entries):
        entry = _object(entry, f"input {position}")
        name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
            raise invalid_argument(f"input {position} needs a string 'name', a string 'datatype' and a 'shape' list")
        parameters = _parameters(entry.get("parameters"), f"input {name!r}")
        size = parameters.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise invalid_argument(f"input {name!r}: binary_data_size {size!r} does not fit the "
                                       f"{len(binary) - offset} bytes of binary data left")
            inputs.append(tensors.from_raw(name, datatype, shape, bytes(binary[offset:offset + size])))
            offset += size
            continue
        if "data" not in entry:
            raise invalid_argument(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
        values = _flatten(entry["data"])
        if datatype == "BYTES":
            values = _json_bytes(name, values, parameters.get("content_type") in ("base64", "b64"))
        inputs.append(tensors.from_values(name, datatype, shape, values))
    if offset != len(binary):
        raise invalid_argument(f"{len(binary) - offset} bytes of binary data follow the JSON that no input claims")
    return inputs


def parse_request(model_name: str, version: str, payload: bytes, header_length: str | None) -> InferRequest:
    if header_length is None:
        json_length = len(payload)
    else:
        try:
            json_length = int(header_length)
        except ValueError:
            raise invalid_argument(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= json_length <= len(payload):
            raise invalid_argument(f"{HEADER_LENGTH} {json_length} is outside the {len(payload)}-byte body")
    try:
        body = json.loads(payload[:json_length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_argument(f"the request's JSON is malformed: {exc}") from None
    except RecursionError:
        raise invalid_argument("the request's JSON is nested too deeply") from None
    body = _object(body, "the request")
    request_id = body.get("id", "")
    if not isinstance(request_id, str):
        raise invalid_argument("the request 'id' must be a string")
    outputs = []
    for position, entry in enumerate(body.get("outputs") or []):
        entry = _object(entry, f"output {position}")
        if not isinstance(entry.get("name"), str):
            raise invalid_argument(f"output {position} needs a string 'name'")
        binary = _parameters(entry.get("parameters"), f"output {entry['name']!r}").get("binary_data")
        outputs.append(RequestedOutput(entry["name"], None if binary is None else bool(binary)))
    inputs = parse_inputs(body, memoryview(payload)[json_length:])
    parameters = _parameters(body.get("parameters"), "request")
    return InferRequest(model_name, version, request_id, parameters, inputs, outputs)


def response_body(request: InferRequest, response: InferResponse) -> tuple[bytes, int | None]:
    """The response's bytes and, when binary tensors follow the JSON, the JSON's length."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    asked = {o.name: o.binary for o in request.outputs}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        binary = asked.get(tensor.name)
        if binary if binary is not None else default_binary:
            blob = tensors.to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif tensor.datatype == "BYTES":
            entry["data"] = [v.decode("utf-8", errors="replace") for v in tensors.to_values(tensor)]
        else:
            entry["data"] = tensors.to_values(tensor)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version,
                            "outputs": outputs}
    if response.id:
        body["id"] = response.id
    head = json.dumps(body).encode()
    return (b"".join([head, *blobs]), len(head)) if blobs else (head, None)


def _metadata_body(meta: ModelMetadata) -> dict[str, Any]:
    def spec(s: TensorSpec) -> dict[str, Any]:
        return {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}

    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": [spec(s) for s in meta.inputs], "outputs": [spec(s) for s in meta.outputs],
            "parameters": dict(meta.parameters)}


def add_routes(app: web.Application, dataplane: DataPlane, add_route: AddRoute,
               body_deadline: Callable[[float], AbstractAsyncContextManager[None]]) -> None:
    """Register the /v2 routes on ``app`` with the HTTP transport's ``add_route`` (counted as "http:<RPC>")."""
    operations = OipOperations(dataplane)

    async def live(_: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        is_ready = operations.server_ready()
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    async def server_metadata(_: web.Request) -> web.Response:
        name, version, extensions = operations.server_metadata()
        return json_response({"name": name, "version": version, "extensions": list(extensions)})

    async def model_metadata(request: web.Request) -> web.Response:
        meta = operations.model_metadata(request.match_info["name"], request.match_info.get("version", ""))
        return json_response(_metadata_body(meta))

    async def model_ready(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        is_ready = operations.model_ready(name, request.match_info.get("version", ""))
        return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)

    async def infer(request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")
        operations.check_model(name, version)  # 404 before reading a large body
        async with body_deadline(dataplane.config.http_body_timeout):
            payload = await request.read()  # over --max-message-bytes: the middleware answers 413
        parsed = parse_request(name, version, payload, request.headers.get(HEADER_LENGTH))
        body, json_length = response_body(parsed, await operations.infer(parsed))
        if json_length is None:
            return web.Response(body=body, headers={"Content-Type": JSON_TYPE})
        return web.Response(body=body, headers={"Content-Type": "application/octet-stream",
                                                HEADER_LENGTH: str(json_length)})

    def counted(rpc: str) -> Route:
        return Route(OIP, "http:" + rpc)

    add_route(app, "GET", "/v2/health/live", live, counted("ServerLive"))
    add_route(app, "GET", "/v2/health/ready", ready, counted("ServerReady"))
    add_route(app, "GET", "/v2", server_metadata, counted("ServerMetadata"))
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        add_route(app, "GET", prefix, model_metadata, counted("ModelMetadata"))
        add_route(app, "GET", prefix + "/ready", model_ready, counted("ModelReady"))
        add_route(app, "POST", prefix + "/infer", infer, counted("ModelInfer"))
