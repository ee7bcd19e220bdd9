"""Image classification: top-k labels per image (Classify: native gRPC, ``POST /v1/classify`` and the Open
Inference Protocol) and one averaged prediction per clip (ClassifyClip).

The model is the classifier engine's (``engine.classifier``): TorchScript, ONNX or ultralytics ``-cls``. Labels
live here, on the request side: from ``--labels`` (see ``kubeinfer.runtime.labels`` for the formats), else from
the model (ultralytics), else they are the class indices; SIGHUP re-reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import numpy as np

from kubeinfer.runtime import codec
from kubeinfer.runtime.concurrency import ordered_map
from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.engine.classifier import CLASSIFIER, ClassifierFacts
from kubeinfer.runtime.errors import StartupError, invalid_argument
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.labels import check_count, load_labels
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo
from kubeinfer.runtime.oip.tensors import Tensor, TensorSpec, labels_tensor, padded
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.base import TOP_K, Task, is_thumbnail, require_images
from kubeinfer.runtime.tasks.registry import ImagesRpc, OipOutputs, StreamingRpc, TaskSpec, register
from kubeinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)
PARAMETERS = ("top_k",)
SORTED_IN_PYTHON = 256  # classes; beyond, numpy's sort is the faster one


@dataclass(frozen=True, slots=True)
class Classification:
    label: str
    class_id: int
    score: float  # probability


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    top: list[Classification]  # best first


@dataclass(frozen=True, slots=True)
class ClipFrameInput:
    """One frame of a clip as received; ``top_k`` is read from the first frame."""

    image: ImageInput
    top_k: int | None = None


@dataclass(frozen=True, slots=True)
class ClipResult:
    result: ClassifyResult  # from the mean of the frames' class probabilities
    frames: int


class ClassifyTask(Task):
    """Classify: decode + resize in the pool, one batched forward for all callers, top-k per image."""

    name = "classify"

    def __init__(self, config: ServeConfig, engine: Engine[np.ndarray, np.ndarray, ClassifierFacts],
                 metrics: RuntimeMetrics, pool: Executor) -> None:
        super().__init__(config, engine, metrics, pool)
        self.engine = engine
        self.facts = engine.facts
        self.labels = self._resolve_labels(load_labels(config.labels) if config.labels is not None else None)
        # frames of one clip or stream call in flight at once: enough to fill a batch, bounded against floods
        self.pipeline_depth = max(2, 2 * config.max_batch_size)

    @classmethod
    def preflight(cls, config: ServeConfig) -> None:
        """A bad labels file fails before the model loads."""
        if config.labels is not None:
            load_labels(config.labels)

    def _resolve_labels(self, given: list[str] | None) -> list[str]:
        """--labels (one per model output), else the model's own names, else the class indices."""
        facts, path = self.facts, self.config.model
        assert path is not None  # ServeConfig.validate requires a model for this task
        if given is not None:
            assert self.config.labels is not None
            check_count(given, facts.output_size, self.config.labels, path)
            return given
        if facts.class_names:
            if len(facts.class_names) != facts.output_size:
                raise StartupError(f"model {path} names {len(facts.class_names)} classes but outputs "
                                   f"{facts.output_size}; give --labels")
            return list(facts.class_names)
        log.warning("no --labels for %s: classes are reported by index", path)
        return [str(i) for i in range(facts.output_size)]

    def reload(self) -> None:
        """SIGHUP re-reads --labels; a broken or mismatched file is logged and the current labels stay."""
        if self.config.labels is None:
            return
        try:
            labels = load_labels(self.config.labels)
            assert self.config.model is not None
            check_count(labels, self.facts.output_size, self.config.labels, self.config.model)
        except StartupError as exc:
            log.error("labels not reloaded: %s", exc)
            return
        self.labels = labels
        log.info("reloaded %d labels from %s", len(labels), self.config.labels)

    def info(self, base: ModelInfo) -> ModelInfo:
        return replace(base, model_format=self.facts.format, labels=tuple(self.labels),
                       input_size=self.facts.preprocessing.input_size, top_k=self.config.flag(TOP_K))

    # -- shared by every classification RPC

    def resolve_top_k(self, requested: int | None) -> int:
        """The request's top_k (at least 1), else --top-k; never more than the number of classes."""
        if requested is not None and requested < 1:
            raise invalid_argument(f"top_k must be at least 1, got {requested}")
        return min(self.config.flag(TOP_K) if requested is None else requested, len(self.labels))

    def top(self, probabilities: np.ndarray, k: int) -> ClassifyResult:
        """The k most probable classes, best first (ties: lower class id first: both sorts are stable).

        Up to ``SORTED_IN_PYTHON`` classes they are sorted as a Python list: ``np.argsort`` drops the GIL, and the
        event loop then waits for the batcher's thread to give it back (``models.stacking``)."""
        labels = self.labels
        if len(probabilities) <= SORTED_IN_PYTHON:
            values = probabilities.tolist()
            best = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:k]
            return ClassifyResult([Classification(labels[i], i, values[i]) for i in best])
        order = np.argsort(-probabilities, kind="stable")[:k]
        return ClassifyResult([Classification(labels[i], int(i), float(probabilities[i])) for i in order])

    def _prepare(self, image: ImageInput, index: int) -> np.ndarray:
        """Decoded straight into the model's channel order, resized to its input (uint8 HWC; the batch step
        normalises)."""
        preprocessing = self.facts.preprocessing
        order = preprocessing.channel_order
        return preprocessing.resize(self.decode(image, index, order), order)

    def _prepares_inline(self, image: ImageInput) -> bool:
        """Raw RGB pixels at the model's size (decoding and preprocessing them returns a view of the request)
        or a thumbnail: cheaper on the event loop than the round trip through the pool."""
        preprocessing = self.facts.preprocessing
        size = preprocessing.input_size
        if image.pixels is not None:
            return (image.channels, image.height, image.width, preprocessing.channel_order) == (3, size, size, "rgb")
        return is_thumbnail(image)

    async def probabilities(self, images: Sequence[ImageInput], first_index: int = 0) -> list[np.ndarray]:
        """Class probabilities per image, through the engine's one batcher."""
        with self.engine.reserve(len(images)) as reservation:
            if len(images) == 1 and self._prepares_inline(images[0]):
                prepared = [self._prepare(images[0], first_index)]
            else:
                prepared = await self.map_in_pool(self._prepare, images,
                                                  range(first_index, first_index + len(images)))
            return await self.engine.infer(prepared, reservation)

    async def serve_warm_up(self, images: list[ImageInput]) -> None:
        await self.classify(images, Parameters({}))

    # -- RPCs

    async def classify(self, images: Sequence[ImageInput], params: Parameters) -> list[ClassifyResult]:
        require_images(images)
        k = self.resolve_top_k(params.integer("top_k"))
        outputs = await self.probabilities(images)
        self.metrics.images.labels(self.metrics.model, self.name).inc(len(images))
        return [self.top(p, k) for p in outputs]

    async def classify_clip(self, frames: AsyncIterable[ClipFrameInput]) -> ClipResult:
        """Mean class probabilities over every frame of the clip; frames are batched as they arrive.

        When frames fail, the error of the earliest failing one is raised (``ordered_map`` answers in order).
        """
        total = np.zeros(len(self.labels), dtype=np.float64)
        count = 0
        top_k: list[int] = []  # resolved from the first frame
        index = itertools.count()

        def start(frame: ClipFrameInput) -> asyncio.Future[list[np.ndarray]]:
            if not top_k:
                top_k.append(self.resolve_top_k(frame.top_k))
            return asyncio.ensure_future(self.probabilities([frame.image], next(index)))

        async with contextlib.aclosing(ordered_map(aiter(frames), start, self.pipeline_depth)) as outputs:
            async for (probabilities,) in outputs:
                total += probabilities
                count += 1
        if count == 0:
            raise invalid_argument("the clip holds no frames")
        self.metrics.frames.labels(self.metrics.model, self.name).inc(count)
        return ClipResult(self.top((total / count).astype(np.float32), top_k[0]), count)


# -- the RPCs: their codecs, and Classify's answers as tensors

def classify_result_to_proto(result: ClassifyResult) -> pb.ClassifyResult:
    return pb.ClassifyResult(top=[pb.Classification(label=c.label, class_id=c.class_id, score=c.score)
                                  for c in result.top])


def classify_response_to_proto(results: list[ClassifyResult]) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(results=[classify_result_to_proto(r) for r in results])


def classify_tensors(results: list[ClassifyResult]) -> list[Tensor]:
    tops = [r.top for r in results]
    k = max((len(top) for top in tops), default=0)
    return [
        labels_tensor("labels", [[c.label for c in top] for top in tops], k),
        Tensor("scores", "FP32", padded([[c.score for c in top] for top in tops], k, 0.0, np.float32)),
        Tensor("classes", "INT32", padded([[c.class_id for c in top] for top in tops], k, -1, np.int32)),
    ]


async def clip_frames_from_proto(frames: AsyncIterator[pb.ClipFrame]) -> AsyncIterator[ClipFrameInput]:
    async for frame in frames:
        yield ClipFrameInput(codec.image_from_proto(frame.image), frame.top_k if frame.HasField("top_k") else None)


async def classify_clip(task: ClassifyTask, frames: AsyncIterator[pb.ClipFrame]) -> pb.ClipResult:
    result = await task.classify_clip(clip_frames_from_proto(frames))
    return pb.ClipResult(result=classify_result_to_proto(result.result), frames=result.frames)


# Outputs: labels BYTES [N,K], scores FP32 [N,K], classes INT32 [N,K] (top-k, best first; -1 and "" pad).
CLASSIFY = ImagesRpc(
    "Classify", pb.ClassifyRequest, pb.ClassifyResponse, PARAMETERS,
    lambda request: Parameters(codec.present_fields(request, "top_k")),
    lambda task, images, params: task.classify(images, params),
    classify_response_to_proto, rest="classify",
    oip=OipOutputs((TensorSpec("labels", "BYTES", (-1, -1)), TensorSpec("scores", "FP32", (-1, -1)),
                    TensorSpec("classes", "INT32", (-1, -1))), classify_tensors))
CLASSIFY_CLIP = StreamingRpc("ClassifyClip", pb.ClipFrame, pb.ClipResult, requests_stream=True,
                             responses_stream=False, handle=classify_clip)
FLAGS = (TOP_K,)

register(TaskSpec("classify", ClassifyTask, CLASSIFIER, (CLASSIFY, CLASSIFY_CLIP), oip=CLASSIFY, flags=FLAGS))
