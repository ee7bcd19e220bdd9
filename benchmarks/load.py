"""Closed-loop load generator: C concurrent callers, each sending its next request as soon as the last returns.

One process, one asyncio loop, one connection per target (as a real client app
would hold), and a fixed set of pre-encoded request payloads cycled through, so
the generator's own per-request work is as small as the protocol allows. It runs
in whichever venv has the target's client library: the project venv for
kubeinfer's native gRPC API, the bench ``client`` venv (tritonclient, aiohttp)
for the Open Inference Protocol and HTTP targets. Only the standard library and
numpy are imported up front.

Each level: ``warmup`` seconds unrecorded, then ``duration`` seconds in which
every request that completes counts; throughput = completed / duration. Nothing
runs longer than warmup + duration + the per-request timeout.

    python benchmarks/load.py --target kubeinfer-detect --address 127.0.0.1:8001 \
        --payloads payloads.npz --concurrency 1,4,16 --duration 5

prints one JSON object on stdout: ``levels`` (one entry per concurrency) and ``answers`` (the
server's answers for the first payloads, to compare with the raw model's: the top-1 class of a
classifier, the boxes of a detector).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__:  # imported as benchmarks.load
    from . import h2load, serverstats
else:  # run as a script in a bench venv: this folder is on sys.path
    import h2load
    import serverstats

TARGETS = ("kubeinfer-classify", "kubeinfer-detect", "oip-grpc", "litserve-http")
Send = Callable[[int], Awaitable[None]]


@dataclass
class LevelResult:
    """What one concurrency level measured."""

    concurrency: int
    duration_s: float
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    first_error: str | None = None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, int(np.ceil(q / 100.0 * len(sorted_values))))
    return sorted_values[rank - 1]


async def closed_loop(send: Send, concurrency: int, duration: float, warmup: float, timeout: float) -> LevelResult:
    """Run ``concurrency`` callers of ``send(i)`` for warmup + duration seconds; measure the last ``duration``.

    Throughput counts the requests that complete inside the measured window, so
    requests straddling either edge neither inflate nor deflate it.
    """
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def caller() -> None:
        nonlocal errors, first_error
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            try:
                await asyncio.wait_for(send(next(counter)), timeout)
            except Exception as exc:  # counted and reported; the caller keeps going
                if measure_from <= time.perf_counter() <= stop_at:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:500]
                continue
            done = time.perf_counter()
            if measure_from <= done <= stop_at:  # completions inside the window, whenever they were sent
                latencies.append(done - sent)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    latencies.sort()
    ms = [v * 1000.0 for v in latencies]
    return LevelResult(
        concurrency=concurrency, duration_s=duration, requests=len(ms), errors=errors,
        throughput_rps=len(ms) / duration,
        p50_ms=percentile(ms, 50) if ms else None, p99_ms=percentile(ms, 99) if ms else None,
        mean_ms=sum(ms) / len(ms) if ms else None, first_error=first_error)


# ---------------------------------------------------------------- payloads

def save_payloads(path: Path, pixels: np.ndarray, jpegs: list[bytes]) -> None:
    """Raw RGB images [K,H,W,3] uint8 and encoded JPEGs, in one .npz both venvs can read."""
    offsets = np.cumsum([0, *[len(j) for j in jpegs]]).astype(np.int64)
    data = np.frombuffer(b"".join(jpegs), dtype=np.uint8)
    np.savez(path, pixels=pixels, jpeg_data=data, jpeg_offsets=offsets)


def load_payloads(path: Path) -> tuple[np.ndarray, list[bytes]]:
    with np.load(path) as archive:
        pixels = archive["pixels"]
        data, offsets = archive["jpeg_data"].tobytes(), archive["jpeg_offsets"]
    jpegs = [data[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    return pixels, jpegs


# ---------------------------------------------------------------- targets

class Target:
    """A connected client for one server; ``send(i)`` makes request i (payloads cycle)."""

    async def open(self) -> None:
        """Connect and check the server answers (one real request)."""
        await self.send(0)

    async def send(self, i: int) -> None:
        raise NotImplementedError

    async def answer(self, i: int) -> Any:
        """The server's answer for payload i: the top-1 class index (classifiers) or the boxes as
        [class, x1, y1, x2, y2, score] rows (detectors); None: not checked."""
        return None

    def grpc_call(self) -> tuple[str, bytes] | None:
        """The gRPC method path and the serialized request of payload 0, for h2load; None: not gRPC."""
        return None

    async def close(self) -> None:
        """Release the connection."""


class KubeinferTarget(Target):
    """kubeinfer's native API over grpc.aio: the same request messages `kubeinfer.clients.Client` builds."""

    def __init__(self, address: str, task: str, pixels: np.ndarray, jpegs: list[bytes]) -> None:
        from kubeinfer.clients.images import to_proto_image
        from kubeinfer.v1 import inference_pb2 as pb

        self.address = address
        self.task = task
        if task == "classify":
            self.requests: list[Any] = [pb.ClassifyRequest(images=[to_proto_image(p)]) for p in pixels]
        else:
            self.requests = [pb.DetectRequest(images=[to_proto_image(j)]) for j in jpegs]
        self.channel: Any = None
        self.call: Any = None

    async def open(self) -> None:
        import grpc

        from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

        self.channel = grpc.aio.insecure_channel(self.address, options=[  # in the running loop: aio binds to it
            ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
        stub = pb_grpc.InferenceStub(self.channel)
        self.call = stub.Classify if self.task == "classify" else stub.Detect
        await self.send(0)

    async def send(self, i: int) -> None:
        await self._call(i)

    async def _call(self, i: int) -> Any:
        response = await self.call(self.requests[i % len(self.requests)])
        if len(response.results) != 1:
            raise RuntimeError(f"expected 1 result, got {len(response.results)}")
        return response

    async def answer(self, i: int) -> Any:
        result = (await self._call(i)).results[0]
        if self.task == "classify":
            return int(result.top[0].class_id)
        return [[d.class_id, d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score] for d in result.detections]

    def grpc_call(self) -> tuple[str, bytes] | None:
        method = "Classify" if self.task == "classify" else "Detect"
        return f"/kubeinfer.v1.Inference/{method}", self.requests[0].SerializeToString()

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()


class OipTarget(Target):
    """Open Inference Protocol v2 over gRPC with tritonclient's asyncio client (binary tensors)."""

    def __init__(self, address: str, model: str, input_name: str | None, pixels: np.ndarray) -> None:
        self.address = address
        self.client: Any = None
        self.model = model
        self.input_name = input_name
        self.pixels = pixels
        self.inputs: list[list[Any]] = []

    async def open(self) -> None:
        import tritonclient.grpc as triton_sync
        import tritonclient.grpc.aio as triton

        self.client = triton.InferenceServerClient(self.address)  # in the running loop: aio binds to it
        if not await self.client.is_server_live():
            raise RuntimeError("server is not live")
        if self.input_name is None:
            self.input_name = await self._raw_pixel_input()
        for image in self.pixels:
            tensor = triton_sync.InferInput(self.input_name, [1, *image.shape], "UINT8")
            tensor.set_data_from_numpy(image[None])
            self.inputs.append([tensor])
        await self.send(0)

    async def _raw_pixel_input(self) -> str:
        """The model's UINT8 [N,H,W,3] input, read from its metadata."""
        meta = await self.client.get_model_metadata(self.model)
        for tensor in meta.inputs:
            if tensor.datatype == "UINT8" and len(tensor.shape) == 4:
                return str(tensor.name)
        raise RuntimeError(f"model {self.model} has no UINT8 [N,H,W,3] input: {[t.name for t in meta.inputs]}")

    async def send(self, i: int) -> None:
        await self._call(i)

    async def _call(self, i: int) -> Any:
        result = await self.client.infer(self.model, self.inputs[i % len(self.inputs)])
        if not result.get_response().outputs:
            raise RuntimeError("response has no outputs")
        return result

    async def answer(self, i: int) -> int | None:
        classes = (await self._call(i)).as_numpy("classes")
        return None if classes is None else int(classes.reshape(-1)[0])

    def grpc_call(self) -> tuple[str, bytes] | None:
        from tritonclient.grpc import service_pb2

        image = self.pixels[0]
        request = service_pb2.ModelInferRequest(model_name=self.model, raw_input_contents=[image.tobytes()])
        request.inputs.add(name=self.input_name, datatype="UINT8", shape=[1, *image.shape])
        return "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


class LitServeTarget(Target):
    """LitServe's HTTP JSON API: the raw pixels base64-encoded in {"pixels": ...} (as its docs suggest)."""

    def __init__(self, address: str, pixels: np.ndarray) -> None:
        import base64

        self.url = f"http://{address}/predict"
        self.bodies = [json.dumps({"pixels": base64.b64encode(p.tobytes()).decode(), "shape": list(p.shape)}).encode()
                       for p in pixels]
        self.session: Any = None

    async def open(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        await self.send(0)

    async def send(self, i: int) -> None:
        await self._call(i)

    async def _call(self, i: int) -> bytes:
        async with self.session.post(self.url, data=self.bodies[i % len(self.bodies)],
                                     headers={"Content-Type": "application/json"}) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            return body

    async def answer(self, i: int) -> int | None:
        return int(json.loads(await self._call(i))["classes"][0])

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def make_target(args: argparse.Namespace) -> Target:
    pixels, jpegs = load_payloads(args.payloads)
    if args.target == "kubeinfer-classify":
        return KubeinferTarget(args.address, "classify", pixels, jpegs)
    if args.target == "kubeinfer-detect":
        return KubeinferTarget(args.address, "detect", pixels, jpegs)
    if args.target == "oip-grpc":
        return OipTarget(args.address, args.model_name, args.input_name, pixels)
    return LitServeTarget(args.address, pixels)


async def run_levels(target: Target, levels: list[int], duration: float, warmup: float, timeout: float,
                     answers: int = 0, generator: str = "python", address: str = "", server_pid: int = 0,
                     metrics_url: str | None = None) -> dict[str, Any]:
    """Every level in turn on one connection, plus the answers to the first ``answers`` payloads.

    With ``generator="h2load"`` a gRPC target's levels come from h2load (one connection, C streams, payload 0);
    the answers and the check that the server answers that request with status OK stay with this client."""
    await target.open()
    try:
        given = [await target.answer(i) for i in range(answers)]
        call = target.grpc_call() if generator == "h2load" else None
        if call is not None:  # the exact bytes h2load repeats, answered with status OK through a real gRPC client
            await asyncio.to_thread(check_raw_call, address, call[0], call[1], timeout)
        levels_out = []
        for c in levels:
            before = serverstats.sample(server_pid, metrics_url) if server_pid else None
            if call is not None:
                level = await asyncio.to_thread(h2load.run_level, address, call[0], call[1], c, duration, warmup,
                                                timeout)
            else:
                level = asdict(await closed_loop(target.send, c, duration, warmup, timeout))
            if before is not None:  # warm-up included on both sides: CPU and images over the same span
                after = serverstats.sample(server_pid, metrics_url)
                served = round(level["throughput_rps"] * (duration + warmup))
                level.update(serverstats.level_figures(before, after, served))
            levels_out.append(level)
    finally:
        await target.close()
    return {"levels": levels_out, "answers": None if None in given or not given else given,
            "generator": "h2load" if call is not None else "python"}


def check_raw_call(address: str, method: str, message: bytes, timeout: float) -> None:
    """Send serialized ``message`` to ``method`` once; grpc raises RpcError unless the trailers say OK."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        answer = channel.unary_unary(method)(message, timeout=timeout)  # no (de)serializers: bytes as they are
    if not answer:
        raise RuntimeError(f"{method}: empty answer to the request h2load sends")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--address", required=True, help="host:port (loopback)")
    parser.add_argument("--payloads", type=Path, required=True, help=".npz written by save_payloads")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds before each level")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one request may take")
    parser.add_argument("--model-name", default="classifier", help="OIP model name")
    parser.add_argument("--input-name", default=None, help="OIP input (default: the UINT8 input in the metadata)")
    parser.add_argument("--answers", type=int, default=8, help="report the answers to this many payloads")
    parser.add_argument("--server-pid", type=int, default=0, help="sample this server process's CPU time per level")
    parser.add_argument("--metrics-url", default=None, help="the server's /metrics, for the batch sizes formed")
    parser.add_argument("--generator", choices=("python", "h2load"), default="python",
                        help="h2load: gRPC targets are loaded by h2load (C), answers still checked from here")
    args = parser.parse_args(argv)
    if not args.address.startswith(("127.", "localhost:", "[::1]:")):
        parser.error(f"--address {args.address}: only loopback targets are allowed")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(v) for v in args.concurrency.split(",") if v]
    try:
        results = asyncio.run(run_levels(make_target(args), levels, args.duration, args.warmup, args.timeout,
                                         args.answers, args.generator, args.address, args.server_pid,
                                         args.metrics_url))
    except Exception as exc:
        print(f"load: {args.target} at {args.address}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    json.dump(results, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
