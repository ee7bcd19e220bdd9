"""The transport-neutral data plane: every transport calls these methods; errors are InferenceErrors.

A feature is written once here and in its task module, and reached from gRPC, REST and the Open Inference
Protocol alike: the transports hand it a registered RPC (``tasks.registry``) and its request. Which task serves
which RPC is checked here and only here (``served``). The data plane loads no model library itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from kubeinfer import __version__
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.errors import Overloaded, PayloadTooLarge, Unavailable, WrongTask
from kubeinfer.runtime.images import ImageInput, declared_pixels
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import Batching, ModelInfo
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks import registry
from kubeinfer.runtime.tasks.registry import ImagesRpc, StreamingRpc
from kubeinfer.runtime.traffic import TrafficFile

if TYPE_CHECKING:
    from kubeinfer.runtime.tasks.base import Task

R = TypeVar("R")


class ByteBudget:
    """The request bytes being served at once, over every transport (--max-inflight-bytes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def acquire(self, size: int) -> int:
        """Count ``size`` bytes in (release them with ``release``); Overloaded when they do not fit now."""
        if self.used + size > self.limit:
            raise Overloaded(f"{self.used} request bytes are being served, {size} more would pass the limit of "
                             f"{self.limit} (--max-inflight-bytes); retry later")
        self.used += size
        return size

    def release(self, size: int) -> None:
        self.used -= size


class DataPlane:
    """Holds the served task and the runtime's lifecycle state (loading, ready, draining), and checks each
    request's limits before any work is done for it."""

    def __init__(self, config: ServeConfig, metrics: RuntimeMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.task: Task | None = None
        self.draining = False
        self.request_bytes = ByteBudget(config.max_inflight_bytes)
        self.traffic = TrafficFile(config.traffic_file, metrics)  # the rollout's table (--traffic-file), kept current
        self.traffic.start()

    @property
    def ready(self) -> bool:
        return self.task is not None and not self.draining

    def attach(self, task: Task) -> None:
        self.task = task
        self.metrics.model_ready.labels(self.metrics.model).set(1)

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.model_ready.labels(self.metrics.model).set(0)

    def served(self, rpc: str) -> Task:
        """The task if loaded and serving ``rpc``; UNAVAILABLE or FAILED_PRECONDITION otherwise.

        Transports may call it before reading a request's body. While draining, requests that still
        arrive are served: the transports stop accepting them.
        """
        if self.task is None:
            raise Unavailable("the model is still loading")
        if not registry.spec_of(self.config.task).serves(rpc):
            tasks = registry.tasks_serving(rpc)
            raise WrongTask(f"{rpc} needs a runtime serving task {' or '.join(tasks)}; "
                            f"this one serves {self.config.task!r}")
        return self.task

    def check_images(self, images: Sequence[ImageInput]) -> None:
        """--max-images-per-request and --max-request-pixels (from headers), before anything is decoded."""
        c = self.config
        if len(images) > c.max_images_per_request:
            raise PayloadTooLarge(f"the request holds {len(images)} images, the limit is "
                                  f"{c.max_images_per_request} (--max-images-per-request)")
        total = 0
        for image in images:
            total += declared_pixels(image)
            if total > c.max_request_pixels:
                raise PayloadTooLarge(f"the request's images hold more than {c.max_request_pixels} pixels together "
                                      "(--max-request-pixels)")

    def model_info(self) -> ModelInfo:
        c = self.config
        # the file's name, never its path: clients have no business with the server's file system
        info = ModelInfo(task=c.task, model_name=c.model_name, model_path=c.model.name if c.model else "",
                         device=c.device, version=__version__,
                         batching=Batching(c.max_batch_size, c.max_batch_delay_ms, c.max_queue_size,
                                           c.model_instances, c.model_threads),
                         revision=c.revision, traffic=self.traffic.table)
        return self.task.info(info) if self.task is not None else info

    async def infer_images(self, rpc: ImagesRpc[R], images: Sequence[ImageInput], params: Parameters) -> list[R]:
        """One request of an images RPC: its task, the request's limits, then the task's answer per image."""
        task = self.served(rpc.name)
        self.check_images(images)
        return await rpc.run(task, images, params)

    def stream(self, rpc: StreamingRpc, request: Any) -> Any:
        """One call of a streaming RPC: its task's handling of ``request`` (a message, or an async iterator of
        them): an awaitable response, or an async iterator of them (close it when done)."""
        return rpc.handle(self.served(rpc.name), request)
