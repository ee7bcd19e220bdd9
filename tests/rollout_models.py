"""The classifiers a progressive rollout (issue #34) rolls out to, each misbehaving in one known way.

All come from one trained classifier (``classify_support.train_colour_cls``: a YOLOv8n-cls telling noisy red,
green and blue images apart) exported to ONNX, so the lean cpu runtime image serves every one of them:

- ``stable``: the export as it is: what the InferenceService serves before the rollout;
- ``good``: a second revision, as if retrained: every weight tensor moved by seeded noise of 1% of its spread;
  it answers stable's top-1 on every image of ``rollout_images`` (checked when it is built);
- ``failing``: ``good`` that fails the whole ONNX Runtime run of any batch holding a bright image (mean pixel
  above ``BRIGHTNESS_THRESHOLD`` of full scale): a ``Gather`` whose index is 1 for such an image reads past its
  one-element table; the runtime answers such a request INTERNAL. ``failing_images`` mixes 2 bright images
  into every 10; on the others it answers exactly as ``good``;
- ``slow``: ``good`` plus ``SLOW_LAYERS`` chained ``SLOW_SIZE``-square MatMuls (with Tanh) on a tensor made from
  each image, multiplied by 0 and added to the probabilities: the same answers, bit for bit, at a cost ONNX
  Runtime cannot fold away (the product depends on the input);
- ``shuffled``: ``good`` with the rows of its final linear layer permuted (class i scores as class
  ``SHUFFLE[i]`` did), as if trained with shuffled labels: as fast, never an error, wrong on every image.

Every file is built once and kept under .cache/models/rollout (git-ignored, shared like the other test models);
``VERSION`` is in every name, so changing how a model is built means bumping it. One labels file (the model's
own class order) goes with all of them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from classify_support import COLOURS, noisy, train_colour_cls
from runtime_support import CACHE

VERSION = "v1"  # bump when any model below is built differently, so cached files are rebuilt
MODELS = CACHE / "models" / "rollout"
LABELS = ["blue", "green", "red"]  # the trained classifier's classes, in its output order (sorted folders)
NOISE = 0.01  # good's weight noise, as a fraction of each tensor's standard deviation
BRIGHTNESS_THRESHOLD = 0.6  # failing fails an image whose mean pixel (0..1 after the runtime's scaling) is above
BRIGHT_LIFT = 110  # added to every channel of a bright image: its mean is ~0.79 against ~0.41 for the others
FAILING_PER_TEN = 2  # bright images in every block of 10 of failing_images
SLOW_SIZE = 256  # the side of slow's square matrices
SLOW_LAYERS = 64  # how many of them are chained per image: ~40 ms more a call, ~3x a runtime pod's p99
GATHER_NODE = "rollout_failing_bright_image"  # named in ONNX Runtime's error (the runtime's log)
SHUFFLE = [1, 2, 0]  # shuffled's output i is the trained model's class SHUFFLE[i]: no class keeps its own


@dataclass(frozen=True)
class RolloutModels:
    """The model files (ONNX) and the one labels file they all share."""

    stable: Path
    good: Path
    failing: Path
    slow: Path
    shuffled: Path
    labels: Path

    def by_name(self) -> dict[str, Path]:
        return {"stable": self.stable, "good": self.good, "failing": self.failing, "slow": self.slow,
                "shuffled": self.shuffled}


@dataclass(frozen=True)
class StreamImage:
    """One image of ``failing_images``: RGB pixels and whether ``failing`` fails on it."""

    pixels: np.ndarray
    fails: bool


def rollout_models() -> RolloutModels:
    """Every model, built on first use (6-26 s here once the classifier is trained, which takes ~30 s more),
    then taken from the cache (a stat per file)."""
    names = ("stable", "good", "failing", "slow", "shuffled")
    paths = {name: MODELS / f"{name}-{VERSION}.onnx" for name in names}
    paths["slow"] = MODELS / f"slow-{VERSION}-{SLOW_SIZE}x{SLOW_LAYERS}.onnx"  # its cost in its name: tuned here
    labels = MODELS / f"labels-{VERSION}.txt"
    if not (labels.exists() and all(p.exists() for p in paths.values())):
        _build(paths, labels)
    return RolloutModels(**paths, labels=labels)


def rollout_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB images the classifier tells apart (noisy red, green and blue in turn), none bright."""
    return [noisy(COLOURS[i % 3], seed=50_000 + 1000 * seed + i) for i in range(count)]


def failing_images(count: int, seed: int = 0) -> list[StreamImage]:
    """``rollout_images`` with ``FAILING_PER_TEN`` of every 10 made bright (positions drawn per block, seeded: a
    router that sends every 10th call to one revision still sees ~20% of them, not 0 or 100%)."""
    rng = np.random.default_rng(seed)
    bright = {start + int(i) for start in range(0, count, 10)
              for i in rng.choice(10, FAILING_PER_TEN, replace=False)}
    return [StreamImage(brighten(pixels), True) if i in bright else StreamImage(pixels, False)
            for i, pixels in enumerate(rollout_images(count, seed))]


def brighten(pixels: np.ndarray) -> np.ndarray:
    return np.clip(pixels.astype(np.int16) + BRIGHT_LIFT, 0, 255).astype(np.uint8)


def brightness(pixels: np.ndarray) -> float:
    """The mean pixel in 0..1: what ``failing`` compares with ``BRIGHTNESS_THRESHOLD`` (the runtime's center crop
    of these uniform-noise images changes it by far less than the margin either side)."""
    return float(pixels.mean()) / 255.0


# ---------------------------------------------------------------- building

def _build(paths: dict[str, Path], labels: Path) -> None:
    import onnx

    from kubeinfer.runtime.models.backend import onnx_export

    MODELS.mkdir(parents=True, exist_ok=True)
    scratch = MODELS / f".work-{os.getpid()}"
    try:
        exported = onnx_export(train_colour_cls(), scratch, None)
        stable = onnx.load(str(exported))
        names = _class_names(stable)
        if names != LABELS:
            raise RuntimeError(f"the trained classifier's classes are {names}, expected {LABELS}")
        good = _noisy_copy(stable, np.random.default_rng(34))
        _check_agreement(stable, good)
        models = {"stable": stable, "good": good, "failing": _failing(good), "slow": _slow(good),
                  "shuffled": _shuffled(good)}
        for name, model in models.items():
            _tag(model, name)
            onnx.checker.check_model(model)
            _write_atomically(paths[name], model.SerializeToString())
        labels_text = "\n".join(LABELS) + "\n"
        staging = labels.with_name(f".{labels.name}.{os.getpid()}")
        staging.write_text(labels_text)
        staging.replace(labels)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _class_names(model: Any) -> list[str]:
    import ast

    names = ast.literal_eval({p.key: p.value for p in model.metadata_props}["names"])
    return [str(names[i]) for i in sorted(names)]


def _tag(model: Any, name: str) -> None:
    """Say in the file's metadata which rollout model it is (the runtime ignores keys it does not know)."""
    entry = next((p for p in model.metadata_props if p.key == "kubeinfer_rollout_model"), None) \
        or model.metadata_props.add()
    entry.key, entry.value = "kubeinfer_rollout_model", f"{name}-{VERSION}"


def _write_atomically(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_bytes(data)
    staging.replace(path)


def _noisy_copy(model: Any, rng: np.random.Generator) -> Any:
    """A copy whose float weight tensors (not the scalars and shapes) moved by ``NOISE`` of their spread."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype != np.float32 or values.size < 2:
            continue
        moved = values + rng.normal(0.0, NOISE * float(values.std()), values.shape).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(moved.astype(np.float32), tensor.name))
    return copy


def _check_agreement(stable: Any, good: Any) -> None:
    """good must answer stable's top-1 on the images the tests send (else the noise was too much)."""
    images = np.stack([_as_input(p) for p in rollout_images(100)])
    a, b = (_run(m, images).argmax(axis=1) for m in (stable, good))
    if (a != b).any():
        raise RuntimeError(f"good disagrees with stable on {int((a != b).sum())} of {len(a)} images")


def _as_input(rgb: np.ndarray) -> np.ndarray:
    """As the runtime feeds an ultralytics classifier: center crop to 32 px, RGB, 0..1, NCHW."""
    import cv2

    from kubeinfer.runtime.models.preprocessing import Preprocessing

    preprocessing = Preprocessing(input_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="rgb",
                                  resize_mode="center-crop", output="probabilities")
    return preprocessing.apply(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)).astype(np.float32)


def _run(model: Any, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: images})[0])


def _with_output_through(model: Any, build: Callable[[Any, str, str], str]) -> Any:
    """A copy whose output is what ``build(graph, images, probabilities)`` returns, the output's old producer
    now writing an internal tensor (``probabilities``)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    output = graph.output[0].name
    inner = f"{output}_before_rollout_change"
    for node in graph.node:
        node.output[:] = [inner if o == output else o for o in node.output]
    last = build(graph, graph.input[0].name, inner)
    graph.node[-1].output[:] = [output if o == last else o for o in graph.node[-1].output]
    return copy


def _mean_brightness(graph: Any, images: str, prefix: str) -> str:
    """Nodes computing each image's mean pixel as [N, 1] (opset-neutral: pooling, then a 3 -> 1 MatMul)."""
    from onnx import helper, numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.full((3, 1), 1 / 3, np.float32), f"{prefix}_third"))
    graph.node.extend([
        helper.make_node("GlobalAveragePool", [images], [f"{prefix}_pooled"]),
        helper.make_node("Flatten", [f"{prefix}_pooled"], [f"{prefix}_channels"], axis=1),
        helper.make_node("MatMul", [f"{prefix}_channels", f"{prefix}_third"], [f"{prefix}_mean"]),
    ])
    return f"{prefix}_mean"


def _failing(good: Any) -> Any:
    """``good`` times a Gather from a one-element table [1.0] at index (brightness > threshold): 1.0 exactly for
    a batch of dark images, an ONNX Runtime error ("indices element out of data bounds") for a bright one."""
    from onnx import TensorProto, helper, numpy_helper

    def build(graph: Any, images: str, probabilities: str) -> str:
        mean = _mean_brightness(graph, images, "failing")
        graph.initializer.extend([
            numpy_helper.from_array(np.array(BRIGHTNESS_THRESHOLD, np.float32), "failing_threshold"),
            numpy_helper.from_array(np.array([1.0], np.float32), "failing_table"),
        ])
        graph.node.extend([
            helper.make_node("Greater", [mean, "failing_threshold"], ["failing_bright"]),
            helper.make_node("Cast", ["failing_bright"], ["failing_index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["failing_table", "failing_index"], ["failing_one"], GATHER_NODE, axis=0),
            helper.make_node("Mul", [probabilities, "failing_one"], ["failing_out"]),
        ])
        return "failing_out"

    return _with_output_through(good, build)


def _slow(good: Any) -> Any:
    """``good`` plus 0 x (a chain of MatMuls on a matrix made from each image): the same answers, slower."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(35)
    size, area = SLOW_SIZE, SLOW_SIZE * SLOW_SIZE

    def build(graph: Any, images: str, probabilities: str) -> str:
        mean = _mean_brightness(graph, images, "slow")
        graph.initializer.extend([
            numpy_helper.from_array(rng.normal(0, 1, (1, area)).astype(np.float32), "slow_spread"),
            numpy_helper.from_array(np.array([-1, size, size], np.int64), "slow_shape"),
            numpy_helper.from_array(np.full((area, 1), 1 / area, np.float32), "slow_sum"),
            numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero"),
        ])
        graph.node.extend([
            helper.make_node("MatMul", [mean, "slow_spread"], ["slow_flat"]),
            helper.make_node("Reshape", ["slow_flat", "slow_shape"], ["slow_0"]),
        ])
        for layer in range(SLOW_LAYERS):
            weight = f"slow_weight_{layer}"
            graph.initializer.append(numpy_helper.from_array(
                (rng.normal(0, 1, (size, size)) / np.sqrt(size)).astype(np.float32), weight))
            graph.node.extend([
                helper.make_node("MatMul", [f"slow_{layer}", weight], [f"slow_{layer}_product"]),
                helper.make_node("Tanh", [f"slow_{layer}_product"], [f"slow_{layer + 1}"]),  # bounded: 0 x it is 0
            ])
        graph.node.extend([
            helper.make_node("Flatten", [f"slow_{SLOW_LAYERS}"], ["slow_flat_out"], axis=1),
            helper.make_node("MatMul", ["slow_flat_out", "slow_sum"], ["slow_total"]),
            helper.make_node("Mul", ["slow_total", "slow_zero"], ["slow_nothing"]),
            helper.make_node("Add", [probabilities, "slow_nothing"], ["slow_out"]),
        ])
        return "slow_out"

    return _with_output_through(good, build)


def _shuffled(good: Any) -> Any:
    """``good`` with the rows of the Gemm feeding the final Softmax permuted by ``SHUFFLE``."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(good)
    graph = copy.graph
    softmax = next(n for n in graph.node if n.output[0] == graph.output[0].name)
    gemm = next(n for n in graph.node if n.output[0] == softmax.input[0])
    if softmax.op_type != "Softmax" or gemm.op_type != "Gemm":
        raise RuntimeError(f"expected Gemm -> Softmax at the output, found {gemm.op_type} -> {softmax.op_type}")
    transposed = any(a.name == "transB" and a.i == 1 for a in gemm.attribute)
    initializers = {t.name: t for t in graph.initializer}
    weight, bias = initializers[gemm.input[1]], initializers[gemm.input[2]]
    values = numpy_helper.to_array(weight)
    permuted = values[SHUFFLE] if transposed else values[:, SHUFFLE]
    weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(permuted), weight.name))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias)[SHUFFLE], bias.name))
    return copy
