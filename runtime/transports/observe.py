"""What the gRPC interceptor and the HTTP middleware share: one call's request id, in-flight gauge and outcome.

Every RPC and route, native and Open Inference Protocol alike, is counted here once:
``kubeinfer_requests_in_flight{protocol}`` while it runs, then
``kubeinfer_requests_total{protocol, rpc, code}`` and its duration. The outcome is recorded
before the status goes out, so a client that saw an answer also sees it counted.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from dataclasses import dataclass

from kubeinfer.runtime.errors import REQUEST_ID, new_request_id
from kubeinfer.runtime.metrics import RuntimeMetrics

log = logging.getLogger("kubeinfer.runtime.requests")

OIP = "v2"  # both bindings of the Open Inference Protocol; REST calls are named "http:<RPC>"


@dataclass(frozen=True, slots=True)
class Route:
    """How one RPC or route is counted."""

    protocol: str
    rpc: str


class Call:
    """One request being served: its id (in REQUEST_ID for everything running on its behalf) and its metrics."""

    def __init__(self, metrics: RuntimeMetrics, route: Route, request_id: str | None = None) -> None:
        self.metrics = metrics
        self.route = route
        self.request_id = new_request_id(request_id)
        self.started = time.monotonic()
        self.code: str | None = None
        self._in_flight = metrics.in_flight.labels(metrics.model, route.protocol)
        self._in_flight.inc()
        self._token: contextvars.Token[str] | None = REQUEST_ID.set(self.request_id)

    def finish(self, code: str) -> None:
        """Record the outcome once (later calls are ignored): in-flight down, code and duration counted."""
        if self.code is not None:
            return
        self.code = code
        self._in_flight.dec()
        seconds = time.monotonic() - self.started
        self.metrics.observe_request(self.route.protocol, self.route.rpc, code, seconds)
        if code == "CANCELLED":
            log.info("%s %s cancelled (the client went away, or the server stopped) after %.3fs (request id %s)",
                     self.route.protocol, self.route.rpc, seconds, self.request_id)
        else:
            log.debug("%s %s -> %s in %.3fs (request id %s)", self.route.protocol, self.route.rpc, code, seconds,
                      self.request_id)

    def close(self) -> None:
        if self._token is not None:
            with contextlib.suppress(ValueError):  # finished in another context (an async generator's last step)
                REQUEST_ID.reset(self._token)
            self._token = None
