"""The classifier kind: an image model (TorchScript, ONNX or an ultralytics ``-cls`` checkpoint) whose batch step
gives every image's class probabilities.

Preprocessing comes from flags, else the model's JSON sidecar, else the defaults (``models.preprocessing``); the
request side resizes images to the model's input with it, and the batch step normalises and runs them.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from kubeinfer.runtime.config import ServeConfig
from kubeinfer.runtime.engine.base import EngineKind, ResizedImages
from kubeinfer.runtime.engine.local import LocalEngine
from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.images import warm_up_pixels
from kubeinfer.runtime.metrics import RuntimeMetrics
from kubeinfer.runtime.models.preprocessing import Preprocessing


@dataclass(frozen=True, slots=True)
class ClassifierFacts:
    """What the request side needs of a classifier: how to resize an image for it, how many classes it scores
    and their names where the model carries them (ultralytics), its file's format."""

    preprocessing: Preprocessing
    output_size: int
    class_names: list[str]  # the model's own (ultralytics classifiers), else empty
    format: str


class ClassifierEngine(LocalEngine[np.ndarray, np.ndarray, ClassifierFacts]):
    """Resized uint8 images in, one probability vector per image out."""

    @classmethod
    def load(cls, config: ServeConfig, metrics: RuntimeMetrics, pool: Executor) -> ClassifierEngine:
        from kubeinfer.runtime.models.image_model import ImageModel  # the model libraries: only here

        assert config.model is not None  # the tasks that need a classifier have one (ServeConfig.validate)
        preprocessing = Preprocessing.resolve(config.model, input_size=config.image_size, mean=config.mean,
                                              std=config.std, channel_order=config.channel_order,
                                              resize_mode=config.resize_mode)
        model = ImageModel(config.model, config.device, preprocessing, optimize=config.torchscript_optimize)
        if model.preprocessing.output == "embeddings":
            raise StartupError(f"model {config.model} is declared to output embeddings (sidecar \"output\"); "
                               "classification needs \"logits\" or \"probabilities\"")
        facts = ClassifierFacts(model.preprocessing, model.output_size, list(model.class_names), model.format)
        return cls(config.task, facts, model.forward, config, metrics, pool)

    def warm_up_request(self) -> tuple[np.ndarray, object | None]:
        preprocessing = self.facts.preprocessing
        return preprocessing.resize(warm_up_pixels(), "bgr"), None


CLASSIFIER: EngineKind[np.ndarray] = EngineKind("classifier", ClassifierEngine.load, ResizedImages())
