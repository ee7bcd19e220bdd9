"""The transport floor: a bare grpc.aio server answering kubeinfer's Detect with no model, no decode, no
interceptor, so the benchmark can show what Python gRPC itself costs per request on this machine.

It answers each image with an empty result (the same reply shape the load generator checks), and says it
is ready on ``/ready`` of its HTTP port, as the other servers of the benchmark do:

    .venv/bin/python benchmarks/grpc_floor.py --grpc-port 50990 --http-port 50991
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from aiohttp import web

from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc


class FloorServicer(pb_grpc.InferenceServicer):
    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        return pb.DetectResponse(results=[pb.DetectResult() for _ in request.images])


async def serve(grpc_port: int, http_port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_InferenceServicer_to_server(FloorServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    app = web.Application()
    app.router.add_get("/ready", lambda _: web.Response(text="ok"))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.grpc_port, args.http_port))


if __name__ == "__main__":
    main()
