"""The Open Inference Protocol codec without a server: tensors, image inputs, parameters, REST bodies."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable

import numpy as np
import pytest

from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.oip import tensors
from kubeinfer.runtime.oip.inputs import images_from_inputs
from kubeinfer.runtime.oip.protocol import InferRequest, InferResponse, RequestedOutput
from kubeinfer.runtime.transports.oip_http import parse_request, response_body


def invalid(match: str) -> pytest.RaisesExc:
    return pytest.raises(InferenceError, match=match)


def test_bytes_round_trip_in_the_length_prefixed_layout() -> None:
    elements = [b"", b"\x00\xff", b"hello" * 100]
    raw = tensors.serialize_bytes(elements)
    assert raw[:4] == struct.pack("<I", 0) and raw[4:8] == struct.pack("<I", 2)
    tensor = tensors.from_raw("x", "BYTES", [3], raw)
    assert tensor.data.dtype == object and list(tensor.data) == elements
    assert tensors.to_raw(tensor) == raw


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64"])
def test_numeric_raw_and_values_round_trip(datatype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 2 == 1) if datatype == "BOOL" else \
        np.arange(24).reshape(2, 3, 4).astype(tensors.DTYPES[datatype])
    raw = tensors.to_raw(tensors.Tensor("t", datatype, array))
    assert raw == array.astype(tensors.DTYPES[datatype]).tobytes()
    assert np.array_equal(tensors.from_raw("t", datatype, [2, 3, 4], raw).data, array)
    values = tensors.to_values(tensors.Tensor("t", datatype, array))
    assert len(values) == 24
    assert np.array_equal(tensors.from_values("t", datatype, [2, 3, 4], values).data, array)
    nested = array.tolist()  # REST allows nested row-major data too
    assert np.array_equal(tensors.from_values("t", datatype, [2, 3, 4], nested).data, array)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: tensors.from_raw("px", "UINT8", [1, 2, 2, 3], b"\x00" * 11), "'px'.*needs 12 bytes, got 11"),
    (lambda: tensors.from_raw("im", "BYTES", [2], tensors.serialize_bytes([b"a"])), "'im'.*2 BYTES.*holds 1"),
    (lambda: tensors.from_raw("im", "BYTES", [1], b"\x05\x00\x00\x00ab"), "'im'.*claims 5 bytes, only 2"),
    (lambda: tensors.from_raw("im", "BYTES", [1], b"\x05\x00"), "'im'.*4-byte length"),
    (lambda: tensors.from_raw("t", "COMPLEX", [1], b""), "'t'.*unknown datatype 'COMPLEX'"),
    (lambda: tensors.from_raw("t", "FP32", [-1], b""), r"'t'.*shape \[-1\]"),
    (lambda: tensors.from_values("t", "UINT8", [2], [1, 300]), "'t'.*1..300 do not fit UINT8"),
    (lambda: tensors.from_values("t", "UINT8", [2], [1.5, 2]), "'t'.*UINT8 values must be integers"),
    (lambda: tensors.from_values("t", "FP32", [1], ["a"]), "'t'.*FP32 values must be numbers"),
    (lambda: tensors.from_values("t", "BOOL", [1], [1]), "'t'.*true or false"),
    (lambda: tensors.from_values("t", "INT32", [3], [1, 2]), r"'t'.*needs 3 values, got 2"),
    (lambda: tensors.from_values("t", "INT32", [2, 2], [[1, 2], [3]]), "'t'.*not a regular array"),
])
def test_malformed_tensors_are_invalid_naming_the_tensor(call: Callable[[], object], message: str) -> None:
    with invalid(message) as failure:
        call()
    assert failure.value.code is Code.INVALID_ARGUMENT


def test_images_from_encoded_and_pixel_inputs() -> None:
    encoded = tensors.bytes_tensor("images", [b"png-1", b"png-2"], (2,))
    assert [i.encoded for i in images_from_inputs([encoded])] == [b"png-1", b"png-2"]
    column = tensors.bytes_tensor("images", [b"png-1"], (1, 1))  # Triton users often send [N, 1]
    assert [i.encoded for i in images_from_inputs([column])] == [b"png-1"]
    pixels = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    images = images_from_inputs([tensors.Tensor("pixels", "UINT8", pixels)])
    assert [(i.height, i.width, i.channels) for i in images] == [(4, 5, 3)] * 2
    assert images[1].pixels == pixels[1].tobytes()
    raw = pixels.tobytes()  # as raw_input_contents arrive
    views = images_from_inputs([tensors.from_raw("pixels", "UINT8", [2, 4, 5, 3], raw)])
    assert bytes(views[1].pixels) == pixels[1].tobytes()
    assert all(np.shares_memory(np.frombuffer(i.pixels, np.uint8), np.frombuffer(raw, np.uint8)) for i in views)


@pytest.mark.parametrize(("inputs", "message"), [
    ([], r"exactly one of the inputs 'images' or 'pixels', got \[\]"),
    ([tensors.Tensor("pixels", "FP32", np.zeros((1, 2, 2, 3), np.float32))], "'pixels' must be UINT8.*got FP32"),
    ([tensors.Tensor("pixels", "UINT8", np.zeros((2, 2, 3), np.uint8))], r"'pixels' must have shape.*\[2, 2, 3\]"),
    ([tensors.Tensor("pixels", "UINT8", np.zeros((1, 2, 2, 4), np.uint8))], r"'pixels'.*got \[1, 2, 2, 4\]"),
    ([tensors.Tensor("images", "UINT8", np.zeros(3, np.uint8))], "'images' must be BYTES.*got UINT8"),
    ([tensors.bytes_tensor("images", [b"a", b"b"], (1, 2))], r"'images' must have shape \[N\].*\[1, 2\]"),
    ([tensors.bytes_tensor("image", [b"a"], (1,))], "unknown input 'image'"),
    ([tensors.bytes_tensor("images", [b"a"], (1,)), tensors.Tensor("pixels", "UINT8", np.zeros((1, 1, 1, 3)))],
     "exactly one"),
])
def test_bad_image_inputs_name_the_input(inputs: list[tensors.Tensor], message: str) -> None:
    with invalid(message):
        images_from_inputs(inputs)


def body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), str(len(head))


def test_rest_request_mixes_binary_and_json_inputs_and_reads_output_choices() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    payload, length = body({
        "id": "req-1", "parameters": {"binary_data_output": True, "confidence": 0.4},
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3],
                    "parameters": {"binary_data_size": 12}},
                   {"name": "images", "datatype": "BYTES", "shape": [2], "data": ["text", "bW9yZQ=="]},
                   {"name": "b64", "datatype": "BYTES", "shape": [1], "data": ["AAH/"],
                    "parameters": {"content_type": "base64"}},
                   {"name": "nested", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]}],
        "outputs": [{"name": "boxes"}, {"name": "labels", "parameters": {"binary_data": False}}]},
        pixels.tobytes())
    request = parse_request("rects", "", payload, length)
    assert (request.model_name, request.id, request.parameters["confidence"]) == ("rects", "req-1", 0.4)
    assert np.array_equal(request.inputs[0].data, pixels)
    assert list(request.inputs[1].data) == [b"text", b"bW9yZQ=="]
    assert list(request.inputs[2].data) == [b"\x00\x01\xff"]
    assert request.inputs[3].data.tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert request.outputs == [RequestedOutput("boxes", None), RequestedOutput("labels", False)]


@pytest.mark.parametrize(("payload", "length", "message"), [
    (b"{not json", None, "JSON is malformed"),
    (b"[]", None, "the request must be a JSON object"),
    (b"{}", None, "needs an 'inputs' list"),
    (b'{"inputs": [{"name": "pixels"}]}', None, "input 0 needs a string 'name', a string 'datatype'"),
    (b'{"inputs": [{"name": "p", "datatype": "UINT8", "shape": [1]}]}', None, "input 'p' has neither 'data'"),
    (b'{"inputs": []}', "99", "Inference-Header-Content-Length 99 is outside the 14-byte body"),
    (b'{"inputs": []}', "x", "Inference-Header-Content-Length must be an integer"),
    (b'{"inputs": []}xyz', "14", "3 bytes of binary data follow the JSON that no input claims"),
    (b'{"inputs": [{"name": "p", "datatype": "UINT8", "shape": [4], "parameters": {"binary_data_size": 4}}]}ab',
     "101", "input 'p': binary_data_size 4 does not fit the 2 bytes"),
    (b'{"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": ["%%"], '
     b'"parameters": {"content_type": "base64"}}]}', None, "'i': data is not valid base64"),
    (b'{"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": [1]}]}', None,
     "'i': BYTES data must be strings"),
    (b'{"inputs": [], "parameters": {"x": [1]}}', None, "request parameter 'x' must be a boolean, number or string"),
])
def test_malformed_rest_requests_are_invalid(payload: bytes, length: str | None, message: str) -> None:
    with invalid(message):
        parse_request("m", "", payload, length)


def test_rest_response_is_json_unless_binary_is_asked_for_per_output_or_per_request() -> None:
    outputs = [tensors.Tensor("scores", "FP32", np.array([[0.5, 0.25]], np.float32)),
               tensors.bytes_tensor("labels", [b"a", b"bc"], (1, 2))]
    response = InferResponse("m", "1", "id-7", outputs)
    plain, length = response_body(InferRequest("m"), response)
    assert length is None
    assert json.loads(plain) == {"model_name": "m", "model_version": "1", "id": "id-7", "outputs": [
        {"name": "scores", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.25]},
        {"name": "labels", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "bc"]}]}

    request = InferRequest("m", parameters={"binary_data_output": True}, outputs=[RequestedOutput("labels", False)])
    mixed, length = response_body(request, response)
    assert length is not None
    head = json.loads(mixed[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert head["outputs"][1]["data"] == ["a", "bc"]
    assert np.frombuffer(mixed[length:], np.float32).tolist() == [0.5, 0.25]


def test_rest_base64_helper_matches_the_standard() -> None:
    payload, _ = body({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                   "data": [base64.b64encode(b"\x89PNG").decode()],
                                   "parameters": {"content_type": "base64"}}]})
    assert list(parse_request("m", "", payload, None).inputs[0].data) == [b"\x89PNG"]
