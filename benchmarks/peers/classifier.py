"""The benchmark classifier as every peer serves it: raw RGB pixels in, the top-k classes and scores out.

It loads the same TorchScript file and preprocessing sidecar that kubeinfer
serves (benchmarks/models.py writes them) and does the same work per image:
normalise with the sidecar's mean/std, one forward pass, softmax, top-k. Peers run
it in their own venvs (torch 2.13.0 and numpy only), so it imports nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TOP_K = 5


class Classifier:
    """One loaded model; ``predict`` takes a batch of uint8 images [N, S, S, 3]."""

    def __init__(self, model_path: str | Path, top_k: int = TOP_K) -> None:
        path = Path(model_path)
        sidecar = json.loads(path.with_suffix(".json").read_text())
        self.size = int(sidecar["input_size"])
        self.top_k = top_k
        self.model = torch.jit.load(str(path), map_location="cpu").eval()
        self.shift = torch.tensor(sidecar["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.scale = torch.tensor(sidecar["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.predict(np.zeros((1, self.size, self.size, 3), dtype=np.uint8))  # warm-up, as kubeinfer does at start

    def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores float32 [N, k] and class indices int32 [N, k], best first."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"expected uint8 [N,{self.size},{self.size},3], got {pixels.dtype} {list(pixels.shape)}")
        with torch.inference_mode():
            batch = torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).float()  # copy: inputs may be read-only
            probabilities = torch.softmax(self.model((batch - self.shift) / self.scale), dim=1)
            scores, classes = probabilities.topk(self.top_k, dim=1)
        return scores.numpy(), classes.to(torch.int32).numpy()
