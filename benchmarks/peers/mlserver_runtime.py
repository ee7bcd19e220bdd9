"""MLServer custom runtime serving the benchmark classifier (imported by `mlserver start` in the mlserver venv).

Open Inference Protocol v2: input "pixels" UINT8 [N,224,224,3] -> "scores" FP32
[N,5], "classes" INT32 [N,5]. With adaptive batching (``max_batch_size`` and
``max_batch_time`` in model-settings.json) MLServer concatenates concurrent
requests along the first axis before ``predict`` and splits the outputs after it.
The model path comes from ``parameters.uri`` in model-settings.json.
"""

from __future__ import annotations

from classifier import Classifier
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class ClassifierRuntime(MLModel):
    async def load(self) -> bool:
        self.classifier = Classifier(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        pixels = NumpyCodec.decode_input(payload.inputs[0])
        scores, classes = self.classifier.predict(pixels)
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[
            NumpyCodec.encode_output("scores", scores), NumpyCodec.encode_output("classes", classes)])
