"""The encoder kind: an image model whose outputs are embeddings, and the gallery they are searched against.

The gallery comes from ``--embeddings FILE`` (.npz or .npy + labels) or is built at start from ``--base-data
DIR``. It lives here, beside the model (in the model process behind the frontends), and is replaced whole: a
reload (the file changed, or SIGHUP) builds the new gallery off to the side and then swaps one reference, so a
request is matched against exactly one gallery and none fails during a reload. A failed reload keeps the current
gallery and logs why. Each request's vectors are matched in the worker pool right after its batch step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kubeinfer.runtime.config import Flag, ServeConfig, at_least, existing
from kubeinfer.runtime.engine.base import EngineKind, ResizedImages
from kubeinfer.runtime.engine.local import LocalEngine
from kubeinfer.runtime.errors import Code, InferenceError, StartupError
from kubeinfer.runtime.gallery import (
    Gallery,
    GalleryError,
    Recognition,
    build_from_directory,
    file_signature,
    l2_normalize,
    labels_path_for,
    load_file,
    match,
    scan_base_data,
)
from kubeinfer.runtime.images import warm_up_pixels
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.models.preprocessing import Preprocessing

log = logging.getLogger(__name__)
GROUP = "recognize: the gallery"
EMBEDDINGS = Flag("embeddings", Path, None,
                  "gallery: .npz with embeddings [N,D] and labels [N], or .npy beside a labels file", GROUP,
                  existing("embeddings"))
BASE_DATA = Flag("base-data", Path, None, "gallery built at start from DIR/<label>/<images>", GROUP,
                 existing("base-data"))
GALLERY_BATCH_SIZE = Flag("gallery-batch-size", int, 32, "images per batch while building a gallery from "
                          "--base-data", GROUP, at_least(1, "gallery-batch-size"))
GALLERY_MODE = Flag("gallery-mode", str, "centroid", "one vector per label (centroid) or per image (exemplar)",
                    GROUP, choices=("centroid", "exemplar"))
POLL_SECONDS = 2.0  # how often the embeddings file's mtime/size/inode are compared
RELOAD_QUEUE_RETRY_SECONDS = 30.0  # how long a rebuild waits for room in a full batcher queue


@dataclass(frozen=True, slots=True)
class GallerySummary:
    """The gallery as GetModelInfo reports it."""

    size: int
    dimension: int
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EncoderFacts:
    """What the request side needs of an encoder: how to resize an image for it, its file's format, and the
    gallery it is matched against now."""

    preprocessing: Preprocessing
    output_size: int
    format: str
    gallery: GallerySummary


@dataclass(frozen=True, slots=True)
class Match:
    """A request's gallery search: the similarity a match needs to be known, and how many candidates it lists."""

    threshold: float
    top_k: int


def load_encoder(model: Path, device: str, *, image_size: int | None = None,
                 mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                 channel_order: str | None = None, resize_mode: str | None = None, optimize: bool = True) -> Any:
    """The image model whose raw outputs are embeddings, whatever its sidecar's ``output`` says.

    Ultralytics classifiers keep their class-probability vector as the embedding.
    """
    from kubeinfer.runtime.models.image_model import ImageModel  # the model libraries: only here

    preprocessing = Preprocessing.resolve(model, input_size=image_size, mean=mean, std=std,
                                          channel_order=channel_order, resize_mode=resize_mode)
    if preprocessing.output != "embeddings":
        log.info("using the raw outputs of %s as embeddings (not as %s)", model, preprocessing.output)
        preprocessing = replace(preprocessing, output="embeddings")
    return ImageModel(model, device, preprocessing, optimize=optimize)


class EncoderEngine(LocalEngine[np.ndarray, Recognition, EncoderFacts]):
    """Resized uint8 images in, each image's best gallery labels out (``Match`` says how many, from what
    similarity on)."""

    def __init__(self, encoder: Any, config: ServeConfig, metrics: RuntimeMetrics, pool: Executor,
                 from_file: Gallery | None) -> None:
        self.encoder = encoder
        self._reload_lock = threading.Lock()
        self._signature = self._current_signature(config)
        self._started = False
        summary = GallerySummary(0, 0, ())
        super().__init__("recognize", EncoderFacts(encoder.preprocessing, encoder.output_size, encoder.format,
                                                   summary), self._encode_batch, config, metrics, pool)
        self._gallery = self._matching(from_file) if from_file is not None else self._load(executor=pool)
        self._watcher = GalleryWatcher(self, POLL_SECONDS) if config.flag(EMBEDDINGS) is not None else None
        self._publish(self._gallery)
        log.info("gallery: %s", self._gallery.describe())

    @classmethod
    def load(cls, config: ServeConfig, metrics: RuntimeMetrics, pool: Executor) -> EncoderEngine:
        """The gallery's own problems surface first, before a possibly large encoder loads."""
        embeddings, base_data = config.flag(EMBEDDINGS), config.flag(BASE_DATA)
        if (embeddings is None) == (base_data is None):
            raise StartupError("--task recognize needs exactly one gallery: --embeddings FILE or --base-data DIR")
        assert config.model is not None
        from_file = load_file(embeddings, config.labels) if embeddings is not None else None
        if base_data is not None:
            scan_base_data(base_data)
        encoder = load_encoder(config.model, config.device, image_size=config.image_size, mean=config.mean,
                               std=config.std, channel_order=config.channel_order, resize_mode=config.resize_mode,
                               optimize=config.torchscript_optimize)
        return cls(encoder, config, metrics, pool, from_file)

    @property
    def gallery(self) -> Gallery:
        """The current gallery; hold the returned reference for the whole of one request."""
        return self._gallery

    # -- lifecycle

    def start(self) -> None:
        super().start()
        self._started = True
        if self._watcher is not None:
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        super().stop()

    def reload(self) -> None:
        """SIGHUP: re-read the embeddings file or rebuild from the base-data folder (see ``swap_in_new_gallery``)."""
        self.swap_in_new_gallery()

    # -- serving

    def _encode_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The batcher's model call: raw encoder outputs, L2-normalised."""
        return list(l2_normalize(np.stack(self.encoder.forward(batch))))

    async def finish(self, outputs: list[np.ndarray], items: Sequence[np.ndarray],
                     options: object | None) -> list[Recognition]:
        """The request's vectors against one gallery, whatever a reload does meanwhile (in the pool)."""
        assert isinstance(options, Match)
        return await self.in_pool(match, self._gallery, np.stack(outputs), options.threshold, options.top_k)

    def warm_up_request(self) -> tuple[np.ndarray, object | None]:
        item = self.facts.preprocessing.resize(warm_up_pixels(), "bgr")
        return item, Match(threshold=1.0, top_k=1)

    # -- gallery loading and reloading

    @staticmethod
    def _current_signature(config: ServeConfig) -> tuple[Any, ...]:
        embeddings = config.flag(EMBEDDINGS)
        if embeddings is None:
            return ()
        return file_signature(embeddings, labels_path_for(embeddings, config.labels))

    def _load(self, executor: Executor | None) -> Gallery:
        """A complete new gallery (never visible to requests until swapped in), checked against the encoder."""
        c = self.config
        embeddings, base_data = c.flag(EMBEDDINGS), c.flag(BASE_DATA)
        if embeddings is not None:
            gallery = load_file(embeddings, c.labels)
        else:
            assert base_data is not None
            gallery = build_from_directory(
                base_data, self.encoder.preprocess, self._encode_for_build, batch_size=c.flag(GALLERY_BATCH_SIZE),
                mode=c.flag(GALLERY_MODE), max_pixels=c.max_image_pixels, executor=executor)
        return self._matching(gallery)

    def _matching(self, gallery: Gallery) -> Gallery:
        """``gallery`` if its vectors have the encoder's dimension; GalleryError otherwise."""
        if gallery.dimension != self.encoder.output_size:
            raise GalleryError(f"gallery {gallery.source} has {gallery.dimension}-dimensional vectors but the "
                               f"encoder {self.config.model} outputs {self.encoder.output_size}")
        return gallery

    def swap_in_new_gallery(self) -> bool:
        """Build a whole new gallery off to the side, then swap the reference; False (logged) keeps the old one."""
        with self._reload_lock:
            signature = self._current_signature(self.config)  # first: a change during the load is seen next time
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
        current = self._current_signature(self.config)
        if current == self._signature or any(part is None for part in current):
            return False  # unchanged, or missing for a moment (being replaced): keep serving
        return self.swap_in_new_gallery()

    def _publish(self, gallery: Gallery) -> None:
        self.metrics.gallery_size.labels(self.metrics.model).set(gallery.size)
        self.publish(replace(self.facts, gallery=GallerySummary(gallery.size, gallery.dimension, gallery.labels)))

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


class GalleryWatcher:
    """A daemon thread polling the embeddings file's signature; a change triggers a reload."""

    def __init__(self, engine: EncoderEngine, interval: float) -> None:
        self.engine = engine
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
                self.engine.reload_if_changed()
            except Exception:  # the watcher must outlive any one bad check
                log.exception("gallery watch failed")


ENCODER: EngineKind[np.ndarray] = EngineKind("encoder", EncoderEngine.load, ResizedImages(),
                                              flags=(EMBEDDINGS, BASE_DATA, GALLERY_BATCH_SIZE, GALLERY_MODE))
