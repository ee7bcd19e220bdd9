"""The REST client: the runtime's ``/v1`` API over HTTP, returning ``(results, status_code)``.

    from kubeinfer.clients import RestClient

    classify = RestClient("http://127.0.0.1:8080")
    results, status_code = classify(["a.jpg", "b.png"])     # same as classify.classify([...])
    if status_code == 200:
        print(results[0].label, results[0].score)
    else:
        print(results.code, results.message)                  # a RestError

Images go as multipart file parts (paths and bytes as they are; numpy arrays and
PIL images encoded to PNG). Only the standard library is used for HTTP. A server
that cannot be reached raises ``urllib.error.URLError``; every HTTP answer,
error or not, is returned with its status code.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from kubeinfer.clients import convert
from kubeinfer.clients.images import ImageLike
from kubeinfer.clients.types import ClassifyResult, DetectResult, Recognition
from kubeinfer.v1 import inference_pb2 as pb


@dataclass(frozen=True)
class RestError:
    """A non-200 answer: the HTTP status, the server's status name (INVALID_ARGUMENT...) and its message."""

    status: int
    code: str
    message: str


class RestClient:
    """A runtime's REST API at ``url`` (``http://host:8080``). Thread-safe: each call is its own request."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    @classmethod
    def for_service(cls, name: str, namespace: str = "default", *, port: int = 8080,
                    cluster_domain: str = "cluster.local", timeout: float = 60.0) -> RestClient:
        """An InferenceService's REST API through its ClusterIP Service ``NAME``. Every call opens its own
        connection, so the Service spreads calls over the ready pods: no client-side balancing is needed."""
        return cls(f"http://{name}.{namespace}.svc.{cluster_domain}:{port}", timeout=timeout)

    def __call__(self, images: Iterable[ImageLike], **parameters: Any) -> tuple[list[ClassifyResult] | RestError,
                                                                               int]:
        return self.classify(images, **parameters)

    def classify(self, images: Iterable[ImageLike], *, top_k: int | None = None
                 ) -> tuple[list[ClassifyResult] | RestError, int]:
        """Top-k labels per image, in order, and the HTTP status (200, or the error's)."""
        body, status = self.post("classify", images, {"top_k": top_k})
        if status != 200:
            return _error(body, status), status
        response = json_format.ParseDict(body, pb.ClassifyResponse(), ignore_unknown_fields=True)
        return [convert.classify_result(r) for r in response.results], status

    def detect(self, images: Iterable[ImageLike], *, confidence: float | None = None, iou: float | None = None,
               max_detections: int | None = None, classes: Sequence[int] = (), return_masks: bool = False
               ) -> tuple[list[DetectResult] | RestError, int]:
        """Detections per image, in order, and the HTTP status."""
        parameters = {"confidence": confidence, "iou": iou, "max_detections": max_detections,
                      "classes": list(classes) or None, "return_masks": return_masks or None}
        body, status = self.post("detect", images, parameters)
        if status != 200:
            return _error(body, status), status
        response = json_format.ParseDict(body, pb.DetectResponse(), ignore_unknown_fields=True)
        return [convert.detect_result(r) for r in response.results], status

    def recognize(self, images: Iterable[ImageLike], *, threshold: float | None = None, top_k: int = 1
                  ) -> tuple[list[Recognition] | RestError, int]:
        """Best gallery match per image (``unknown`` below the threshold), in order, and the HTTP status."""
        body, status = self.post("recognize", images, {"threshold": threshold, "top_k": top_k})
        if status != 200:
            return _error(body, status), status
        response = json_format.ParseDict(body, pb.RecognizeResponse(), ignore_unknown_fields=True)
        return [convert.recognition(r) for r in response.results], status

    def post(self, name: str, images: Iterable[ImageLike], parameters: dict[str, Any] | None = None
             ) -> tuple[Any, int]:
        """``POST /v1/<name>`` as multipart; the decoded JSON answer and the status (None parameters are left out)."""
        boundary = uuid.uuid4().hex
        body = _multipart(boundary, images, {k: v for k, v in (parameters or {}).items() if v is not None})
        request = urllib.request.Request(f"{self.url}/v1/{name}", data=body, method="POST", headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return _decode(response.read()), int(response.status)
        except urllib.error.HTTPError as error:
            with error:
                return _decode(error.read()), int(error.code)


def _multipart(boundary: str, images: Iterable[ImageLike], parameters: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    for index, image in enumerate(images):
        filename, data = _encoded(image, index)
        safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{safe}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    for name, value in parameters.items():
        text = json.dumps(value) if isinstance(value, bool | list) else str(value)
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'.encode())
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def _encoded(image: ImageLike, index: int) -> tuple[str, bytes]:
    """File bytes as they are; arrays and PIL images as PNG (RGB or grey)."""
    if isinstance(image, str | Path):
        path = Path(image)
        return path.name, path.read_bytes()
    if isinstance(image, bytes | bytearray | memoryview):
        return f"image-{index}", bytes(image)
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise TypeError(f"numpy images must be uint8 HxW, HxWx1 or HxWx3 (RGB), got {image.dtype} "
                            f"{image.shape}")
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if not (hasattr(image, "save") and hasattr(image, "mode")):
        raise TypeError(f"unsupported image type {type(image).__name__}: use a path, bytes, PIL image or numpy array")
    buffer = io.BytesIO()
    (image if image.mode in ("RGB", "L") else image.convert("RGB")).save(buffer, format="PNG")
    return f"image-{index}.png", buffer.getvalue()


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return {"error": data.decode("utf-8", errors="replace")[:500], "code": "UNKNOWN"}


def _error(body: Any, status: int) -> RestError:
    if isinstance(body, dict):
        return RestError(status, str(body.get("code", "UNKNOWN")), str(body.get("error", body)))
    return RestError(status, "UNKNOWN", str(body))
