"""One frontend process (``--frontends N``): the one-process runtime's transports, interceptor, data plane and
task, over a ``RemoteEngine``: the model process's engine, reached over this frontend's link.

It listens on the shared ports at once (health NOT_SERVING, /readyz 503 while the model process loads), is
ready once the model process says hello and its task warmed up, drains on SIGTERM like the one-process runtime,
and stops with exit code 1 if the model process goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine import link
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.engine.remote import RemoteEngine
from kubeinfer.runtime.engine.ring import SlotRing
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.gpu_metrics import register_gpu_collector
from kubeinfer.runtime.server import Runtime, exit_at_once, serve
from kubeinfer.runtime.tasks import engine_kind

log = logging.getLogger("kubeinfer.runtime.frontend")


def main(config: ServeConfig, index: int, link_path: str) -> None:
    """The frontend process's entry point (spawned by the model process); never returns."""
    runtime = Runtime(config, engine_source=lambda runtime: connect(runtime, index, link_path))
    exit_at_once(serve(config, runtime, f"frontend-{index}",
                       failure_prefix=f"kubeinfer serve (frontend {index}, pid {os.getpid()})"))


async def connect(runtime: Runtime, index: int, link_path: str) -> Engine[Any, Any, Any] | None:
    """The model process's engine over the link: waits for it to load its model and say hello."""
    try:
        reader, writer = await asyncio.open_unix_connection(link_path)
        await link.send(writer, link.FrontendHello(index, os.getpid()))
        hello = await link.receive(reader)
    except OSError as exc:
        raise StartupError(f"cannot reach the model process at {link_path}: {exc}") from exc
    if not isinstance(hello, link.Hello):
        raise StartupError("the model process closed the link before its model was ready")
    register_gpu_collector(runtime.metrics, runtime.config.device, hello.gpu_uuid)
    kind = engine_kind(runtime.config)
    if hello.facts is None or kind is None:
        log.info("frontend %d (pid %d): the model process serves no model", index, os.getpid())
        _watching.add(asyncio.get_running_loop().create_task(_stop_when_closed(reader, writer, runtime)))
        return None
    ring = SlotRing.attach(hello.ring_name, hello.slots, hello.slot_shape)
    log.info("frontend %d (pid %d): the model process serves its %s; %d image slots", index, os.getpid(), kind.name,
             hello.slots)
    return RemoteEngine(hello.facts, kind.items, ring, reader, writer, on_lost=runtime.fail)


_watching: set[asyncio.Task[None]] = set()  # the links no engine reads


async def _stop_when_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, runtime: Runtime) -> None:
    """A link with no engine to read it still ends this frontend when the model process goes away (``writer`` is
    held here: a stream writer that is collected closes its link)."""
    await reader.read()
    writer.close()
    log.error("the model process closed the link; this frontend stops")
    runtime.fail()
