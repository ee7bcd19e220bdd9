"""The model process of ``--frontends N``: spawns the frontends, loads the model once, batches for all of them.

It listens on no port: the frontends do (``SO_REUSEPORT``; the kernel spreads connections across them). Each
frontend connects to a Unix socket here; once the model is loaded and warmed it gets a hello with the model's
facts and its own ring of image slots in shared memory, then sends requests (slot numbers and box selections)
that go through the one dynamic batcher, answered with the selected boxes or class probabilities (``served``
says how, per task).

SIGTERM or SIGINT: passed on to the frontends, which drain as the one-process runtime does; once they are gone
the batcher stops and the process exits 0. SIGHUP: passed on, so each frontend reloads what it holds (a
classifier's labels). A frontend that dies on its own stops the others and the process
exits 1, so the pod restarts whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess
from pathlib import Path

from kubeinfer.runtime.collector import freeze_loaded_objects
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.errors import Code, InferenceError, StartupError
from kubeinfer.runtime.frontends import frontend, link
from kubeinfer.runtime.frontends.ring import SlotRing
from kubeinfer.runtime.frontends.served import ServedModel, served
from kubeinfer.runtime.gpu_metrics import device_uuid
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.models import threads
from kubeinfer.runtime.server import STOP_SECONDS, configure_logging
from kubeinfer.runtime.tasks import build_task
from kubeinfer.runtime.tasks.base import Task

log = logging.getLogger("kubeinfer.runtime.model-process")
SHARED_MEMORY = Path("/dev/shm")
EXIT_WAIT_SECONDS = 5.0  # after a frontend's delay and grace: how long before it is killed


def serve(config: ServeConfig) -> int:
    """Run the model process and its frontends until SIGTERM/SIGINT; 0 after a clean drain, 1 otherwise."""
    configure_logging(config, "model-process")
    try:
        return asyncio.run(ModelProcess(config).run())
    except StartupError as exc:
        print(f"kubeinfer serve: {exc}", file=sys.stderr)
        return 1


class ModelProcess:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = RuntimeMetrics(config.model_name)
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="kubeinfer-worker")
        self.stopping = asyncio.Event()
        self.loaded = asyncio.Event()
        self.exit_code = 0
        self.model: ServedModel | None = None
        self.gpu_uuid = ""
        self.rings: list[SlotRing] = []
        self.frontends: list[BaseProcess] = []
        self._answers: set[asyncio.Task[None]] = set()
        self._links: set[asyncio.StreamWriter] = set()

    async def run(self) -> int:
        workdir = Path(tempfile.mkdtemp(prefix="kubeinfer-model-"))
        link_path = workdir / "link.sock"
        server = await asyncio.start_unix_server(self._serve_link, path=str(link_path))
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
            self._close_links()  # frontends still waiting for their hello give up and exit
            raise
        finally:
            self._signal_frontends(signal.SIGTERM)
            await self._wait_for_frontends()
            self._kill_frontends()
            server.close()
            self._close_links()
            if self.model is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(self.model.task.stop), STOP_SECONDS * 4)
            for ring in self.rings:
                ring.close()
            shutil.rmtree(workdir, ignore_errors=True)
            self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
        return self.exit_code

    async def _load(self) -> None:
        task = await threads.in_passing_thread(self._build_task)
        self.model = served(task, self.pool)
        self.gpu_uuid = device_uuid(self.config.device)
        shape = self.model.slot_shape()
        self._check_shared_memory(shape)
        self.rings = [SlotRing.create(self.config.frontend_queue_size, shape) for _ in range(self.config.frontends)]
        task.start()
        try:
            await task.warm_up()
        except Exception as exc:
            raise StartupError(f"{self.config.model}: the warm-up request failed: {exc}") from exc
        freeze_loaded_objects()
        self.loaded.set()
        log.info("serving %s (%s) on %s to %d frontends", self.config.model_name, self.config.task,
                 self.config.device, self.config.frontends)

    def _build_task(self) -> Task:
        threads.configure(self.config.model_threads, spinning=self.config.model_spinning,
                          instances=self.config.model_instances)
        return build_task(self.config, self.metrics, self.pool)

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

    def _close_links(self) -> None:
        for writer in self._links:
            writer.close()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._shutdown)
        loop.add_signal_handler(signal.SIGHUP, self._signal_frontends, signal.SIGHUP)  # each reloads (labels)

    def _shutdown(self) -> None:
        self._signal_frontends(signal.SIGTERM)
        self.stopping.set()

    # --- the link ------------------------------------------------------------------------------------------
    async def _serve_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One frontend's link: hello once the model is ready, then its requests, each answered when done."""
        self._links.add(writer)
        try:
            hello = await link.receive(reader)
            if not isinstance(hello, link.FrontendHello) or not 0 <= hello.index < self.config.frontends:
                return
            await self.loaded.wait()
            assert self.model is not None
            ring = self.rings[hello.index]
            facts = self.model.facts(self.gpu_uuid)
            await link.send(writer, link.Hello(facts, ring.name, ring.slots, ring.shape))
            while (request := await link.receive(reader)) is not None:
                assert isinstance(request, link.BatchRequest)
                answer = asyncio.get_running_loop().create_task(self._answer(request, ring, writer))
                self._answers.add(answer)
                answer.add_done_callback(self._answers.discard)
        finally:
            self._links.discard(writer)
            writer.close()

    async def _answer(self, request: link.BatchRequest, ring: SlotRing, writer: asyncio.StreamWriter) -> None:
        assert self.model is not None
        try:
            reply = link.BatchReply(request.id, await self.model.answer(request.items, ring))
        except InferenceError as exc:
            reply = link.BatchReply(request.id, [], link.LinkError.of(exc))
        except Exception:
            log.exception("a frontend's request of %d images failed", len(request.items))
            failed = InferenceError(Code.INTERNAL, "internal error: the model process failed on this request")
            reply = link.BatchReply(request.id, [], link.LinkError.of(failed))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await link.send(writer, reply)


def _mark_dead(pid: int | None) -> None:
    """Drop a gone process's live gauges (in-flight, queue depth) from the merged metrics."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)
