"""TorchScript models are frozen and optimized for inference at load, and only when that keeps their answers.

Real TorchScript files saved here (a conv + batch-norm classifier and one that adds noise), loaded the way
the classify and recognize tasks load them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from kubeinfer.runtime.models.image_model import ImageModel
from kubeinfer.runtime.models.preprocessing import Preprocessing
from kubeinfer.runtime.models.threads import in_passing_thread

SIZE = 32


class ConvBnClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Noisy(torch.nn.Module):
    """Answers differ from call to call: no optimized copy can match it, so it must run as loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ConvBnClassifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y + torch.randn_like(y)


def save(module: torch.nn.Module, path: Path, script: bool = False) -> Path:
    torch.manual_seed(0)
    for layer in module.modules():  # batch-norm statistics that are not the identity, so folding them matters
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
    module.eval()
    saved = torch.jit.script(module) if script else torch.jit.trace(module, torch.rand(1, 3, SIZE, SIZE))
    saved.save(str(path))
    return path


def load(path: Path, optimize: bool = True) -> ImageModel:
    return ImageModel(path, "cpu", Preprocessing.resolve(path, input_size=SIZE), optimize=optimize)


def pixels(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(count)]


def parameters(model: ImageModel) -> int:
    return len(list(model._module.parameters()))


def test_a_conv_bn_model_is_frozen_and_answers_as_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = save(ConvBnClassifier(), tmp_path / "classifier.pt")
    with caplog.at_level(logging.INFO, logger="kubeinfer.runtime.models.torchscript"):
        optimized = load(path)
    as_loaded = load(path, optimize=False)
    assert "TorchScript model frozen and optimized for inference" in caplog.text
    assert parameters(as_loaded) > 0 and parameters(optimized) == 0  # weights folded into the graph as constants
    for count in (1, 5, 16):  # the batcher's batch sizes vary; the frozen graph is not tied to one
        images = pixels(count)
        expected, got = as_loaded.forward(images), optimized.forward(images)
        assert len(got) == count
        np.testing.assert_allclose(np.stack(got), np.stack(expected), rtol=1e-4, atol=1e-6)


def test_a_model_whose_answers_change_runs_as_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = save(Noisy(), tmp_path / "noisy.pt", script=True)
    with caplog.at_level(logging.WARNING, logger="kubeinfer.runtime.models.torchscript"):
        model = load(path)
    assert "frozen TorchScript model answers differently at batch 1" in caplog.text
    assert parameters(model) > 0


def test_optimize_off_runs_the_model_as_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = save(ConvBnClassifier(), tmp_path / "classifier.pt")
    with caplog.at_level(logging.INFO, logger="kubeinfer.runtime.models.torchscript"):
        model = load(path, optimize=False)
    assert caplog.text == ""
    assert parameters(model) > 0


def test_work_in_a_passing_thread_returns_its_value_and_the_thread_ends() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    async def main() -> int:
        return await in_passing_thread(work)

    assert asyncio.run(main()) == 42
    assert seen[0] is not threading.main_thread()
    seen[0].join(timeout=5)
    assert not seen[0].is_alive()


def test_an_error_in_a_passing_thread_reaches_the_caller() -> None:
    def work() -> None:
        raise ValueError("cannot load model x.pt")

    async def main() -> None:
        await in_passing_thread(work)

    with pytest.raises(ValueError, match=r"cannot load model x\.pt"):
        asyncio.run(main())
