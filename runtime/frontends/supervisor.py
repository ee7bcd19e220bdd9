"""The model process of ``--frontends N``: spawns the frontends, loads the engine once, batches for all of them.

It listens on no port: the frontends do (``SO_REUSEPORT``; the kernel spreads connections across them). Each
frontend connects to a Unix socket here; once the engine is loaded and warmed it gets a hello with the model's
facts and its own ring of image slots in shared memory, then sends its requests' items, which the one engine
answers (``engine.link_server``). Every task's request side runs in the frontends, whatever the task.

SIGTERM or SIGINT: passed on to the frontends, which drain as the one-process runtime does; once they are gone
the engine stops and the process exits 0. SIGHUP: passed on, so each frontend reloads what it holds (a
classifier's labels), and the engine reloads what it holds (a gallery). A frontend that dies on its own stops
the others and the process exits 1, so the pod restarts whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine.link_server import LinkServer
from kubeinfer.runtime.engine.loading import load_engine
from kubeinfer.runtime.engine.local import LocalEngine
from kubeinfer.runtime.engine.ring import SlotRing
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.frontends import frontend
from kubeinfer.runtime.gc_freeze import freeze_loaded_objects
from kubeinfer.runtime.gpu_metrics import device_uuid
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.server import STOP_SECONDS
from kubeinfer.runtime.tasks import engine_kind, task_class

log = logging.getLogger("kubeinfer.runtime.model-process")
SHARED_MEMORY = Path("/dev/shm")
EXIT_WAIT_SECONDS = 5.0  # after a frontend's delay and grace: how long before it is killed


class ModelProcess:
    """The engine behind the frontends' links, and the frontends' lives."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = RuntimeMetrics(config.model_name)
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="kubeinfer-worker")
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.engine: LocalEngine[Any, Any, Any] | None = None
        self.links = LinkServer(config.frontends)
        self.rings: list[SlotRing] = []
        self.frontends: list[BaseProcess] = []

    async def run(self) -> int:
        workdir = Path(tempfile.mkdtemp(prefix="kubeinfer-model-"))
        link_path = workdir / "link.sock"
        server = await asyncio.start_unix_server(self.links.serve, path=str(link_path))
        self._install_signal_handlers()
        try:
            self._spawn_frontends(str(link_path))
            log.info("%d frontends serving gRPC %s:%d and HTTP %s:%d; loading %s model %s", self.config.frontends,
                     self.config.host, self.config.grpc_port, self.config.host, self.config.http_port,
                     self.config.task, self.config.model)
            await self._load()
            await self.stopping.wait()
            log.info("shutting down: the frontends drain")
        except BaseException:
            self.exit_code = 1
            self.stopping.set()  # frontends that exit from here on are not mourned
            self.links.close()  # frontends still waiting for their hello give up and exit
            raise
        finally:
            self._signal_frontends(signal.SIGTERM)
            await self._wait_for_frontends()
            self._kill_frontends()
            server.close()
            self.links.close()
            if self.engine is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(self.engine.stop), STOP_SECONDS * 4)
            for ring in self.rings:
                ring.close()
            shutil.rmtree(workdir, ignore_errors=True)
            self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
        return self.exit_code

    async def _load(self) -> None:
        """The engine, loaded and warmed, then a ring per frontend sized for its items, then every hello."""
        config = self.config
        kind = engine_kind(config)
        self.engine = engine = await load_engine(kind, config, self.metrics, self.pool,
                                                 preflight=lambda: task_class(config).preflight(config))
        gpu_uuid = device_uuid(config.device)
        if engine is not None and kind is not None:
            shape = kind.items.slot_shape(engine.facts)
            self._check_shared_memory(shape)
            self.rings = [SlotRing.create(config.frontend_queue_size, shape) for _ in range(config.frontends)]
            engine.start()
            try:
                await engine.warm_up()
            except Exception as exc:
                raise StartupError(f"{config.model}: the warm-up request failed: {exc}") from exc
        freeze_loaded_objects()
        self.links.open(engine, kind.items if kind is not None else None, self.rings, gpu_uuid)
        log.info("serving %s (%s) on %s to %d frontends", config.model_name, config.task, config.device,
                 config.frontends)

    def _check_shared_memory(self, shape: tuple[int, ...]) -> None:
        """The rings fit in /dev/shm (a container's is often 64 MiB): a page touched past its size is a SIGBUS."""
        per_image = shape[0] * shape[1] * shape[2]
        needed = self.config.frontends * self.config.frontend_queue_size * per_image
        if not SHARED_MEMORY.is_dir():
            return  # not Linux's tmpfs: Python's shared memory finds its own place
        free = shutil.disk_usage(SHARED_MEMORY).free
        if needed > free:
            raise StartupError(
                f"--frontends {self.config.frontends} x --frontend-queue-size {self.config.frontend_queue_size} "
                f"images of {per_image} bytes need {needed >> 20} MiB of shared memory, {SHARED_MEMORY} has "
                f"{free >> 20} MiB free: lower --frontend-queue-size, or mount a larger {SHARED_MEMORY} (Kubernetes: "
                "an emptyDir volume with medium Memory)")

    # --- frontends -----------------------------------------------------------------------------------------
    def _spawn_frontends(self, link_path: str) -> None:
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of this process's threads
        loop = asyncio.get_running_loop()
        for index in range(self.config.frontends):
            process = spawn.Process(target=frontend.main, args=(self.config, index, link_path),
                                    name=f"kubeinfer-frontend-{index}")
            process.start()
            log.info("started %s (pid %d)", process.name, process.pid)
            self.frontends.append(process)
            loop.add_reader(process.sentinel, self._frontend_exited, process)

    def _frontend_exited(self, process: BaseProcess) -> None:
        asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join(1.0)  # the sentinel closes as the process exits: its status follows at once
        _mark_dead(process.pid)
        if self.stopping.is_set():
            return
        log.error("%s (pid %s) exited with code %s; stopping the runtime so it restarts whole", process.name,
                  process.pid, process.exitcode)
        self.exit_code = 1
        self._signal_frontends(signal.SIGTERM)
        self.stopping.set()

    def _signal_frontends(self, sig: signal.Signals) -> None:
        for process in self.frontends:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)

    async def _wait_for_frontends(self) -> None:
        """Give the frontends their drain (delay + grace, and a little more)."""
        deadline = asyncio.get_running_loop().time() + (self.config.shutdown_delay + self.config.grace_period
                                                         + EXIT_WAIT_SECONDS)
        while any(p.is_alive() for p in self.frontends) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    def _kill_frontends(self) -> None:
        for process in self.frontends:
            if process.is_alive():
                log.warning("%s did not stop in time; killing it", process.name)
                process.kill()
                process.join(1)
            _mark_dead(process.pid)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._shutdown)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _reload(self) -> None:
        """SIGHUP: each frontend reloads what its task holds (labels), the engine what it holds (a gallery)."""
        self._signal_frontends(signal.SIGHUP)
        if self.engine is not None:
            log.info("SIGHUP: reloading")
            self.pool.submit(self.engine.reload)

    def _shutdown(self) -> None:
        self._signal_frontends(signal.SIGTERM)
        self.stopping.set()


def _mark_dead(pid: int | None) -> None:
    """Drop a gone process's live gauges (in-flight, queue depth) from the merged metrics."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)
