"""A video pipeline as a client requests it: operations by name with their parameters, and a JPEG quality.

Plain types with no dependency beyond the standard library: the codec builds them from a request before any
OpenCV is involved, ``ops.parse_pipeline`` checks and builds the operations from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One operation as requested: a name and its parameters (sorted name/value pairs, so specs compare equal)."""

    name: str
    params: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, name: str, params: Mapping[str, float] | None = None) -> OpSpec:
        return cls(name, tuple(sorted((params or {}).items())))


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A pipeline as requested; ``jpeg_quality`` None keeps the runtime's default."""

    operations: tuple[OpSpec, ...] = ()
    jpeg_quality: int | None = None
