"""One frontend process (``--frontends N``): the transports, interceptor, data plane and the detect or classify
task of the one-process runtime, with the model reached over the link to the model process instead of loaded
here.

It listens on the shared ports at once (health NOT_SERVING, /readyz 503 while the model process loads), is
ready once the model process says hello, drains on SIGTERM like the one-process runtime, and stops with
exit code 1 if the model process goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.detection import Detector
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.frontends import link
from kubeinfer.runtime.frontends.remote import (
    CLASSIFY_ITEMS,
    DETECT_ITEMS,
    RemoteBatcher,
    RemoteClassifier,
    RemoteDetector,
)
from kubeinfer.runtime.frontends.ring import SlotRing
from kubeinfer.runtime.gpu_metrics import register_gpu_collector
from kubeinfer.runtime.server import Runtime, configure_logging, exit_at_once
from kubeinfer.runtime.tasks.base import Task
from kubeinfer.runtime.tasks.classify import ClassifyTask
from kubeinfer.runtime.tasks.detect import DetectTask

log = logging.getLogger("kubeinfer.runtime.frontend")


def main(config: ServeConfig, index: int, link_path: str) -> None:
    """The frontend process's entry point (spawned by the model process); never returns."""
    configure_logging(config, f"frontend-{index}")
    try:
        code = asyncio.run(Runtime(config, load=lambda runtime: connect(runtime, index, link_path)).run())
    except StartupError as exc:
        print(f"kubeinfer serve (frontend {index}, pid {os.getpid()}): {exc}", file=sys.stderr)
        code = 1
    exit_at_once(code)


async def connect(runtime: Runtime, index: int, link_path: str) -> Task:
    """The task over the link: waits for the model process to load its model and say hello."""
    try:
        reader, writer = await asyncio.open_unix_connection(link_path)
        await link.send(writer, link.FrontendHello(index, os.getpid()))
        hello = await link.receive(reader)
    except OSError as exc:
        raise StartupError(f"cannot reach the model process at {link_path}: {exc}") from exc
    if not isinstance(hello, link.Hello):
        raise StartupError("the model process closed the link before its model was ready")
    register_gpu_collector(runtime.metrics, runtime.config.device, hello.facts.gpu_uuid)
    ring = SlotRing.attach(hello.ring_name, hello.slots, hello.slot_shape)
    config, facts = runtime.config, hello.facts
    task: Task
    if isinstance(facts, link.DetectorFacts):
        serves = facts.engine
        detector = Detector(config, RemoteDetector(facts),
                            RemoteBatcher(ring, reader, writer, on_lost=runtime.fail, codec=DETECT_ITEMS))
        task = DetectTask(config, runtime.metrics, runtime.pool, detector)
    else:
        assert config.model is not None  # ServeConfig.validate requires it for classify
        serves = facts.format
        batcher = RemoteBatcher(ring, reader, writer, on_lost=runtime.fail, codec=CLASSIFY_ITEMS)
        task = ClassifyTask(config, runtime.metrics, runtime.pool, (RemoteClassifier(facts, config.model), batcher))
    log.info("frontend %d (pid %d): the model process serves %s; %d image slots", index, os.getpid(), serves,
             hello.slots)
    return task
