"""Recognition by embedding similarity: images in, each one's best gallery labels out.

The encoder and its gallery are the encoder engine's (``engine.encoder``: loading, reloads, the search itself);
this side decodes and resizes the request's images, reads its threshold and top k, and reports the gallery the
engine holds now.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace

import numpy as np

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.engine.encoder import EncoderFacts, Match
from kubeinfer.runtime.gallery import Recognition
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo, Thresholds
from kubeinfer.runtime.parameters import Parameters, check_range
from kubeinfer.runtime.tasks.base import Task, require_images

log = logging.getLogger(__name__)
MAX_TOP_K = 1000
PARAMETERS = ("threshold", "top_k")


class RecognizeTask(Task):
    """Decode and resize in the pool; the engine encodes in its shared batcher and matches against its gallery."""

    name = "recognize"

    def __init__(self, config: ServeConfig, engine: Engine[np.ndarray, Recognition, EncoderFacts],
                 metrics: RuntimeMetrics, pool: Executor) -> None:
        super().__init__(config, engine, metrics, pool)
        self.engine = engine

    def info(self, base: ModelInfo) -> ModelInfo:
        facts = self.engine.facts
        gallery = facts.gallery
        return replace(base, model_format=facts.format, input_size=facts.preprocessing.input_size,
                       gallery_size=gallery.size, gallery_dimension=gallery.dimension,
                       gallery_labels=tuple(gallery.labels), top_k=self.config.top_k,
                       thresholds=Thresholds(similarity=self.config.similarity_threshold))

    def match(self, params: Parameters) -> Match:
        """The request's threshold and top k (defaults filled in, ranges checked)."""
        c = self.config
        requested_threshold, requested_top_k = params.number("threshold"), params.integer("top_k")
        threshold = c.similarity_threshold if requested_threshold is None else requested_threshold
        check_range("threshold", threshold, -1.0, 1.0)
        top_k = c.top_k if requested_top_k is None else requested_top_k
        check_range("top_k", top_k, 1, MAX_TOP_K)
        return Match(float(threshold), int(top_k))

    async def serve_warm_up(self, images: list[ImageInput]) -> None:
        await self.recognize(images, Parameters({}))

    def _prepare(self, image: ImageInput, index: int) -> np.ndarray:
        preprocessing = self.engine.facts.preprocessing
        order = preprocessing.channel_order
        return preprocessing.resize(self.decode(image, index, order), order)

    async def recognize(self, images: Sequence[ImageInput], params: Parameters) -> list[Recognition]:
        require_images(images)
        match = self.match(params)
        with self.engine.reserve(len(images)) as reservation:
            prepared = await self.map_in_pool(self._prepare, images, range(len(images)))
            results = await self.engine.infer(prepared, reservation, match)
        self.metrics.images.labels(self.metrics.model, self.name).inc(len(images))
        return results
