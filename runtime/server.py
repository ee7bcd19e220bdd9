"""The runtime's lifecycle: listen, get the engine (load the model here, or reach the model process's), build the
task around it and warm it, serve, and drain on SIGTERM.

Transports start first (health NOT_SERVING, /readyz 503) so probes answer while a
large model loads; the model loads in a thread; SERVING follows the warm-up.

On SIGTERM: NOT_SERVING and /readyz 503 at once, requests still served for --shutdown-delay;
then both transports drain in parallel: new calls are refused and in-flight ones (gRPC calls and
HTTP requests, uploads included) get one --grace-period, after which the rest are cancelled. The
process exits within delay + grace + ``STOP_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, Protocol

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.dataplane import DataPlane
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.engine.loading import load_engine
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.gc_freeze import freeze_loaded_objects
from kubeinfer.runtime.gpu_metrics import register_gpu_collector
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.tasks import build_task, engine_kind, task_class
from kubeinfer.runtime.tasks.base import Task
from kubeinfer.runtime.transports.grpc import GrpcTransport
from kubeinfer.runtime.transports.http import HttpTransport

log = logging.getLogger("kubeinfer.runtime")
STOP_SECONDS = 0.5  # after the drain: how long the task's threads may take to stop before the process exits


class AcceptErrorFilter(logging.Filter):
    """At most one asyncio "socket.accept() out of system resource" record (out of file descriptors: one with a
    traceback per listening socket per second otherwise) per ``interval`` seconds; the next one says how many
    were suppressed. Other records pass untouched."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.last: float | None = None
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(self.MESSAGE):
            return True
        now = self.clock()
        if self.last is not None:
            if now - self.last < self.interval:
                self.suppressed += 1
                return False
            if self.suppressed:
                record.msg = (f"{record.getMessage()}\n({self.suppressed} more like it suppressed in the last "
                              f"{now - self.last:.0f}s)")
                record.args = ()
        self.last, self.suppressed = now, 0
        return True


def configure_logging(config: ServeConfig, process: str = "") -> None:
    """The runtime's log lines (each naming ``process`` where the runtime is several) and the accept-error filter
    (out of file descriptors: no log flood)."""
    label = f"{process} " if process else ""
    logging.basicConfig(level=config.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s {label}%(name)s: %(message)s")
    logging.getLogger("asyncio").addFilter(AcceptErrorFilter())


def exit_at_once(code: int) -> NoReturn:
    """Exit without the interpreter's teardown (seconds with torch and gRPC's C core loaded), once the drain is
    over, so the process exits within --shutdown-delay + --grace-period + 1 s, as the pod's
    terminationGracePeriodSeconds expects."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Lifecycle(Protocol):
    """A process of the runtime: the one-process ``Runtime``, a frontend's, or the model process."""

    async def run(self) -> int: ...


def serve(config: ServeConfig, lifecycle: Lifecycle, process: str = "", failure_prefix: str = "kubeinfer serve") -> int:
    """Run ``lifecycle`` until SIGTERM/SIGINT; 0 after a clean drain, 1 when the runtime cannot start. ``process``
    names the process in each log line where the runtime is several."""
    configure_logging(config, process)
    try:
        return asyncio.run(lifecycle.run())
    except StartupError as exc:
        print(f"{failure_prefix}: {exc}", file=sys.stderr)
        return 1


EngineSource = Callable[["Runtime"], Awaitable[Engine[Any, Any, Any] | None]]


class Runtime:
    """Transports, data plane and task around an engine: the model loaded here (the one-process runtime), or the
    model process's reached over a link (a frontend's)."""

    def __init__(self, config: ServeConfig, engine_source: EngineSource | None = None) -> None:
        """``engine_source``: how the engine is reached (a frontend connects to the model process); by default the
        model is loaded here, in a thread of its own."""
        self.config = config
        self.metrics = RuntimeMetrics(config.model_name)
        if engine_source is None:  # a frontend registers its own once it knows the model process's device
            register_gpu_collector(self.metrics, config.device)
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="kubeinfer-worker")
        self.dataplane = DataPlane(config, self.metrics)
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self._engine_source = engine_source
        self._engine: Engine[Any, Any, Any] | None = None
        self._task: Task | None = None

    def fail(self) -> None:
        """Something the runtime cannot serve without is gone: drain, then exit non-zero (the pod restarts)."""
        self.exit_code = 1
        self.stopping.set()

    async def run(self) -> int:
        config = self.config
        grpc_transport = GrpcTransport(config, self.dataplane, self.metrics, self.pool)
        http_transport = HttpTransport(config, self.dataplane, self.metrics)
        await grpc_transport.start()
        await http_transport.start()
        self._install_signal_handlers()
        log.info("listening: gRPC %s:%d, HTTP %s:%d; %s %s model %s", config.host, grpc_transport.port,
                 config.host, config.http_port,
                 "waiting for the model process to load" if self._engine_source else "loading", config.task,
                 config.model)
        try:
            task = await self._start_task()
        except BaseException:
            await grpc_transport.drain(0)
            await http_transport.stop()
            self.pool.shutdown(wait=False, cancel_futures=True)
            raise
        self.dataplane.attach(task)
        freeze_loaded_objects()
        info = self.dataplane.model_info()
        self.metrics.build.labels(config.model_name).info(
            {"version": info.version, "task": config.task, "format": info.model_format, "backend": info.backend})
        await grpc_transport.set_serving(True)
        log.info("serving %s (%s) on %s", config.model_name, config.task, config.device)

        await self.stopping.wait()
        log.info("shutting down: NOT_SERVING for %.1fs, then in-flight requests get %.1fs",
                 config.shutdown_delay, config.grace_period)
        self.dataplane.begin_drain()
        await grpc_transport.announce_shutdown()
        await asyncio.sleep(config.shutdown_delay)
        # one grace period for both transports, in parallel
        await asyncio.gather(grpc_transport.drain(config.grace_period), http_transport.drain(config.grace_period))
        stopper = threading.Thread(target=self._stop_task, name="task-stop", daemon=True)  # never holds up the exit
        stopper.start()
        deadline = asyncio.get_running_loop().time() + STOP_SECONDS
        while stopper.is_alive() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if stopper.is_alive():
            log.warning("the model's threads did not stop within %.1fs; exiting anyway", STOP_SECONDS)
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
        return self.exit_code

    async def _start_task(self) -> Task:
        """The engine (loaded, or reached), then the task around it, warmed through its whole request path."""
        config = self.config
        if self._engine_source is not None:
            self._engine = await self._engine_source(self)
        else:
            self._engine = await load_engine(engine_kind(config), config, self.metrics, self.pool,
                                             preflight=lambda: task_class(config).preflight(config))
        if self._engine is not None:
            self._engine.start()
        try:
            self._task = await asyncio.to_thread(build_task, config, self._engine, self.metrics, self.pool)
            self._task.start()
            try:
                await self._task.warm_up()
            except Exception as exc:
                raise StartupError(f"{config.model}: the warm-up request failed: {exc}") from exc
        except BaseException:
            await asyncio.to_thread(self._stop_task)
            raise
        return self._task

    def _stop_task(self) -> None:
        """The task's threads, then the engine's (its batcher finishes what is queued)."""
        if self._task is not None:
            self._task.stop()
        if self._engine is not None:
            self._engine.stop()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _reload(self) -> None:
        """SIGHUP: what the task re-reads (labels) and what the engine does (a gallery; nothing over a link: the
        model process passes the signal on to the frontends and reloads its own)."""
        task, engine = self._task, self._engine
        if task is not None:
            log.info("SIGHUP: reloading")
            self.pool.submit(task.reload)
            if engine is not None:
                self.pool.submit(engine.reload)
