"""LitServe serving the benchmark classifier with its dynamic batching (run in the litserve venv).

    python serve_litserve.py --model classifier.pt --port P [--max-batch-size 16] [--batch-timeout 0.005]

POST /predict {"pixels": base64(uint8 224x224x3 RGB), "shape": [224, 224, 3]}
-> {"classes": [5 ints], "scores": [5 floats]}. LitServe speaks HTTP/JSON only.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import litserve as ls
import numpy as np
from classifier import Classifier


class ClassifierAPI(ls.LitAPI):
    def __init__(self, model_path: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device: str) -> None:
        self.classifier = Classifier(self.model_path)

    def decode_request(self, request: dict) -> np.ndarray:
        shape = tuple(int(v) for v in request["shape"])
        return np.frombuffer(base64.b64decode(request["pixels"]), dtype=np.uint8).reshape(shape)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.classifier.predict(pixels if pixels.ndim == 4 else pixels[None])

    def unbatch(self, output: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        scores, classes = output
        return list(zip(scores, classes, strict=True))

    def encode_response(self, output: tuple[np.ndarray, np.ndarray]) -> dict:
        scores, classes = output
        return {"classes": np.asarray(classes).reshape(-1).tolist(), "scores": np.asarray(scores).reshape(-1).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds a batch waits to fill")
    args = parser.parse_args()
    api = ClassifierAPI(args.model, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
