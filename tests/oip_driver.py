"""Drive a kubeinfer runtime with a real Open Inference Protocol client; runs in the OIP clients' own venv.

tritonclient and kserve need protobuf < 7 and each registers the package ``inference`` in
protobuf's descriptor pool, so they cannot share a process with kubeinfer (protobuf 7) or
with each other: the tests run this script in ``.cache/oip-clients`` with one client per run.

stdin: {"client": CLIENT, "grpc": "host:port", "http": "http://host:port", "ops": [OP, ...]}
  CLIENT: triton-grpc, triton-grpc-aio, triton-http, triton-http-aio, kserve-grpc, kserve-rest
  OP: {"op": "live" | "ready" | "server_metadata"}, {"op": "model_ready" | "model_metadata", "model": M},
      {"op": "infer", "request": REQ}, {"op": "stream", "requests": [REQ, ...]} (triton-grpc only),
      {"op": "bench", "request": REQ, "concurrency": C, "count": N} (triton-grpc-aio, triton-grpc)
  REQ: {"model": M, "inputs": [TENSOR], "outputs": [{"name": N, "binary": bool?}] | null,
        "parameters": {...}, "id": "...", "binary_inputs": bool (HTTP clients; default true)}
  TENSOR: {"name", "datatype", "shape", "elements": [base64, ...]} for BYTES, else "raw": base64 (little-endian)
stdout: {"results": [{"value": ...} | {"error": {"status": S, "message": M}}, ...]}
  an infer value: {"id": ..., "outputs": {name: {"datatype", "shape", "values": flat list (BYTES as str)}}}
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np

DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32,
          "FP64": np.float64, "UINT16": np.uint16, "FP16": np.float16}


def array_of(tensor: dict[str, Any]) -> np.ndarray:
    if tensor["datatype"] == "BYTES":
        elements = [base64.b64decode(e) for e in tensor["elements"]]
        array = np.empty(len(elements), dtype=object)
        array[:] = elements
        return array.reshape(tensor["shape"])
    dtype = np.dtype(DTYPES[tensor["datatype"]]).newbyteorder("<")
    return np.frombuffer(base64.b64decode(tensor["raw"]), dtype=dtype).reshape(tensor["shape"])


def describe(array: np.ndarray, datatype: str) -> dict[str, Any]:
    values = array.reshape(-1).tolist()
    if datatype == "BYTES":
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    return {"datatype": datatype, "shape": list(array.shape), "values": values}


def metadata_json(meta: dict[str, Any]) -> dict[str, Any]:
    """Triton's gRPC client returns MessageToJson output (int64 as strings): normalise to plain JSON."""
    def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t.get("shape", [])]}
                for t in items]

    return {"name": meta.get("name"), "versions": list(meta.get("versions", [])), "platform": meta.get("platform"),
            "inputs": tensors(meta.get("inputs", [])), "outputs": tensors(meta.get("outputs", []))}


def error_of(exc: BaseException) -> dict[str, Any]:
    status = ""
    if hasattr(exc, "status") and callable(exc.status):  # tritonclient InferenceServerException
        status = str(exc.status() or "").removeprefix("StatusCode.")
        message = str(exc.message() if callable(getattr(exc, "message", None)) else exc)
    elif hasattr(exc, "code") and callable(exc.code):  # grpc.RpcError (kserve gRPC)
        status, message = exc.code().name, str(exc.details())
    elif hasattr(exc, "response") and getattr(exc, "response", None) is not None:  # httpx.HTTPStatusError
        status, message = str(exc.response.status_code), str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    return {"status": status, "message": message}


class Triton:
    """tritonclient's four flavours behind one set of (async) methods."""

    def __init__(self, kind: str, grpc_url: str, http_url: str) -> None:
        self.grpc = kind.startswith("triton-grpc")
        self.aio = kind.endswith("-aio")
        if self.grpc:
            import tritonclient.grpc as module
            if self.aio:
                import tritonclient.grpc.aio as aio_module
                self.client = aio_module.InferenceServerClient(grpc_url)
            else:
                self.client = module.InferenceServerClient(grpc_url)
        else:
            import tritonclient.http as module
            url = http_url.removeprefix("http://")
            if self.aio:
                import tritonclient.http.aio as aio_module
                self.client = aio_module.InferenceServerClient(url)
            else:
                self.client = module.InferenceServerClient(url, concurrency=16)
        self.module = module

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, name)(*args, **kwargs)
        return await result if self.aio else result

    async def close(self) -> None:
        await self.call("close")

    async def live(self) -> bool:
        return bool(await self.call("is_server_live"))

    async def ready(self) -> bool:
        return bool(await self.call("is_server_ready"))

    async def model_ready(self, model: str) -> bool:
        return bool(await self.call("is_model_ready", model))

    async def server_metadata(self) -> dict[str, Any]:
        meta = await self.call("get_server_metadata", **({"as_json": True} if self.grpc else {}))
        return {"name": meta.get("name"), "version": meta.get("version"), "extensions": meta.get("extensions", [])}

    async def model_metadata(self, model: str) -> dict[str, Any]:
        return metadata_json(await self.call("get_model_metadata", model, **({"as_json": True} if self.grpc else {})))

    def build(self, request: dict[str, Any]) -> tuple[list[Any], list[Any] | None]:
        inputs = []
        for tensor in request["inputs"]:
            array = array_of(tensor)
            item = self.module.InferInput(tensor["name"], list(array.shape), tensor["datatype"])
            if self.grpc:
                item.set_data_from_numpy(array)
            else:
                item.set_data_from_numpy(array, binary_data=request.get("binary_inputs", True))
            inputs.append(item)
        outputs = None
        if request.get("outputs") is not None:
            outputs = []
            for output in request["outputs"]:
                if self.grpc:
                    outputs.append(self.module.InferRequestedOutput(output["name"]))
                else:
                    outputs.append(self.module.InferRequestedOutput(output["name"],
                                                                    binary_data=output.get("binary", True)))
        return inputs, outputs

    def kwargs(self, request: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"request_id": request.get("id", "")}
        if request.get("parameters"):
            kwargs["parameters"] = request["parameters"]
        return kwargs

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        inputs, outputs = self.build(request)
        result = await self.call("infer", request["model"], inputs, outputs=outputs, **self.kwargs(request))
        return self.result(result)

    def result(self, result: Any) -> dict[str, Any]:
        response = result.get_response(as_json=True) if self.grpc else result.get_response()
        outputs = {}
        for output in response["outputs"]:
            outputs[output["name"]] = describe(result.as_numpy(output["name"]), output["datatype"])
        return {"id": response.get("id", ""), "outputs": outputs}

    async def stream(self, requests: list[dict[str, Any]]) -> list[Any]:
        """Every request on one ModelStreamInfer call; answers in arrival order (values or errors)."""
        if not self.grpc or self.aio:
            raise ValueError("stream runs on the sync gRPC client (start_stream/async_stream_infer)")
        answers: list[Any] = []
        done = threading.Event()

        def callback(result: Any, error: Any) -> None:
            answers.append({"error": error_of(error)} if error is not None else {"value": self.result(result)})
            if len(answers) == len(requests):
                done.set()

        self.client.start_stream(callback=callback)
        try:
            for request in requests:
                inputs, outputs = self.build(request)
                self.client.async_stream_infer(request["model"], inputs, outputs=outputs, **self.kwargs(request))
            if not done.wait(120):
                raise TimeoutError(f"{len(answers)} of {len(requests)} stream answers arrived")
        finally:
            self.client.stop_stream()
        return answers

    async def bench(self, request: dict[str, Any], concurrency: int, count: int) -> dict[str, Any]:
        """``count`` ModelInfer calls from ``concurrency`` concurrent callers; throughput and latency."""
        inputs, outputs = self.build(request)
        latencies: list[float] = []
        remaining = [count]

        async def aio_worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                started = time.perf_counter()
                await self.client.infer(request["model"], inputs, outputs=outputs)
                latencies.append(time.perf_counter() - started)

        lock = threading.Lock()

        def thread_worker() -> None:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                self.client.infer(request["model"], inputs, outputs=outputs)
                with lock:
                    latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        if self.aio:
            await asyncio.gather(*(aio_worker() for _ in range(concurrency)))
        else:
            threads = [threading.Thread(target=thread_worker) for _ in range(concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.perf_counter() - started
        ordered = sorted(latencies)
        return {"requests": len(latencies), "seconds": elapsed, "throughput": len(latencies) / elapsed,
                "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))]}


class KServe:
    """KServe's InferenceGRPCClient / InferenceRESTClient (both asyncio)."""

    def __init__(self, kind: str, grpc_url: str, http_url: str) -> None:
        import kserve

        self.kserve = kserve
        self.rest = kind == "kserve-rest"
        self.base = http_url
        if self.rest:
            self.client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0))
        else:
            self.client = kserve.InferenceGRPCClient(grpc_url, retries=0)

    async def close(self) -> None:
        await self.client.close()

    async def live(self) -> bool:
        return bool(await (self.client.is_server_live(self.base) if self.rest else self.client.is_server_live()))

    async def ready(self) -> bool:
        return bool(await (self.client.is_server_ready(self.base) if self.rest else self.client.is_server_ready()))

    async def model_ready(self, model: str) -> bool:
        if self.rest:
            return bool(await self.client.is_model_ready(self.base, model))
        return bool(await self.client.is_model_ready(model))

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        from kserve.protocol.infer_type import RequestedOutput

        inputs = []
        for tensor in request["inputs"]:
            array = array_of(tensor)
            item = self.kserve.InferInput(tensor["name"], list(array.shape), tensor["datatype"])
            item.set_data_from_numpy(array, binary_data=request.get("binary_inputs", True))
            inputs.append(item)
        outputs = None
        if request.get("outputs") is not None:
            outputs = [RequestedOutput(o["name"], {"binary_data": o["binary"]} if "binary" in o else None)
                       for o in request["outputs"]]
        infer_request = self.kserve.InferRequest(model_name=request["model"], infer_inputs=inputs,
                                                 request_id=request.get("id") or None,
                                                 parameters=request.get("parameters") or None,
                                                 request_outputs=outputs)
        if self.rest:
            response = await self.client.infer(self.base, infer_request, model_name=request["model"])
        else:
            response = await self.client.infer(infer_request)
        return {"id": response.id or "",
                "outputs": {o.name: describe(o.as_numpy(), o.datatype) for o in response.outputs}}


async def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    kind = spec["client"]
    client: Any = (Triton if kind.startswith("triton") else KServe)(kind, spec.get("grpc", ""), spec.get("http", ""))
    results: list[dict[str, Any]] = []
    try:
        for op in spec["ops"]:
            try:
                name = op["op"]
                if name == "infer":
                    value: Any = await client.infer(op["request"])
                elif name == "stream":
                    value = await client.stream(op["requests"])
                elif name == "bench":
                    value = await client.bench(op["request"], op["concurrency"], op["count"])
                elif name in ("model_ready", "model_metadata"):
                    value = await getattr(client, name)(op["model"])
                else:
                    value = await getattr(client, name)()
                results.append({"value": value})
            except Exception as exc:
                results.append({"error": error_of(exc)})
    finally:
        await client.close()
    return results


if __name__ == "__main__":
    json.dump({"results": asyncio.run(run(json.load(sys.stdin)))}, sys.stdout)
