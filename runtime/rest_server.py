"""HTTP transport (aiohttp, on the same event loop as gRPC): health, readiness, Prometheus metrics, REST API."""

from __future__ import annotations

import logging

from aiohttp import web

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.dataplane import DataPlane
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.oip import rest as oip_rest
from kubeinfer.runtime.rest_api import add_rest_api

log = logging.getLogger(__name__)


def build_app(config: ServeConfig, dataplane: DataPlane, metrics: RuntimeMetrics) -> web.Application:
    app = web.Application(client_max_size=config.max_message_bytes)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        if dataplane.ready:
            return web.json_response({"status": "ready", "model": config.model_name})
        reason = "draining" if dataplane.draining else "loading"
        return web.json_response({"status": reason, "model": config.model_name}, status=503)

    async def metrics_page(_: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    add_rest_api(app, config, dataplane, metrics)  # POST /v1/classify, /v1/detect (add_v1_route for more)
    oip_rest.add_routes(app, dataplane, metrics)
    return app


class HttpTransport:
    def __init__(self, config: ServeConfig, dataplane: DataPlane, metrics: RuntimeMetrics) -> None:
        self.config = config
        self.runner = web.AppRunner(build_app(config, dataplane, metrics), access_log=None,
                                    shutdown_timeout=config.grace_period)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.http_port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.config.host}:{self.config.http_port} for HTTP: {exc}") from exc

    async def stop(self) -> None:
        await self.runner.cleanup()
