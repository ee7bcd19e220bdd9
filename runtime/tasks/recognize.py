"""Recognition by embedding similarity: images in, each one's best gallery labels out (Recognize: native gRPC,
``POST /v1/recognize`` and the Open Inference Protocol).

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

from kubeinfer.runtime import codec
from kubeinfer.runtime.config import Flag, ServeConfig, within
from kubeinfer.runtime.engine.base import Engine
from kubeinfer.runtime.engine.encoder import ENCODER, EncoderFacts, Match
from kubeinfer.runtime.gallery import Recognition
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.model_info import ModelInfo, Thresholds
from kubeinfer.runtime.oip.tensors import Tensor, TensorSpec, bytes_tensor, labels_tensor, padded
from kubeinfer.runtime.parameters import Parameters, check_range
from kubeinfer.runtime.tasks.base import TOP_K, Task, require_images
from kubeinfer.runtime.tasks.registry import ImagesRpc, OipOutputs, TaskSpec, register
from kubeinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)
MAX_TOP_K = 1000
PARAMETERS = ("threshold", "top_k")
SIMILARITY_THRESHOLD = Flag("similarity-threshold", float, 0.8, "cosine similarity at or above which a match is "
                            "known", "recognize", within(-1.0, 1.0, "similarity-threshold"))


class RecognizeTask(Task):
    """Decode and resize in the pool; the engine encodes in its shared batcher and matches against its gallery."""

    name = "recognize"

    def __init__(self, config: ServeConfig, engine: Engine[np.ndarray, Recognition, EncoderFacts],
                 metrics: RuntimeMetrics, pool: Executor) -> None:
        super().__init__(config, engine, metrics, pool)
        self.engine = engine
        self.default = Match(config.flag(SIMILARITY_THRESHOLD), config.flag(TOP_K))

    def info(self, base: ModelInfo) -> ModelInfo:
        facts = self.engine.facts
        gallery = facts.gallery
        return replace(base, model_format=facts.format, input_size=facts.preprocessing.input_size,
                       gallery_size=gallery.size, gallery_dimension=gallery.dimension,
                       gallery_labels=tuple(gallery.labels), top_k=self.default.top_k,
                       thresholds=Thresholds(similarity=self.default.threshold))

    def match(self, params: Parameters) -> Match:
        """The request's threshold and top k (defaults filled in, ranges checked)."""
        requested_threshold, requested_top_k = params.number("threshold"), params.integer("top_k")
        threshold = self.default.threshold if requested_threshold is None else requested_threshold
        check_range("threshold", threshold, -1.0, 1.0)
        top_k = self.default.top_k if requested_top_k is None else requested_top_k
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


# -- the RPC: its codec, and its answers as tensors

def response_to_proto(results: list[Recognition]) -> pb.RecognizeResponse:
    return pb.RecognizeResponse(results=[
        pb.Recognition(label=r.label, similarity=r.similarity, known=r.known,
                       candidates=[pb.Candidate(label=c.label, similarity=c.similarity) for c in r.candidates])
        for r in results
    ])


def tensors(results: list[Recognition]) -> list[Tensor]:
    k = max((len(r.candidates) for r in results), default=0)
    return [
        bytes_tensor("label", [r.label.encode() for r in results], (len(results),)),
        Tensor("similarity", "FP32", np.array([r.similarity for r in results], np.float32)),
        Tensor("known", "BOOL", np.array([r.known for r in results], np.bool_)),
        labels_tensor("candidate_labels", [[c.label for c in r.candidates] for r in results], k),
        Tensor("candidate_similarities", "FP32",
               padded([[c.similarity for c in r.candidates] for r in results], k, 0.0, np.float32)),
    ]


# Outputs: label BYTES [N], similarity FP32 [N], known BOOL [N], candidate_labels BYTES [N,K],
# candidate_similarities FP32 [N,K].
RECOGNIZE = ImagesRpc(
    "Recognize", pb.RecognizeRequest, pb.RecognizeResponse, PARAMETERS,
    lambda request: Parameters(codec.present_fields(request, "threshold", "top_k")),
    lambda task, images, params: task.recognize(images, params),
    response_to_proto, rest="recognize",
    oip=OipOutputs((TensorSpec("label", "BYTES", (-1,)), TensorSpec("similarity", "FP32", (-1,)),
                    TensorSpec("known", "BOOL", (-1,)), TensorSpec("candidate_labels", "BYTES", (-1, -1)),
                    TensorSpec("candidate_similarities", "FP32", (-1, -1))), tensors))

register(TaskSpec("recognize", RecognizeTask, ENCODER, (RECOGNIZE,), oip=RECOGNIZE,
                  flags=(TOP_K, SIMILARITY_THRESHOLD)))
