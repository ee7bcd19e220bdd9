"""TorchScript models frozen and optimized for inference at load, checked against the model as loaded.

A TorchScript file loads as a training-ready module: parameters as attributes, batch norm separate from its
convolution, and a profiling executor that re-specializes its graph for each new input shape it meets. With
the dynamic batcher the batch size changes from call to call, and the benchmark classifier's speed swung from
310 to 1,395 images/s between batch sizes 4 and 8 (torch 2.14, 2 CPUs). ``torch.jit.freeze`` inlines the
parameters and folds batch norm into the convolutions; on CPU ``torch.jit.optimize_for_inference`` also moves
the convolutions to oneDNN. The same model then ran at 1,214 to 2,204 images/s for batch sizes 1 to 16.

The optimized module must give the loaded module's answers on test batches, else the model runs as loaded;
a module torch cannot freeze runs as loaded as well. Either way one log line says which.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

# Float reassociation in folded convolutions and oneDNN's kernels moves outputs by ~1e-6 relative; a wrong
# optimization moves them by far more.
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-4
CHECK_BATCH_SIZES = (1, 3)


def optimized_for_inference(module: Any, device: torch.device, example_shape: tuple[int, int, int]) -> Any:
    """``module`` frozen (and on CPU optimized for inference) when that keeps its outputs on random inputs of
    ``example_shape`` (C, H, W) at a few batch sizes; otherwise ``module`` itself."""
    module = module.eval()
    try:
        frozen = torch.jit.freeze(module)
        if device.type == "cpu":
            frozen = torch.jit.optimize_for_inference(frozen)
    except Exception as exc:  # TorchScript raises many types here: the model still serves as loaded
        log.warning("TorchScript model not frozen (%s: %s): it runs as loaded", type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
        return module
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch in CHECK_BATCH_SIZES:
            example = torch.randn((batch, *example_shape), generator=generator).to(device)
            try:
                expected, got = first_tensor(module(example)), first_tensor(frozen(example))
            except Exception as exc:
                log.warning("frozen TorchScript model failed at batch %d (%s: %s): it runs as loaded", batch,
                            type(exc).__name__, exc)
                return module
            if expected.shape != got.shape or not torch.allclose(expected, got, rtol=RELATIVE_TOLERANCE,
                                                                 atol=ABSOLUTE_TOLERANCE):
                difference = (expected.float() - got.float()).abs().max().item() if expected.shape == got.shape \
                    else float("nan")
                log.warning("frozen TorchScript model answers differently at batch %d (largest difference %.3g): "
                            "it runs as loaded", batch, difference)
                return module
    log.info("TorchScript model frozen%s for inference", " and optimized" if device.type == "cpu" else "")
    return frozen


def first_tensor(output: Any) -> torch.Tensor:
    """A model's output tensor: the first of a tuple or list (models that also return features or aux heads)."""
    return output[0] if isinstance(output, list | tuple) else output


def scripted(function: Callable[..., Any]) -> Any:
    """``torch.jit.script(function)`` without its deprecation warning: the runtime scripts a few tensor steps of
    its own (one call, so the GIL is dropped once: ``models.stacking``), not the user's model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(function)
