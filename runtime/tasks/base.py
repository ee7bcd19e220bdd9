"""What every task offers the data plane, and the request-side helpers they share."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, ClassVar, TypeVar

import numpy as np

from kubeinfer.runtime.config import Flag, ServeConfig, at_least
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.errors import invalid_argument
from kubeinfer.runtime.images import ImageInput, declared_pixels, decode, warm_up_pixels
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo

T = TypeVar("T")


# Flags more than one task reads.
TOP_K = Flag("top-k", int, 5, "classify: labels returned per image; recognize: gallery candidates per image",
             "classify, stream-classify and recognize", at_least(1, "top-k"))
MAX_STREAMS = Flag("max-streams", int, 1024, "open streams before new ones are refused (per frontend with "
                   "--frontends)", "stream-classify and video", at_least(1, "max-streams"))

# A lone image this small (a 200 x 200 JPEG decodes and letterboxes in about 0.2 ms) is prepared on the event
# loop: the round trip through the worker pool (two thread hand-offs and a loop wake-up) costs more than that.
INLINE_MAX_PIXELS = 40_000


def is_thumbnail(image: ImageInput) -> bool:
    """At most ``INLINE_MAX_PIXELS`` by its header or raw shape: cheaper to prepare on the loop than in the pool."""
    return 0 < declared_pixels(image) <= INLINE_MAX_PIXELS


class Task(ABC):
    """The request side of one task: what its RPCs do with a request, around the engine that runs the model (a
    ``LocalEngine`` here, or the model process's over a frontend's link: the task cannot tell). Per-task state
    (stream windows, video pipelines) lives here, in the process that owns the call."""

    name: ClassVar[str]

    def __init__(self, config: ServeConfig, engine: Engine[Any, Any, Any] | None, metrics: RuntimeMetrics,
                 pool: Executor) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.pool = pool

    @classmethod  # noqa: B027 - most tasks have no files of their own
    def preflight(cls, config: ServeConfig) -> None:
        """What can be checked before the model loads (the task's own files): a broken one fails in a second, not
        after a large model loaded."""

    def start(self) -> None:  # noqa: B027 - most tasks run no threads of their own
        """Start the task's own threads (not the engine's); called once it is built."""

    def stop(self) -> None:  # noqa: B027 - most tasks run no threads of their own
        """Stop the task's own threads; called after the transports drained, before the engine stops."""

    @abstractmethod
    def info(self, base: ModelInfo) -> ModelInfo:
        """``base`` (the runtime's part) with this task's fields filled in."""

    async def warm_up(self) -> None:
        """Run the whole request path (decode, preprocessing, the model at batch sizes 1 and --max-batch-size,
        postprocessing) on a synthetic image before the runtime reports ready; a failure stops the start."""
        image = warm_up_image()
        for size in sorted({1, self.config.max_batch_size}):
            await self.serve_warm_up([image] * size)

    async def serve_warm_up(self, images: list[ImageInput]) -> None:  # noqa: B027 - tasks without a model skip it
        """One synthetic request of ``images`` through the task's own path."""

    def reload(self) -> None:  # noqa: B027 - optional hook, most tasks have nothing to reload
        """Re-read files that may change while serving (SIGHUP)."""

    async def in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (decoding, pre/post-processing) in the worker pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def map_in_pool(self, fn: Callable[..., T], *arg_lists: Sequence[Any]) -> list[T]:
        """``fn`` over zipped argument lists in parallel in the pool; the first failure propagates."""
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self.pool, fn, *args) for args in zip(*arg_lists, strict=True)]
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def decode(self, image: ImageInput, index: int, order: str = "bgr") -> np.ndarray:
        """Decode one request image with the runtime's pixel guard (runs in the pool)."""
        return decode(image, index, self.config.max_image_pixels, order)


def warm_up_image() -> ImageInput:
    """``images.warm_up_pixels`` as a JPEG, decoded like any request image."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", warm_up_pixels())
    assert ok
    return ImageInput(encoded=encoded.tobytes())


def require_images(images: Sequence[ImageInput]) -> None:
    if not images:
        raise invalid_argument("the request holds no images")
