"""Recognition by embedding similarity: an image encoder plus a gallery of labelled vectors.

The gallery comes from ``--embeddings FILE`` (.npz or .npy + labels) or is built at
start from ``--base-data DIR``. It is replaced whole: a reload (the file changed, or
SIGHUP) builds the new gallery off to the side and then swaps one reference, so a
request uses exactly one gallery from start to end and none fails during a reload.
A failed reload keeps the current gallery and logs why.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kubeinfer.runtime.batching import DynamicBatcher
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.errors import Code, InferenceError, StartupError
from kubeinfer.runtime.gallery import (
    UNKNOWN,
    Gallery,
    GalleryError,
    build_from_directory,
    file_signature,
    l2_normalize,
    labels_path_for,
    load_encoder,
    load_file,
    scan_base_data,
)
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo, Thresholds
from kubeinfer.runtime.parameters import Parameters, check_range
from kubeinfer.runtime.tasks.base import Task, require_images

log = logging.getLogger(__name__)
MAX_TOP_K = 1000
PARAMETERS = ("threshold", "top_k")
POLL_SECONDS = 2.0  # how often the embeddings file's mtime/size/inode are compared
RELOAD_QUEUE_RETRY_SECONDS = 30.0  # how long a rebuild waits for room in a full batcher queue


@dataclass(frozen=True, slots=True)
class RecognizeOverrides:
    """Per-request parameters as sent; None keeps the runtime default."""

    threshold: float | None = None
    top_k: int | None = None

    @classmethod
    def from_parameters(cls, params: Parameters) -> RecognizeOverrides:
        """The one builder of recognition overrides, for every transport."""
        return cls(threshold=params.number("threshold"), top_k=params.integer("top_k"))


@dataclass(slots=True)
class Candidate:
    label: str
    similarity: float


@dataclass(slots=True)
class Recognition:
    label: str  # best gallery label, or "unknown" below the threshold
    similarity: float  # of the best gallery label
    known: bool
    candidates: list[Candidate] = field(default_factory=list)  # top-k labels, best first


class RecognizeTask(Task):
    """Encode in the shared batcher, then one matrix product of the request's vectors against the gallery."""

    name = "recognize"

    def __init__(self, config: ServeConfig, metrics: RuntimeMetrics, pool: ThreadPoolExecutor) -> None:
        super().__init__(config, metrics, pool)
        if (config.embeddings is None) == (config.base_data is None):
            raise StartupError("--task recognize needs exactly one gallery: --embeddings FILE or --base-data DIR")
        assert config.model is not None
        self._reload_lock = threading.Lock()
        self._signature = self._current_signature()
        # gallery problems that need no model surface first, before a possibly large encoder loads
        from_file = load_file(config.embeddings, config.labels) if config.embeddings is not None else None
        if config.base_data is not None:
            scan_base_data(config.base_data)
        self.encoder = load_encoder(config.model, config.device, image_size=config.image_size, mean=config.mean,
                                    std=config.std, channel_order=config.channel_order,
                                    resize_mode=config.resize_mode, optimize=config.torchscript_optimize)
        self.batcher: DynamicBatcher[np.ndarray, np.ndarray] = DynamicBatcher.from_config(
            "recognize", self._encode_batch, config, metrics)
        self._started = False
        self._gallery = self._matching(from_file) if from_file is not None else self._load(executor=pool)
        self._watcher: GalleryWatcher | None = (GalleryWatcher(self, POLL_SECONDS)
                                               if config.embeddings is not None else None)
        self._publish(self._gallery)
        log.info("gallery: %s", self._gallery.describe())

    @property
    def gallery(self) -> Gallery:
        """The current gallery; hold the returned reference for the whole of one request."""
        return self._gallery

    # -- lifecycle

    def start(self) -> None:
        self.batcher.start()
        self._started = True
        if self._watcher is not None:
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self.batcher.stop()

    def info(self, base: ModelInfo) -> ModelInfo:
        gallery = self._gallery
        return replace(base, model_format=self.encoder.format, input_size=self.encoder.preprocessing.input_size,
                       gallery_size=gallery.size, gallery_dimension=gallery.dimension,
                       gallery_labels=tuple(gallery.labels), top_k=self.config.top_k,
                       thresholds=Thresholds(similarity=self.config.similarity_threshold))

    # -- gallery loading and reloading

    def _current_signature(self) -> tuple[Any, ...]:
        c = self.config
        if c.embeddings is None:
            return ()
        return file_signature(c.embeddings, labels_path_for(c.embeddings, c.labels))

    def _load(self, executor: Executor | None) -> Gallery:
        """A complete new gallery (never visible to requests until swapped in), checked against the encoder."""
        c = self.config
        if c.embeddings is not None:
            gallery = load_file(c.embeddings, c.labels)
        else:
            assert c.base_data is not None
            gallery = build_from_directory(
                c.base_data, self.encoder.preprocess, self._encode_for_build, batch_size=c.gallery_batch_size,
                mode=c.gallery_mode, max_pixels=c.max_image_pixels, executor=executor)
        return self._matching(gallery)

    def _matching(self, gallery: Gallery) -> Gallery:
        """``gallery`` if its vectors have the encoder's dimension; GalleryError otherwise."""
        if gallery.dimension != self.encoder.output_size:
            raise GalleryError(f"gallery {gallery.source} has {gallery.dimension}-dimensional vectors but the "
                               f"encoder {self.config.model} outputs {self.encoder.output_size}")
        return gallery

    def reload(self) -> None:
        """SIGHUP: re-read the embeddings file or rebuild from the base-data folder (see ``swap_in_new_gallery``)."""
        self.swap_in_new_gallery()

    def swap_in_new_gallery(self) -> bool:
        """Build a whole new gallery off to the side, then swap the reference; False (logged) keeps the old one."""
        with self._reload_lock:
            signature = self._current_signature()  # taken first: a change during the load is seen by the next poll
            started = time.monotonic()
            try:
                gallery = self._load(executor=None)
            except (GalleryError, InferenceError) as exc:
                self._signature = signature
                log.error("gallery reload failed, still serving the previous gallery (%s): %s",
                          self._gallery.describe(), exc)
                return False
            except Exception:
                self._signature = signature
                log.exception("gallery reload failed, still serving the previous gallery")
                return False
            previous = self._gallery
            self._gallery = gallery  # the swap: one reference assignment
            self._signature = signature
            self._publish(gallery)
        log.info("gallery reloaded in %.2fs: %s (was %d vectors, %d labels)", time.monotonic() - started,
                 gallery.describe(), previous.size, len(previous.labels))
        return True

    def reload_if_changed(self) -> bool:
        """The watcher's check: reload when the embeddings file (or its labels file) differs from the last load."""
        current = self._current_signature()
        if current == self._signature or any(part is None for part in current):
            return False  # unchanged, or missing for a moment (being replaced): keep serving
        return self.swap_in_new_gallery()

    def _publish(self, gallery: Gallery) -> None:
        self.metrics.gallery_size.labels(self.metrics.model).set(gallery.size)

    def _encode_for_build(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Gallery images go through the shared batcher once serving, so one thread runs the model."""
        if not self._started:
            return self._encode_batch(inputs)
        deadline = time.monotonic() + RELOAD_QUEUE_RETRY_SECONDS
        while True:
            try:
                return asyncio.run(self.batcher.submit_many(inputs))
            except InferenceError as exc:
                if exc.code is not Code.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- serving

    def _encode_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The batcher's model call: raw encoder outputs, L2-normalised."""
        return list(l2_normalize(np.stack(self.encoder.forward(batch))))

    def resolve(self, overrides: RecognizeOverrides) -> tuple[float, int]:
        c = self.config
        threshold = c.similarity_threshold if overrides.threshold is None else overrides.threshold
        check_range("threshold", threshold, -1.0, 1.0)
        top_k = c.top_k if overrides.top_k is None else overrides.top_k
        check_range("top_k", top_k, 1, MAX_TOP_K)
        return float(threshold), int(top_k)

    async def serve_warm_up(self, images: list[ImageInput]) -> None:
        await self.recognize(images, RecognizeOverrides())

    def _prepare(self, image: ImageInput, index: int) -> np.ndarray:
        order = self.encoder.input_order
        return self.encoder.preprocess(self.decode(image, index, order), order)

    async def recognize(self, images: Sequence[ImageInput], overrides: RecognizeOverrides) -> list[Recognition]:
        require_images(images)
        threshold, top_k = self.resolve(overrides)
        with self.batcher.reserve(len(images)) as reservation:
            prepared = await self.map_in_pool(self._prepare, images, range(len(images)))
            vectors = await self.batcher.submit_many(prepared, reservation)
        gallery = self._gallery  # one gallery for the whole request, whatever a reload does meanwhile
        results = await self.in_pool(match, gallery, np.stack(vectors), threshold, top_k)
        self.metrics.images.labels(self.metrics.model, self.name).inc(len(images))
        return results


def match(gallery: Gallery, queries: np.ndarray, threshold: float, top_k: int) -> list[Recognition]:
    """Best label, known flag and top-k candidates per unit query vector."""
    finite = np.isfinite(queries).all(axis=1)
    if not finite.all():
        raise InferenceError(Code.INTERNAL, f"the encoder returned NaN or inf for image {int(np.argmin(finite))}")
    indices, similarities = gallery.top_k(queries, top_k)
    results = []
    for row_indices, row_similarities in zip(indices.tolist(), similarities.tolist(), strict=True):
        candidates = [Candidate(gallery.labels[i], s) for i, s in zip(row_indices, row_similarities, strict=True)]
        best = candidates[0]
        known = best.similarity >= threshold
        results.append(Recognition(best.label if known else UNKNOWN, best.similarity, known, candidates))
    return results


class GalleryWatcher:
    """A daemon thread polling the embeddings file's signature; a change triggers ``task.reload``."""

    def __init__(self, task: RecognizeTask, interval: float) -> None:
        self.task = task
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.task.reload_if_changed()
            except Exception:  # the watcher must outlive any one bad check
                log.exception("gallery watch failed")
