"""Open Inference Protocol tensors <-> numpy: the one codec both bindings (gRPC and REST) share, and the helpers
task modules build their output tensors with.

A tensor travels either as raw little-endian bytes (gRPC ``raw_*_contents``, the REST binary-data
extension) or as a flat list of values (gRPC typed ``contents``, REST JSON ``data``). BYTES
elements are, in raw form, each a 4-byte little-endian length followed by the bytes. Every
failure is INVALID_ARGUMENT with a message naming the tensor.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubeinfer.runtime.errors import invalid_argument

# Datatype name -> numpy dtype (little-endian, as the protocol's raw form is).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor as ModelMetadata documents it; -1 is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(slots=True)
class Tensor:
    """A named tensor; ``data`` has the datatype's numpy dtype (BYTES: an object array of ``bytes``)."""

    name: str
    datatype: str
    data: np.ndarray

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.data.shape]


def check_datatype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"tensor {name!r}: unknown datatype {datatype!r}; one of {', '.join(DTYPES)}")
    return dtype


MAX_DIMENSION = 2**31 - 1  # per dimension, and for the product of every non-zero dimension
MAX_RANK = 8


def check_shape(name: str, shape: Sequence[Any]) -> tuple[int, ...]:
    """A concrete shape: non-negative integers (-1 is for metadata only) that numpy can hold, even when another
    dimension is zero (``[0, 10**18]`` holds no element but no array can have that shape)."""
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise invalid_argument(f"tensor {name!r}: shape {_shown(shape)} must hold non-negative integers")
    if len(shape) > MAX_RANK:
        raise invalid_argument(f"tensor {name!r}: shape {_shown(shape)} has more than {MAX_RANK} dimensions")
    product = 1
    for d in shape:
        product *= max(1, d)
        if product > MAX_DIMENSION:
            raise invalid_argument(f"tensor {name!r}: shape {_shown(shape)} is too large")
    return tuple(int(d) for d in shape)


def _shown(shape: Sequence[Any]) -> str:
    text = str(list(shape))
    return text if len(text) <= 80 else text[:77] + "..."


def from_raw(name: str, datatype: str, shape: Sequence[Any], raw: bytes) -> Tensor:
    """A tensor from its raw bytes, checking they hold exactly ``shape``'s elements."""
    dtype = check_datatype(name, datatype)
    dims = check_shape(name, shape)
    count = math.prod(dims)
    if datatype == "BYTES":
        elements = deserialize_bytes(name, raw)
        if len(elements) != count:
            raise invalid_argument(f"tensor {name!r}: shape {list(dims)} needs {count} BYTES elements, "
                                   f"the data holds {len(elements)}")
        return Tensor(name, datatype, _object_array(elements, dims))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise invalid_argument(f"tensor {name!r}: shape {list(dims)} of {datatype} needs {expected} bytes, "
                               f"got {len(raw)}")
    return Tensor(name, datatype, np.frombuffer(raw, dtype=dtype).reshape(dims))


def from_values(name: str, datatype: str, shape: Sequence[Any], values: Sequence[Any]) -> Tensor:
    """A tensor from its values in row-major order, flat or nested (BYTES: a flat list of ``bytes``)."""
    dtype = check_datatype(name, datatype)
    dims = check_shape(name, shape)
    count = math.prod(dims)
    if datatype == "BYTES":
        if len(values) != count:
            raise invalid_argument(f"tensor {name!r}: shape {list(dims)} needs {count} values, got {len(values)}")
        if not all(isinstance(v, bytes) for v in values):
            raise invalid_argument(f"tensor {name!r}: BYTES values must be byte strings")
        return Tensor(name, datatype, _object_array(list(values), dims))
    try:
        given = np.asarray(values)
    except (ValueError, OverflowError) as exc:  # ragged nesting, integers beyond 64 bits
        raise invalid_argument(f"tensor {name!r}: values are not a regular array of {datatype}: {exc}") from None
    if given.size != count:
        raise invalid_argument(f"tensor {name!r}: shape {list(dims)} needs {count} values, got {given.size}")
    kinds = {"BOOL": "b", "FP16": "biuf", "FP32": "biuf", "FP64": "biuf"}.get(datatype, "iu")
    if count and given.dtype.kind not in kinds:
        expected = {"b": "true or false", "biuf": "numbers"}.get(kinds, "integers")
        raise invalid_argument(f"tensor {name!r}: {datatype} values must be {expected}, got {given.dtype.kind!r} data")
    if count and dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(given.min()), int(given.max())
        if low < info.min or high > info.max:
            raise invalid_argument(f"tensor {name!r}: values {low}..{high} do not fit {datatype} "
                                   f"({info.min}..{info.max})")
    array = given.astype(dtype, copy=False)
    return Tensor(name, datatype, array.reshape(dims))


def to_raw(tensor: Tensor) -> bytes:
    """The raw little-endian form of ``tensor``'s data."""
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data.reshape(-1))
    return np.ascontiguousarray(tensor.data, dtype=DTYPES[tensor.datatype]).tobytes()


def to_values(tensor: Tensor) -> list[Any]:
    """A flat row-major Python list of ``tensor``'s values (BYTES stay ``bytes``)."""
    return list(tensor.data.reshape(-1)) if tensor.datatype == "BYTES" else tensor.data.reshape(-1).tolist()


def serialize_bytes(elements: Iterable[bytes]) -> bytes:
    parts: list[bytes] = []
    for element in elements:
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def deserialize_bytes(name: str, raw: bytes) -> list[bytes]:
    """Split length-prefixed BYTES elements, refusing truncated data."""
    view = memoryview(raw)
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise invalid_argument(f"tensor {name!r}: BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise invalid_argument(f"tensor {name!r}: BYTES element {len(elements)} claims {length} bytes, "
                                   f"only {len(view) - offset} remain")
        elements.append(bytes(view[offset:offset + length]))
        offset += length
    return elements


def bytes_tensor(name: str, elements: Sequence[bytes], shape: Sequence[int]) -> Tensor:
    """A BYTES tensor of ``shape`` from its elements in row-major order."""
    return Tensor(name, "BYTES", _object_array(list(elements), tuple(shape)))


def _object_array(elements: list[bytes], dims: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(dims)


def padded(rows: Sequence[Sequence[Any]], width: int, fill: Any, dtype: Any) -> np.ndarray:
    """Rows of unequal length as one [N, width] array, ``fill`` after each row's end."""
    array = np.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        array[i, :len(row)] = row
    return array


def labels_tensor(name: str, rows: Sequence[Sequence[str]], width: int) -> Tensor:
    """Rows of labels as a BYTES [N, width] tensor, "" after each row's end."""
    elements = [(row[j] if j < len(row) else "").encode() for row in rows for j in range(width)]
    return bytes_tensor(name, elements, (len(rows), width))
