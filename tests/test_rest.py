"""The REST API (POST /v1/classify, /v1/detect) and RestClient against real runtimes."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pytest
from classify_support import COLOURS, classify_runtime, noisy, solid
from conftest import fresh_images, png_bytes
from google.protobuf.json_format import MessageToDict
from PIL import Image
from runtime_support import BackgroundTraffic, RuntimeProcess

from kubeinfer.clients import Client, RestClient, RestError
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.v1 import inference_pb2 as pb


@pytest.fixture(scope="module")
def runtime(runtime_factory: Callable[..., RuntimeProcess],
            tmp_path_factory: pytest.TempPathFactory) -> RuntimeProcess:
    return classify_runtime(runtime_factory, tmp_path_factory.mktemp("rest-labels"))


@pytest.fixture(scope="module")
def rest(runtime: RuntimeProcess) -> RestClient:
    return RestClient(runtime.http_url)


def post(url: str, body: bytes, content_type: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def post_json(url: str, document: Any) -> tuple[int, Any]:
    return post(url, json.dumps(document).encode(), "application/json")


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_classify_files_bytes_arrays_and_pil_images(rest: RestClient, tmp_path: Path) -> None:
    path = tmp_path / "green.png"
    path.write_bytes(png_bytes(noisy("green", 1)))
    images = [str(path), png_bytes(noisy("red", 2)), noisy("blue", 3), Image.fromarray(solid("red")),
              solid("green")[:, :, :1] * 0 + 200]  # a grey array: all channels equal
    results, status = rest.classify(images)
    assert status == 200
    assert [r.label for r in results[:4]] == ["green", "red", "blue", "red"]
    assert all(len(r.top) == 2 for r in results)  # the runtime's --top-k 2
    grey = results[4]
    assert grey.top[0].score == pytest.approx(1 / 3, abs=1e-4)
    called, status = rest([png_bytes(solid("blue"))], top_k=3)  # the client's shape: (results, status_code)
    assert status == 200 and called[0].label == "blue" and len(called[0].top) == 3


def test_json_results_have_the_grpc_shape(runtime: RuntimeProcess) -> None:
    images = [png_bytes(noisy(colour, 10 + i)) for i, colour in enumerate(COLOURS)]
    status, body = post_json(runtime.http_url + "/v1/classify",
                             {"images": [b64(i) for i in images], "parameters": {"top_k": 3}})
    assert status == 200
    with Client(runtime.grpc_target) as client:
        grpc_response = client.stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=i) for i in images],
                                                                 top_k=3))
    expected = MessageToDict(grpc_response, preserving_proto_field_name=True,
                             always_print_fields_with_no_presence=True)
    assert list(body) == ["results"] and len(body["results"]) == 3
    for got, want in zip(body["results"], expected["results"], strict=True):
        assert [(c["label"], c["class_id"]) for c in got["top"]] == [(c["label"], c["class_id"]) for c in want["top"]]
        assert [c["score"] for c in got["top"]] == pytest.approx([c["score"] for c in want["top"]], abs=1e-6)
    assert body["results"][0]["top"][0]["class_id"] == 0  # zero values are present, as in every gRPC field


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "kubeinfer-test-boundary"
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_parameters_as_fields_or_a_json_part(runtime: RuntimeProcess) -> None:
    image = png_bytes(noisy("red", 5))
    body, content_type = multipart([("image", None, image), ("top_k", None, b"1")])
    status, answer = post(runtime.http_url + "/v1/classify", body, content_type)
    assert status == 200 and [c["label"] for c in answer["results"][0]["top"]] == ["red"]
    body, content_type = multipart([("parameters", None, b'{"top_k": 3}'), ("upload", "a.png", image)])
    status, answer = post(runtime.http_url + "/v1/classify", body, content_type)
    assert status == 200 and len(answer["results"][0]["top"]) == 3


def test_a_data_url_is_accepted(runtime: RuntimeProcess) -> None:
    image = png_bytes(solid("blue"))
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    status, answer = post_json(runtime.http_url + "/v1/classify", {"images": [{"b64": data_url}]})
    assert status == 200 and answer["results"][0]["top"][0]["label"] == "blue"


@pytest.fixture
def traffic(runtime: RuntimeProcess) -> Iterator[BackgroundTraffic]:
    client = RestClient(runtime.http_url)
    image = png_bytes(noisy("green", 70))

    def classify() -> None:
        results, status = client.classify([image])
        assert status == 200 and results[0].label == "green", (status, results)

    background = BackgroundTraffic(classify)
    yield background
    background.stop()


GOOD = base64.b64encode(png_bytes(solid("red"))).decode()


@pytest.mark.parametrize(("document", "message"), [
    ({"images": [{"b64": GOOD}, b64(b"not an image")]}, "image 1: not a decodable"),
    ({"images": []}, "the request holds no images"),
    ({}, "the request holds no images"),
    ({"images": [{"b64": "%%%"}]}, "images[0].b64 is not valid base64"),
    ({"images": [GOOD]}, "images[0] must be an object with a base64 string \"b64\""),
    ({"images": {"b64": GOOD}}, "images must be a list"),
    ({"images": [{"b64": GOOD}], "parameters": {"top_k": "many"}}, "parameter 'top_k' must be an integer, got many"),
    ({"images": [{"b64": GOOD}], "parameters": {"top_k": True}}, "parameter 'top_k' must be an integer, got true"),
    ({"images": [{"b64": GOOD}], "parameters": {"top_k": 0}}, "top_k must be at least 1, got 0"),
    ({"images": [{"b64": GOOD}], "parameters": {"confidence": 0.5}},
     "unknown parameter(s) ['confidence'] for /v1/classify; accepted: ['top_k']"),
    ({"images": [{"b64": GOOD}], "parameters": [1]}, "parameters must be a JSON object"),
    ({"images": [{"b64": GOOD}], "extra": 1}, "unknown field(s) ['extra'] in the body"),
    ([{"b64": GOOD}], "the body must be a JSON object"),
])
def test_bad_json_requests_are_400_while_a_parallel_client_is_served(runtime: RuntimeProcess,
                                                                     traffic: BackgroundTraffic,
                                                                     document: Any, message: str) -> None:
    status, body = post_json(runtime.http_url + "/v1/classify", document)
    assert status == 400
    assert body["code"] == "INVALID_ARGUMENT"
    assert message in body["error"]


@pytest.mark.parametrize(("parts", "message"), [
    ([("images", "a.png", b"\x89PNG broken")], "image 0: not a decodable"),
    ([("images", "a.png", b"")], "image 0: empty encoded bytes"),
    ([("top_k", None, b"3")], "the request holds no images"),
    ([("images", "a.png", png_bytes(np.zeros((4, 4, 3), np.uint8))), ("top_k", None, b"x")],
     "parameter 'top_k' must be an integer, got x"),
    ([("parameters", None, b"{not json")], "the parameters part is not valid JSON"),
])
def test_bad_multipart_requests_are_400(runtime: RuntimeProcess, traffic: BackgroundTraffic,
                                        parts: list[tuple[str, str | None, bytes]], message: str) -> None:
    body, content_type = multipart(parts)
    status, answer = post(runtime.http_url + "/v1/classify", body, content_type)
    assert (status, answer["code"]) == (400, "INVALID_ARGUMENT")
    assert message in answer["error"]


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (b"garbage", "multipart/form-data", "malformed multipart body: boundary missed"),
    (b'--b\r\nContent-Disposition: form-data; name="images"; filename="a"\r\n\r\nabc',
     "multipart/form-data; boundary=b", "malformed multipart body"),
    (b'--b\r\nContent-Type: multipart/mixed; boundary=i\r\nContent-Disposition: form-data; name="x"\r\n\r\n'
     b"--i\r\n\r\nhi\r\n--i--\r\n--b--\r\n", "multipart/form-data; boundary=b", "nested multipart bodies"),
])
def test_malformed_multipart_bodies_are_400(runtime: RuntimeProcess, body: bytes, content_type: str,
                                            message: str) -> None:
    status, answer = post(runtime.http_url + "/v1/classify", body, content_type)
    assert (status, answer["code"]) == (400, "INVALID_ARGUMENT")
    assert message in answer["error"]


def test_bad_images_through_rest_client_come_back_as_errors(rest: RestClient, traffic: BackgroundTraffic) -> None:
    results, status = rest.classify([png_bytes(solid("red")), b"nope"])
    assert status == 400
    assert isinstance(results, RestError)
    assert (results.status, results.code) == (400, "INVALID_ARGUMENT")
    assert "image 1: not a decodable" in results.message


def test_a_body_over_the_limit_is_413(runtime: RuntimeProcess, rest: RestClient, traffic: BackgroundTraffic) -> None:
    big = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)  # PNG of noise: ~1.5 MB
    results, status = rest.classify([big])
    assert status == 413 and isinstance(results, RestError)
    assert results.code == "RESOURCE_EXHAUSTED" and "exceeds 1000000 bytes (--max-message-bytes)" in results.message
    status, body = post_json(runtime.http_url + "/v1/classify", {"images": [b64(png_bytes(big))]})
    assert status == 413 and body["code"] == "RESOURCE_EXHAUSTED"


def test_a_chunked_multipart_body_over_the_limit_is_413(runtime: RuntimeProcess) -> None:
    """No Content-Length: the limit is enforced while the parts stream in."""
    body, content_type = multipart([("images", f"{i}.png", bytes(300_000)) for i in range(4)])
    parts = urlsplit(runtime.http_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", "/v1/classify", body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                           headers={"Content-Type": content_type}, encode_chunked=True)
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413 and answer["code"] == "RESOURCE_EXHAUSTED"


def test_another_content_type_is_415(runtime: RuntimeProcess) -> None:
    status, body = post(runtime.http_url + "/v1/classify", b"hello", "text/plain")
    assert status == 415
    assert body == {"error": "send multipart/form-data or application/json, not 'text/plain'",
                    "code": "INVALID_ARGUMENT"}


def test_another_tasks_route_is_412(rest: RestClient) -> None:
    results, status = rest.detect([png_bytes(solid("red"))])
    assert status == 412 and isinstance(results, RestError)
    assert results.code == "FAILED_PRECONDITION"
    assert "Detect needs a runtime serving task detect; this one serves 'classify'" in results.message


def test_more_images_than_the_queue_holds_is_429(runtime: RuntimeProcess) -> None:
    """The runtime's queue holds 64 images: 65 in one request is overload, not a bad request."""
    tiny = b64(png_bytes(solid("red", 4, 4)))
    status, body = post_json(runtime.http_url + "/v1/classify", {"images": [tiny] * 65})
    assert status == 429 and body["code"] == "RESOURCE_EXHAUSTED" and "queue is full" in body["error"]


def test_rest_requests_are_counted_by_code(runtime: RuntimeProcess, rest: RestClient) -> None:
    rest.classify([solid("red")])
    rest.classify([b"bad"])
    text = runtime.metrics()
    assert 'kubeinfer_requests_total{code="OK",model="colours",protocol="rest",rpc="Classify"}' in text
    assert 'kubeinfer_requests_total{code="INVALID_ARGUMENT",model="colours",protocol="rest",rpc="Classify"}' in text
    assert 'kubeinfer_requests_total{code="FAILED_PRECONDITION",model="colours",protocol="rest",rpc="Detect"}' in text


def test_detect_over_rest_matches_grpc(detect_runtime: RuntimeProcess) -> None:
    samples = fresh_images(seed=90, count=3)
    images = [png_bytes(s.pixels) for s in samples]
    results, status = RestClient(detect_runtime.http_url).detect(images, confidence=0.3, classes=[0])
    with Client(detect_runtime.grpc_target) as client:
        expected = client.detect(images, confidence=0.3, classes=[0])
    assert status == 200 and len(results) == 3
    for got, want in zip(results, expected, strict=True):
        assert (got.height, got.width, got.defects) == (want.height, want.width, want.defects)
        assert len(got.detections) == len(want.detections) > 0
        for g, w in zip(got.detections, want.detections, strict=True):
            assert g.label == w.label and g.score == pytest.approx(w.score, abs=1e-4)
            assert [g.box.x1, g.box.y1, g.box.x2, g.box.y2] == pytest.approx([w.box.x1, w.box.y1, w.box.x2, w.box.y2],
                                                                              abs=1e-2)
    bad, status = RestClient(detect_runtime.http_url).detect(images[:1], confidence=2.0)
    assert status == 400 and isinstance(bad, RestError) and "confidence must be in" in bad.message


async def test_while_the_model_loads_requests_are_503(loading_runtime: ServeConfig) -> None:
    loading_http = f"http://127.0.0.1:{loading_runtime.http_port}"
    form = aiohttp.FormData()
    form.add_field("images", png_bytes(solid("red")), filename="red.png")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.post(loading_http + "/v1/classify", data=form) as response:
            assert response.status == 503
            assert await response.json() == {"error": "the model is still loading", "code": "UNAVAILABLE"}
        async with session.post(loading_http + "/v1/detect", json={"images": []}) as response:
            assert response.status == 503
