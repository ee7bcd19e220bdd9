"""Class labels for classifiers: read once at start from ``--labels`` and checked against the model.

The format follows the file suffix. Label ``i`` names output ``i`` of the model.

``.txt`` (and any suffix not listed below)
    One label per line; surrounding whitespace is stripped and blank lines are skipped::

        red
        green
        blue

``.json``
    A list in class order, an ``{index: label}`` map, or a ``{label: index}`` map
    (Keras ``class_indices``); the indices of a map must be 0..N-1, each once::

        ["red", "green", "blue"]
        {"0": "red", "1": "green", "2": "blue"}
        {"red": 0, "green": 1, "blue": 2}

``.csv`` (comma-separated; a header row is allowed and recognised by its shape)
    * one column, a label per row (a first row ``label``, ``labels``, ``name``,
      ``class`` or ``class_name`` is taken as a header)::

        red
        green

    * ``index,label`` or ``label,index`` rows::

        index,label
        0,red
        1,green

    * one-hot: a label then its one-hot row (rows may repeat, as in a data set, but
      must agree); the position of the 1 is the class index::

        red,1,0,0
        blue,0,0,1
        green,0,1,0

    * one-hot: a header of labels in class order, then one-hot rows (as written by
      ``pandas.get_dummies(labels).to_csv(index=False)``)::

        red,green,blue
        1,0,0
        0,0,1

``.npy``
    * a 1-D string array of labels in class order
      (``np.save(path, np.array(names, dtype=str))``), or
    * a 2-D one-hot matrix ``[N, K]`` whose row ``i`` is the encoding of the ``i``-th
      name listed beside it in ``<stem>.txt`` or ``<stem>.json`` (same layouts as
      above, read in file order). The position of the 1 in a row is that name's class.

``.npz``
    Arrays ``names`` (``[N]`` strings) and, optionally, ``onehot`` (``[N, K]``) with the
    same meaning as the ``.npy`` matrix; without ``onehot`` the names are in class order.

Pickled ``.npy``/``.npz`` contents (object arrays) are refused: loading them could run code.
One-hot values must be 0 or 1 with exactly one 1 per row, and every class 0..K-1 needs a name.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kubeinfer.runtime.errors import StartupError

CSV_HEADER_WORDS = {"label", "labels", "name", "names", "class", "classes", "class_name"}


class LabelsError(StartupError):
    """The labels file is unreadable or malformed; the runtime exits with this one line."""


def load_labels(path: Path) -> list[str]:
    """Read ``path`` in the layout its suffix names; labels in class order."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            labels = _from_json(_read_text(path))
        elif suffix == ".csv":
            labels = _from_csv(_read_text(path))
        elif suffix == ".npy":
            labels = _from_npy(path)
        elif suffix == ".npz":
            labels = _from_npz(path)
        else:
            labels = _from_lines(_read_text(path))
    except LabelsError as exc:
        raise LabelsError(f"labels file {path}: {exc}") from None
    if not labels:
        raise LabelsError(f"labels file {path}: holds no labels")
    return labels


def check_count(labels: Sequence[str], output_size: int, labels_path: Path, model_path: Path) -> None:
    """Refuse to start when the labels do not name every model output exactly."""
    if len(labels) != output_size:
        raise StartupError(f"--labels {labels_path} has {len(labels)} labels but the model {model_path} outputs "
                           f"{output_size} classes; give one label per model output")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LabelsError(f"cannot read: {exc.strerror or exc}") from None


def _from_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _from_json(text: str) -> list[str]:
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise LabelsError(f"invalid JSON: {exc}") from None
    if isinstance(data, list):
        return [_label(value, f"entry {i}") for i, value in enumerate(data)]
    if not isinstance(data, dict):
        raise LabelsError(f"expected a JSON list or object, got {type(data).__name__}")
    if data and all(_is_index(key) for key in data):
        return _by_index({int(key): _label(value, f"entry {key!r}") for key, value in data.items()})
    if data and all(isinstance(value, int) and not isinstance(value, bool) for value in data.values()):
        indexed: dict[int, str] = {}
        for label, index in data.items():
            if index in indexed:
                raise LabelsError(f"index {index} is given to both {indexed[index]!r} and {label!r}")
            indexed[index] = _label(label, f"key for index {index}")
        return _by_index(indexed)
    raise LabelsError('a JSON object must map indices to labels {"0": "cat"} or labels to indices {"cat": 0}')


def _from_csv(text: str) -> list[str]:
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text))]
    rows = [row for row in rows if any(row)]
    if not rows:
        return []
    width = len(rows[0])
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise LabelsError(f"row {number} has {len(row)} columns, the first row {width}")
    if width == 1:
        names = [row[0] for row in rows]
        return names[1:] if names[0].lower() in CSV_HEADER_WORDS else names
    data_rows = rows[1:] if len(rows) > 1 else rows
    kinds = {_row_kind(row) for row in data_rows}
    if len(kinds) != 1:
        raise LabelsError("rows mix layouts; use one of: label | index,label | label,index | label,one-hot "
                          "| header of labels then one-hot rows")
    (kind,) = kinds
    first_kind = _row_kind(rows[0])
    header = len(rows) > 1 and first_kind != kind and not any(_is_number(c) for c in rows[0])
    if first_kind != kind and not header:
        raise LabelsError(f"row 1 is laid out as {first_kind}, the rows after it as {kind}")
    body = rows[1:] if header else rows
    first_line = 2 if header else 1
    if kind == "numeric":
        if not header:
            raise LabelsError("numeric rows need a first row naming the one-hot columns")
        return _header_onehot(rows[0], body, first_line)
    if kind == "index,label":
        return _by_index(_pairs([(row[0], row[1]) for row in body], first_line))
    if kind == "label,index":
        return _by_index(_pairs([(row[1], row[0]) for row in body], first_line))
    if kind == "label,one-hot":
        matrix = [[_number(cell, first_line + i) for cell in row[1:]] for i, row in enumerate(body)]
        return _names_from_onehot([row[0] for row in body], np.asarray(matrix, dtype=np.float64), first_line)
    raise LabelsError("rows of several columns must hold indices or one-hot values beside the labels")


def _row_kind(row: list[str]) -> str:
    numeric = [_is_number(cell) for cell in row]
    if all(numeric):
        return "numeric"
    if len(row) == 2 and numeric[0] and not numeric[1]:
        return "index,label"
    if not numeric[0] and all(numeric[1:]):
        return "label,index" if len(row) == 2 else "label,one-hot"
    return "text"


def _header_onehot(names: list[str], body: list[list[str]], first_line: int) -> list[str]:
    matrix = np.asarray([[_number(cell, first_line + i) for cell in row] for i, row in enumerate(body)])
    _check_onehot(matrix, first_line)
    return [_label(name, f"column {i + 1} of the header") for i, name in enumerate(names)]


def _pairs(pairs: list[tuple[str, str]], first_line: int) -> dict[int, str]:
    indexed: dict[int, str] = {}
    for line, (index_text, label) in enumerate(pairs, start=first_line):
        if not _is_index(index_text):
            raise LabelsError(f"row {line}: index {index_text!r} is not a non-negative integer")
        index = int(index_text)
        if index in indexed:
            raise LabelsError(f"row {line}: index {index} appears twice")
        indexed[index] = _label(label, f"row {line}")
    return indexed


def _from_npy(path: Path) -> list[str]:
    array = _load_array(path)
    if array.ndim == 1 and array.dtype.kind in "US":
        return [_label(_text(value), f"entry {i}") for i, value in enumerate(array)]
    if array.ndim == 2 and array.dtype.kind in "biuf":
        names_path = next((p for p in (path.with_suffix(".txt"), path.with_suffix(".json")) if p.exists()), None)
        if names_path is None:
            raise LabelsError(f"a one-hot matrix needs its names beside it in {path.with_suffix('.txt').name} "
                              f"or {path.with_suffix('.json').name} (entry i names row i)")
        text = _read_text(names_path)
        names = _from_json(text) if names_path.suffix == ".json" else _from_lines(text)
        return _names_from_onehot(names, array.astype(np.float64), 1, f" of {names_path.name}")
    raise LabelsError(f"expected a 1-D string array of labels or a 2-D one-hot matrix, got shape "
                      f"{array.shape} of {array.dtype}")


def _from_npz(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except ValueError:
        raise LabelsError("holds pickled Python objects, which are not loaded; save names with dtype=str") from None
    except OSError as exc:
        raise LabelsError(f"not a readable .npz archive: {exc}") from None
    if "names" not in contents:
        raise LabelsError(f"needs an array 'names' (found {sorted(contents)})")
    raw_names = contents["names"]
    if raw_names.ndim != 1 or raw_names.dtype.kind not in "US":
        raise LabelsError(f"'names' must be a 1-D string array, got shape {raw_names.shape} of {raw_names.dtype}")
    names = [_label(_text(value), f"names[{i}]") for i, value in enumerate(raw_names)]
    if "onehot" not in contents:
        return names
    matrix = contents["onehot"]
    if matrix.ndim != 2 or matrix.dtype.kind not in "biuf":
        raise LabelsError(f"'onehot' must be a 2-D numeric array, got shape {matrix.shape} of {matrix.dtype}")
    return _names_from_onehot(names, matrix.astype(np.float64), 1, " of 'names'")


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError:
        raise LabelsError("holds pickled Python objects, which are not loaded; save names with dtype=str") from None
    except OSError as exc:
        raise LabelsError(f"not a readable .npy array: {exc}") from None


def _names_from_onehot(names: list[str], matrix: np.ndarray, first_line: int, where: str = "") -> list[str]:
    """Each row's 1 gives that row's name a class index; every class needs exactly one name."""
    if matrix.shape[0] != len(names):
        raise LabelsError(f"the one-hot matrix has {matrix.shape[0]} rows for {len(names)} names{where}")
    _check_onehot(matrix, first_line)
    indexed: dict[int, str] = {}
    for line, (name, index) in enumerate(zip(names, matrix.argmax(axis=1).tolist(), strict=True), start=first_line):
        if indexed.get(index, name) != name:
            raise LabelsError(f"row {line}: class {index} is encoded for both {indexed[index]!r} and {name!r}")
        indexed[index] = name
    missing = sorted(set(range(matrix.shape[1])) - set(indexed))
    if missing:
        raise LabelsError(f"no row encodes class(es) {missing[:10]} of the {matrix.shape[1]} one-hot columns")
    return [indexed[i] for i in range(matrix.shape[1])]


def _check_onehot(matrix: np.ndarray, first_line: int) -> None:
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise LabelsError("the one-hot matrix is empty")
    binary = np.isclose(matrix, 0.0) | np.isclose(matrix, 1.0)
    ones = np.isclose(matrix, 1.0).sum(axis=1)
    bad = np.flatnonzero(~binary.all(axis=1) | (ones != 1))
    if bad.size:
        row = int(bad[0])
        raise LabelsError(f"row {first_line + row} is not one-hot (needs 0/1 values with exactly one 1): "
                          f"{matrix[row].tolist()[:20]}")


def _by_index(indexed: dict[int, str]) -> list[str]:
    expected = set(range(len(indexed)))
    if set(indexed) != expected:
        wrong = sorted(set(indexed) - expected)[:10]
        missing = sorted(expected - set(indexed))[:10]
        raise LabelsError(f"indices must be 0..{len(indexed) - 1}, each once (unexpected {wrong}, missing {missing})")
    return [indexed[i] for i in range(len(indexed))]


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LabelsError(f"{where}: label must be a string, got {value!r}")
    label = value.strip()
    if not label:
        raise LabelsError(f"{where}: empty label")
    return label


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _is_index(text: Any) -> bool:
    return isinstance(text, str) and text.strip().isdigit()


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _number(text: str, line: int) -> float:
    if not _is_number(text):
        raise LabelsError(f"row {line}: {text!r} is not a number")
    return float(text)
