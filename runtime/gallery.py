"""Recognition galleries: labelled, L2-normalised embeddings and the batch similarity search against them.

Formats a gallery is read from:

- ``.npz`` (what ``kubeinfer gallery build`` writes): ``embeddings`` float32 [N, D] and
  ``labels`` [N] strings (a numpy unicode array, e.g. ``np.array(names, dtype=str)``;
  pickled object arrays are refused). Other keys are ignored.
- ``.npy``: the [N, D] matrix alone; its labels, one per row in row order, in the file
  ``--labels`` names (any layout ``runtime/labels.py`` reads: .txt one per line, .json
  list, .csv, .npy strings), else in a text file beside it with the same stem
  (``brands.npy`` -> ``brands.txt``).
- a base-data directory ``DIR/<label>/<images>`` (JPEG, PNG, WebP, BMP; sub-folders
  allowed), encoded at start in batches: one normalised mean vector per label
  (``centroid``) or one vector per image (``exemplar``).

Vectors are L2-normalised on load, so cosine similarity is one matrix product (``match``: a batch of queries
against the whole gallery). Several
vectors may share a label (exemplar mode); a label's similarity is that of its best vector.
A Gallery never changes after construction: a reload builds a new one and swaps a reference.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubeinfer.runtime.errors import Code, InferenceError, StartupError
from kubeinfer.runtime.labels import load_labels

log = logging.getLogger(__name__)
UNKNOWN = "unknown"  # the label of a match below the threshold, so no gallery label may use it
GALLERY_MODES = ("centroid", "exemplar")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
_EPSILON = 1e-12


class GalleryError(StartupError):
    """A gallery cannot be loaded or built: fatal at start, logged (old gallery kept) on reload."""


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as C-contiguous float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, _EPSILON), dtype=np.float32)


class Gallery:
    """An immutable [N, D] matrix of unit vectors with a label per row, grouped by label."""

    def __init__(self, embeddings: np.ndarray, labels: Sequence[Any] | np.ndarray, source: str) -> None:
        matrix = _checked_matrix(embeddings, source)
        row_labels = _checked_labels(labels, matrix.shape[0], source)
        names, inverse = np.unique(np.asarray(row_labels, dtype=str), return_inverse=True)
        order = np.argsort(inverse, kind="stable")  # rows of one label next to each other
        self.source = source
        self.labels: tuple[str, ...] = tuple(str(n) for n in names)  # distinct, sorted
        self.vectors = l2_normalize(matrix[order])
        self.row_label_index = np.ascontiguousarray(inverse[order], dtype=np.int64)
        self.vectors.flags.writeable = False
        self.row_label_index.flags.writeable = False
        self._starts = np.flatnonzero(np.r_[True, self.row_label_index[1:] != self.row_label_index[:-1]])
        self._one_per_label = len(self.labels) == self.size

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def row_labels(self) -> list[str]:
        return [self.labels[i] for i in self.row_label_index]

    def label_similarities(self, queries: np.ndarray) -> np.ndarray:
        """[B, L] cosine similarity of each unit query to each label (its best vector): one matrix product."""
        scores = queries @ self.vectors.T
        if self._one_per_label:
            return scores
        return np.maximum.reduceat(scores, self._starts, axis=1)

    def top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices into ``labels`` and similarities of the k best labels per query, best first."""
        scores = self.label_similarities(queries)
        count = scores.shape[1]
        k = max(1, min(k, count))
        if k == 1:  # the common case: a linear scan, far cheaper than a partition
            best = scores.argmax(axis=1)[:, None]
            return best, np.take_along_axis(scores, best, axis=1)
        if k < count:
            candidates = np.argpartition(scores, count - k, axis=1)[:, count - k:]
        else:
            candidates = np.broadcast_to(np.arange(count), scores.shape)
        picked = np.take_along_axis(scores, candidates, axis=1)
        order = np.argsort(-picked, axis=1, kind="stable")
        return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(picked, order, axis=1)

    def describe(self) -> str:
        return f"{self.size} vectors x {self.dimension}, {len(self.labels)} labels, from {self.source}"


@dataclass(slots=True)
class Candidate:
    label: str
    similarity: float


@dataclass(slots=True)
class Recognition:
    label: str  # best gallery label, or "unknown" below the threshold
    similarity: float  # of the best gallery label
    known: bool
    candidates: list[Candidate] = field(default_factory=list)  # top-k labels, best first


def match(gallery: Gallery, queries: np.ndarray, threshold: float, top_k: int) -> list[Recognition]:
    """Best label, known flag and top-k candidates per unit query vector."""
    finite = np.isfinite(queries).all(axis=1)
    if not finite.all():
        raise InferenceError(Code.INTERNAL, f"the encoder returned NaN or inf for image {int(np.argmin(finite))}")
    indices, similarities = gallery.top_k(queries, top_k)
    results = []
    for row_indices, row_similarities in zip(indices.tolist(), similarities.tolist(), strict=True):
        candidates = [Candidate(gallery.labels[i], s) for i, s in zip(row_indices, row_similarities, strict=True)]
        best = candidates[0]
        known = best.similarity >= threshold
        results.append(Recognition(best.label if known else UNKNOWN, best.similarity, known, candidates))
    return results


def _checked_matrix(embeddings: Any, source: str) -> np.ndarray:
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise GalleryError(f"gallery {source}: embeddings must have shape [N, D], got shape {tuple(array.shape)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise GalleryError(f"gallery {source}: embeddings must be numbers (float32), got dtype {array.dtype}")
    if array.shape[0] == 0:
        raise GalleryError(f"gallery {source} is empty: no vectors")
    if array.shape[1] == 0:
        raise GalleryError(f"gallery {source}: vectors have dimension 0")
    matrix = array.astype(np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise GalleryError(f"gallery {source}: {bad.size} vectors contain NaN or inf (first: row {bad[0]})")
    zero = np.linalg.norm(matrix, axis=1) <= _EPSILON
    if zero.any():
        raise GalleryError(f"gallery {source}: {int(zero.sum())} vectors are all zeros (first: row "
                           f"{np.flatnonzero(zero)[0]}); they have no direction to compare")
    return matrix


def _checked_labels(labels: Sequence[Any] | np.ndarray, count: int, source: str) -> list[str]:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise GalleryError(f"gallery {source}: labels must have shape [N], got shape {tuple(array.shape)}")
    if array.shape[0] != count:
        raise GalleryError(f"gallery {source}: {array.shape[0]} labels for {count} vectors")
    names = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.tolist()]
    for row, name in enumerate(names):
        if not name.strip():
            raise GalleryError(f"gallery {source}: label of row {row} is empty")
        if name == UNKNOWN:
            raise GalleryError(f"gallery {source}: label {UNKNOWN!r} (row {row}) is reserved for matches below "
                               "the threshold; rename it")
    return names


# -- files


def load_file(path: Path, labels_path: Path | None = None) -> Gallery:
    """Read an ``.npz``, or an ``.npy`` plus its labels file; GalleryError with one line on any problem."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".npy":
        return _load_npy(path, labels_path)
    raise GalleryError(f"embeddings file {path}: unsupported suffix {path.suffix!r}; use .npz "
                       "(embeddings + labels) or .npy with a labels file")


def labels_path_for(path: Path, labels_path: Path | None = None) -> Path | None:
    """The labels file an embeddings file needs: None for .npz, else --labels or FILE.txt beside it."""
    if path.suffix.lower() != ".npy":
        return None
    return labels_path if labels_path is not None else path.with_suffix(".txt")


def _check_magic(path: Path, magic: bytes, kind: str) -> None:
    """np.load takes any file it cannot place for a pickle; name the real problem instead."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(magic))
    except OSError as exc:
        raise GalleryError(f"cannot read embeddings file {path}: {exc.strerror or exc}") from None
    if head != magic:
        raise GalleryError(f"embeddings file {path} is not {kind} file (it does not start like one)")


def _load_npz(path: Path) -> Gallery:
    _check_magic(path, b"PK", "an .npz (zip)")
    unreadable = (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError)
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise GalleryError(f"cannot read embeddings file {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise GalleryError(f"embeddings file {path} is a single .npy array, not an .npz archive of 'embeddings' "
                           "and 'labels'")
    with loaded as archive:
        missing = [key for key in ("embeddings", "labels") if key not in archive.files]
        if missing:
            raise GalleryError(f"embeddings file {path}: missing array {missing[0]!r} (has {archive.files}); "
                               "expected 'embeddings' [N, D] float32 and 'labels' [N]")
        arrays = []
        for key in ("embeddings", "labels"):
            try:
                arrays.append(archive[key])
            except ValueError as exc:
                if "pickle" in str(exc).lower():
                    raise GalleryError(f"embeddings file {path}: {key} are pickled Python objects; save them as "
                                       "plain arrays, e.g. np.array(labels, dtype=str)") from None
                raise GalleryError(f"cannot read {key} in embeddings file {path}: {exc}") from None
            except unreadable as exc:
                raise GalleryError(f"cannot read {key} in embeddings file {path}: {type(exc).__name__}: "
                                   f"{exc}") from None
    return Gallery(arrays[0], arrays[1], str(path))


def _load_npy(path: Path, labels_path: Path | None) -> Gallery:
    label_file = labels_path_for(path, labels_path)
    assert label_file is not None
    if not label_file.is_file():
        raise GalleryError(f"embeddings file {path} needs its labels, one per row, in {label_file} "
                           "(or name the file with --labels)")
    _check_magic(path, b"\x93NUMPY", "a .npy")
    try:
        embeddings = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise GalleryError(f"cannot read embeddings file {path}: {type(exc).__name__}: {exc}") from None
    try:
        labels = load_labels(label_file)
    except StartupError as exc:  # LabelsError: one line naming the file
        raise GalleryError(str(exc)) from None
    return Gallery(embeddings, labels, f"{path} + {label_file.name}")


def save_npz(gallery: Gallery, path: Path) -> None:
    """Write ``embeddings`` and ``labels`` atomically (temp file + rename), so a watching runtime never reads half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        try:
            np.savez(tmp, embeddings=gallery.vectors, labels=np.asarray(gallery.row_labels, dtype=str))
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    os.replace(tmp.name, path)


def file_signature(*paths: Path | None) -> tuple[tuple[int, int, int] | None, ...]:
    """(mtime ns, size, inode) per file, None for a missing one: a cheap "has it changed" test."""
    signature = []
    for path in paths:
        if path is None:
            continue
        try:
            stat = path.stat()
            signature.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        except OSError:
            signature.append(None)
    return tuple(signature)


# -- building from a base-data directory


@dataclass(frozen=True, slots=True)
class LabelledImage:
    label: str
    path: Path


def scan_base_data(directory: Path) -> list[LabelledImage]:
    """Every image under DIR/<label>/, labels sorted, files sorted; an error for a directory without any."""
    if not directory.is_dir():
        raise GalleryError(f"--base-data {directory} is not a directory of DIR/<label>/<images>")
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise GalleryError(f"--base-data {directory} is empty: expected one sub-folder of images per label")
    found: list[LabelledImage] = []
    for folder in folders:
        if folder.name == UNKNOWN:
            raise GalleryError(f"--base-data {folder}: label {UNKNOWN!r} is reserved for matches below the "
                               "threshold; rename the folder")
        images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                        and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not images:
            raise GalleryError(f"--base-data {folder}: no images (JPEG, PNG, WebP or BMP) for label {folder.name!r}")
        found.extend(LabelledImage(folder.name, image) for image in images)
    return found


def read_image(path: Path, max_pixels: int) -> np.ndarray:
    """Decode one gallery image to BGR with the runtime's guards; GalleryError naming the file otherwise."""
    from kubeinfer.runtime.images import ImageInput, decode

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GalleryError(f"cannot read gallery image {path}: {exc.strerror or exc}") from None
    try:
        return decode(ImageInput(encoded=data), 0, max_pixels)
    except InferenceError as exc:
        raise GalleryError(f"gallery image {path}: {exc.message.removeprefix('image 0: ')}") from None


def _chunks(items: Sequence[LabelledImage], size: int) -> Iterator[Sequence[LabelledImage]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def build_from_directory(
    directory: Path,
    preprocess: Callable[[np.ndarray], np.ndarray],
    encode: Callable[[list[np.ndarray]], Sequence[np.ndarray]],
    *,
    batch_size: int,
    mode: str,
    max_pixels: int,
    executor: Executor | None = None,
    progress: Callable[[int], object] | None = None,
) -> Gallery:
    """Encode DIR/<label>/<images> ``batch_size`` images at a time; centroid or exemplar vectors per label.

    ``executor`` decodes and preprocesses a batch in parallel (none: in this thread);
    ``progress`` is told how many images each finished batch held.
    """
    if mode not in GALLERY_MODES:
        raise GalleryError(f"gallery mode {mode!r} is not one of {GALLERY_MODES}")
    if batch_size < 1:
        raise GalleryError("gallery batch size must be at least 1")
    items = scan_base_data(directory)

    def prepare(item: LabelledImage) -> np.ndarray:
        return preprocess(read_image(item.path, max_pixels))

    vectors: list[np.ndarray] = []
    for chunk in _chunks(items, batch_size):
        inputs = list(executor.map(prepare, chunk)) if executor is not None else [prepare(i) for i in chunk]
        outputs = np.stack([np.asarray(o, dtype=np.float32).reshape(-1) for o in encode(inputs)])
        finite = np.isfinite(outputs).all(axis=1)
        if not finite.all():
            bad = chunk[int(np.argmin(finite))].path
            raise GalleryError(f"the encoder returned NaN or inf for gallery image {bad}")
        vectors.append(l2_normalize(outputs))
        if progress is not None:
            progress(len(chunk))
    matrix = np.concatenate(vectors)
    labels = [item.label for item in items]
    if mode == "exemplar":
        return Gallery(matrix, labels, f"{directory} (exemplar)")
    names, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    sums = np.zeros((len(names), matrix.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, matrix)
    return Gallery(sums.astype(np.float32), names, f"{directory} (centroid)")
