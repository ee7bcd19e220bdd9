"""Galleries: loading and validating embeddings files, building from base-data folders, the similarity search,
and `kubeinfer gallery build`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from recognize_support import BRANDS, logo_encoders, write_base_data, write_png
from runtime_support import REPO, runtime_env

from kubeinfer.runtime.engine.encoder import load_encoder
from kubeinfer.runtime.gallery import (
    UNKNOWN,
    Gallery,
    GalleryError,
    build_from_directory,
    l2_normalize,
    load_file,
    save_npz,
)


def random_gallery(rng: np.random.Generator, rows: int, dim: int, labels: int) -> tuple[np.ndarray, list[str]]:
    names = [f"brand-{i:02d}" for i in range(labels)]
    return rng.normal(size=(rows, dim)).astype(np.float32), [names[i % labels] for i in rng.permutation(rows)]


def test_top_k_per_label_matches_brute_force() -> None:
    """Exemplar galleries: a label scores as its best vector; top-k is sorted and exact."""
    rng = np.random.default_rng(0)
    embeddings, labels = random_gallery(rng, rows=60, dim=12, labels=9)
    gallery = Gallery(embeddings * rng.uniform(0.5, 3.0, size=(60, 1)), labels, "test")
    queries = l2_normalize(rng.normal(size=(7, 12)))
    indices, similarities = gallery.top_k(queries, 4)

    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    for row, query in enumerate(queries):
        best_per_label: dict[str, float] = {}
        for vector, label in zip(unit, labels, strict=True):
            best_per_label[label] = max(best_per_label.get(label, -2.0), float(vector @ query))
        expected = sorted(best_per_label.items(), key=lambda item: -item[1])[:4]
        assert [gallery.labels[i] for i in indices[row]] == [label for label, _ in expected]
        np.testing.assert_allclose(similarities[row], [s for _, s in expected], rtol=1e-5, atol=1e-6)


def test_vectors_are_unit_length_and_labels_distinct_and_sorted() -> None:
    gallery = Gallery(np.array([[3.0, 4.0], [0.0, -2.0], [1.0, 1.0]]), ["b", "a", "b"], "test")
    np.testing.assert_allclose(np.linalg.norm(gallery.vectors, axis=1), 1.0, rtol=1e-6)
    assert gallery.labels == ("a", "b")
    assert (gallery.size, gallery.dimension) == (3, 2)
    assert sorted(gallery.row_labels) == ["a", "b", "b"]
    assert gallery.vectors.dtype == np.float32 and not gallery.vectors.flags.writeable


def test_top_k_larger_than_the_labels_returns_every_label_once() -> None:
    gallery = Gallery(np.eye(3, dtype=np.float32), ["x", "y", "z"], "test")
    indices, similarities = gallery.top_k(np.array([[0.0, 1.0, 0.0]], np.float32), 50)
    assert [gallery.labels[i] for i in indices[0]] == ["y", "x", "z"]
    np.testing.assert_allclose(similarities[0], [1.0, 0.0, 0.0], atol=1e-6)


def test_npz_round_trip_is_atomic(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    embeddings, labels = random_gallery(rng, rows=20, dim=8, labels=5)
    gallery = Gallery(embeddings, labels, "test")
    path = tmp_path / "gallery.npz"
    save_npz(gallery, path)
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.npz"]  # no temp file left behind
    with np.load(path) as archive:
        assert archive["embeddings"].dtype == np.float32 and archive["labels"].dtype.kind == "U"
    loaded = load_file(path)
    np.testing.assert_allclose(loaded.vectors, gallery.vectors, rtol=1e-6, atol=1e-7)
    assert loaded.row_labels == gallery.row_labels


def test_npy_with_labels_beside_it_or_named(tmp_path: Path) -> None:
    np.save(tmp_path / "brands.npy", np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    (tmp_path / "brands.txt").write_text("acme\ndelta\n\n")
    gallery = load_file(tmp_path / "brands.npy")
    assert gallery.labels == ("acme", "delta")
    (tmp_path / "names.json").write_text('["zulu", "yankee"]')  # --labels: any layout runtime/labels.py reads
    named = load_file(tmp_path / "brands.npy", tmp_path / "names.json")
    assert named.labels == ("yankee", "zulu")
    indices, _ = named.top_k(np.array([[1.0, 0.0]], np.float32), 1)
    assert named.labels[indices[0][0]] == "zulu"


def _npz(**arrays: np.ndarray) -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        np.savez(directory / "g.npz", **arrays)
        return directory / "g.npz"

    return write


def _files(target: str, **contents: bytes | str | np.ndarray) -> Callable[[Path], Path]:
    """Write each file (bytes, text, or an array saved as .npy) and return the one to load."""

    def write(directory: Path) -> Path:
        for name, content in contents.items():
            path = directory / name.replace("_", ".")
            if isinstance(content, np.ndarray):
                np.save(path, content)
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        return directory / target

    return write


GOOD = np.eye(3, dtype=np.float32)
ABC = np.array(["a", "b", "c"])


@pytest.mark.parametrize(("make", "message"), [
    (_npz(embeddings=np.zeros((0, 3), np.float32), labels=np.array([], dtype=str)), "is empty: no vectors"),
    (_npz(embeddings=np.array([[1, np.nan, 0], [0, 1, 0]], np.float32), labels=ABC[:2]),
     "1 vectors contain NaN or inf (first: row 0)"),
    (_npz(embeddings=np.array([[1, 0, 0], [0, np.inf, 0]], np.float32), labels=ABC[:2]),
     "contain NaN or inf (first: row 1)"),
    (_npz(embeddings=np.array([[1, 0, 0], [0, 0, 0]], np.float32), labels=ABC[:2]), "are all zeros (first: row 1)"),
    (_npz(embeddings=np.ones(3, np.float32), labels=ABC[:1]), "embeddings must have shape [N, D], got shape (3,)"),
    (_npz(embeddings=GOOD, labels=ABC[:2]), "2 labels for 3 vectors"),
    (_npz(embeddings=GOOD, labels=np.array(["a", UNKNOWN, "c"])), "is reserved"),
    (_npz(embeddings=GOOD, labels=np.array(["a", "", "c"])), "label of row 1 is empty"),
    (_npz(embeddings=GOOD, labels=np.array(["a", "b", None], dtype=object)), "labels are pickled Python objects"),
    (_npz(vectors=GOOD, labels=ABC), "missing array 'embeddings'"),
    (_npz(embeddings=np.array([["x", "y"]]), labels=ABC[:1]), "must be numbers"),
    (_files("g.npz", g_npz=b"not a zip archive"), "is not an .npz (zip) file"),
    (_files("g.npz", g_npz=b""), "is not an .npz (zip) file"),
    (_files("g.npz", g_npz=b"PK\x03\x04truncated"), "cannot read embeddings file"),
    (_files("g.csv", g_csv="1,2,3"), "unsupported suffix '.csv'"),
    (_files("g.npy", g_npy=GOOD), "needs its labels, one per row, in"),
    (_files("g.npy", g_npy=GOOD, g_txt="a\n\nc\n"), "2 labels for 3 vectors"),
    (_files("g.npy", g_npy=GOOD, g_txt="\n"), "holds no labels"),
    (_files("g.npy", g_npy=b"\x93NUMPY garbage", g_txt="a\nb\nc\n"), "cannot read embeddings file"),
    (_files("g.npy", g_npy=b"garbage", g_txt="a\nb\nc\n"), "is not a .npy file"),
])
def test_bad_galleries_are_refused_with_one_precise_line(tmp_path: Path, make: Callable[[Path], Path],
                                                         message: str) -> None:
    with pytest.raises(GalleryError) as failure:
        load_file(make(tmp_path))
    assert message in str(failure.value)
    assert "\n" not in str(failure.value)


class ColourEncoder:
    """A numpy 'encoder' (mean colour + a constant) that records the batch sizes it was given."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    @staticmethod
    def preprocess(bgr: np.ndarray) -> np.ndarray:
        return bgr.reshape(-1, 3).mean(axis=0).astype(np.float32) / 255.0

    def encode(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(batch))
        return [np.append(v, 0.1) for v in batch]


def test_build_from_directory_in_batches_centroid_and_exemplar(tmp_path: Path) -> None:
    base = write_base_data(tmp_path / "base", BRANDS)  # 6 brands x 3 images
    encoder, seen = ColourEncoder(), []
    exemplar = build_from_directory(base, encoder.preprocess, encoder.encode, batch_size=4, mode="exemplar",
                                    max_pixels=10**6, progress=seen.append)
    assert encoder.batches == [4, 4, 4, 4, 2] and seen == encoder.batches
    assert exemplar.size == 18 and exemplar.labels == tuple(sorted(BRANDS))

    centroid = build_from_directory(base, encoder.preprocess, encoder.encode, batch_size=32, mode="centroid",
                                    max_pixels=10**6)
    assert centroid.size == 6 and centroid.labels == exemplar.labels
    rows = np.asarray(exemplar.row_labels)
    for index, label in enumerate(centroid.labels):
        mean = exemplar.vectors[rows == label].mean(axis=0)
        np.testing.assert_allclose(centroid.vectors[index], mean / np.linalg.norm(mean), rtol=1e-5)


@pytest.mark.parametrize(("make", "message"), [
    (lambda b: (b / "acme" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"), "not a decodable"),
    (lambda b: (b / "acme" / "0.png").write_bytes(b""), "empty encoded bytes"),
    (lambda b: (b / "empty-brand").mkdir(), "no images (JPEG, PNG, WebP or BMP) for label 'empty-brand'"),
    (lambda b: write_png(b / UNKNOWN / "0.png", np.zeros((8, 8, 3), np.uint8)), "is reserved"),
])
def test_bad_base_data_is_refused_naming_the_file(tmp_path: Path, make: Callable[[Path], object],
                                                  message: str) -> None:
    base = write_base_data(tmp_path / "base", {"acme": BRANDS["acme"], "delta": BRANDS["delta"]})
    make(base)
    encoder = ColourEncoder()
    with pytest.raises(GalleryError) as failure:
        build_from_directory(base, encoder.preprocess, encoder.encode, batch_size=4, mode="centroid",
                             max_pixels=10**6)
    assert message in str(failure.value)


def test_empty_base_data_and_oversized_images_are_refused(tmp_path: Path) -> None:
    encoder = ColourEncoder()
    (tmp_path / "empty").mkdir()
    with pytest.raises(GalleryError, match="is empty: expected one sub-folder of images per label"):
        build_from_directory(tmp_path / "empty", encoder.preprocess, encoder.encode, batch_size=4, mode="centroid",
                             max_pixels=10**6)
    base = write_base_data(tmp_path / "base", {"acme": BRANDS["acme"]})
    with pytest.raises(GalleryError, match=r"acme/0.png: .*pixels"):
        build_from_directory(base, encoder.preprocess, encoder.encode, batch_size=4, mode="centroid",
                             max_pixels=100)


def start_cli(*args: str) -> subprocess.Popen[str]:
    """`kubeinfer gallery build ARGS` started; ``finish`` waits for it."""
    return subprocess.Popen([sys.executable, "-m", "kubeinfer", "gallery", "build", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=runtime_env(), cwd=REPO)


def finish(started: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, stderr = started.communicate(timeout=120)
    return subprocess.CompletedProcess(started.args, started.returncode, stdout, stderr)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return finish(start_cli(*args))


def test_cli_builds_the_same_gallery_as_the_runtime_would(tmp_path: Path) -> None:
    encoders = logo_encoders()
    base = write_base_data(tmp_path / "base", BRANDS)
    out = tmp_path / "out" / "brands.npz"
    done = run_cli("--model", str(encoders.torchscript), "--base-data", str(base), "--out", str(out),
                   "--gallery-batch-size", "5", "--gallery-mode", "exemplar")
    assert done.returncode == 0, done.stderr
    assert "encoding" in done.stderr and "18/18" in done.stderr  # the progress bar
    assert f"wrote {out}: 18 vectors x 83, 6 labels (exemplar, 18 images)" in done.stdout
    from_cli = load_file(out)

    encoder = load_encoder(encoders.onnx, "cpu")  # same weights, other format: the files must agree
    in_process = build_from_directory(base, encoder.preprocess, encoder.forward, batch_size=7, mode="exemplar",
                                      max_pixels=10**6)
    assert from_cli.row_labels == in_process.row_labels
    np.testing.assert_allclose(from_cli.vectors, in_process.vectors, atol=1e-4)


def test_cli_fails_with_one_line(tmp_path: Path) -> None:
    encoders = logo_encoders()
    base = write_base_data(tmp_path / "base", {"acme": BRANDS["acme"]})
    (base / "acme" / "bad.jpg").write_bytes(b"\xff\xd8\xff truncated")
    # both runs at once: each pays the interpreter's and torch's start-up
    bad_image = start_cli("--model", str(encoders.torchscript), "--base-data", str(base), "--out",
                          str(tmp_path / "g.npz"))
    wrong_suffix = start_cli("--model", str(encoders.torchscript), "--base-data", str(base), "--out",
                             str(tmp_path / "g.npy"))
    done = finish(bad_image)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("kubeinfer gallery build:")]
    assert len(errors) == 1 and "bad.jpg" in errors[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "g.npz").exists()
    refused = finish(wrong_suffix)
    assert refused.returncode == 2 and "must end in .npz" in refused.stderr
