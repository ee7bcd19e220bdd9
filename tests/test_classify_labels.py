"""Every labels layout the runtime accepts, and a precise refusal of each malformed one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from classify_support import COLOURS, LAYOUTS, write_labels

from kubeinfer.runtime.errors import StartupError
from kubeinfer.runtime.labels import check_count, load_labels

NAMES = ["cat", "dog", "red fox", "owl"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_gives_the_labels_in_class_order(tmp_path: Path, layout: str) -> None:
    assert load_labels(write_labels(tmp_path, layout, NAMES)) == NAMES
    assert load_labels(write_labels(tmp_path / "colours", layout)) == COLOURS


def test_text_labels_are_stripped_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "labels.names"
    path.write_text("\ufeff  cat \r\n\r\ndog\n\n")
    assert load_labels(path) == ["cat", "dog"]


def test_a_single_column_csv_without_header_keeps_its_first_row(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("cat\ndog\n")
    assert load_labels(path) == ["cat", "dog"]


def test_csv_label_index_rows_and_a_quoted_label(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text('name,id\n"fox, red",1\ncat,0\n')
    assert load_labels(path) == ["cat", "fox, red"]


def test_a_pandas_style_one_hot_csv_of_many_samples(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    samples = np.eye(3, dtype=int)[[2, 0, 0, 1, 2]]
    path.write_text("bird,cat,dog\n" + "\n".join(",".join(map(str, row)) for row in samples) + "\n")
    assert load_labels(path) == ["bird", "cat", "dog"]


def test_an_npy_one_hot_matrix_may_name_its_rows_in_json(tmp_path: Path) -> None:
    np.save(tmp_path / "classes.npy", np.eye(3)[[1, 2, 0]])
    (tmp_path / "classes.json").write_text(json.dumps(["b", "c", "a"]))
    assert load_labels(tmp_path / "classes.npy") == ["a", "b", "c"]


def test_an_npz_without_onehot_lists_names_in_class_order(tmp_path: Path) -> None:
    np.savez(tmp_path / "labels.npz", names=np.array(["x", "y"]))
    assert load_labels(tmp_path / "labels.npz") == ["x", "y"]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(("name", "content", "message"), [
    ("labels.txt", "\n\n", "holds no labels"),
    ("labels.txt", b"\xff\xfe\x00bad", "not UTF-8 text"),
    ("labels.json", "[\"a\", ", "invalid JSON"),
    ("labels.json", "\"a\"", "expected a JSON list or object, got str"),
    ("labels.json", "[\"a\", 3]", "entry 1: label must be a string, got 3"),
    ("labels.json", "[\"a\", \"  \"]", "entry 1: empty label"),
    ("labels.json", "{\"0\": \"a\", \"2\": \"b\"}", "indices must be 0..1, each once (unexpected [2], missing [1])"),
    ("labels.json", "{\"a\": 0, \"b\": 0}", "index 0 is given to both 'a' and 'b'"),
    ("labels.json", "{\"a\": \"b\"}", "must map indices to labels"),
    ("labels.csv", "a,1,0\nb,0\n", "row 2 has 2 columns, the first row 3"),
    ("labels.csv", "0,a\n0,b\n", "row 2: index 0 appears twice"),
    ("labels.csv", "a,1,1,0\nb,0,1,0\nc,0,0,1\n", "row 1 is not one-hot"),
    ("labels.csv", "a,1,0,0\nb,0,0.5,0\nc,0,0,1\n", "row 2 is not one-hot"),
    ("labels.csv", "a,1,0,0\nb,0,0,1\n", "no row encodes class(es) [1]"),
    ("labels.csv", "a,1,0\nb,1,0\n", "row 2: class 0 is encoded for both 'a' and 'b'"),
    ("labels.csv", "x,y\n1,0\n0,2\n", "row 3 is not one-hot"),
    ("labels.csv", "1,0\n0,1\n", "numeric rows need a first row naming the one-hot columns"),
    ("labels.csv", "a,b,c\nd,e,f\n", "hold indices or one-hot values"),
    ("labels.csv", "0,a\nb,1\n", "row 1 is laid out as index,label, the rows after it as label,index"),
    ("labels.csv", "a,1\n0,b\nc,2\n", "rows mix layouts"),
])
def test_malformed_files_fail_with_the_file_and_the_reason(tmp_path: Path, name: str, content: str | bytes,
                                                           message: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(StartupError) as failure:
        load_labels(path)
    assert str(failure.value).startswith(f"labels file {path}: ")
    assert message in str(failure.value)


def test_pickled_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "labels.npy", np.array(["a", None], dtype=object), allow_pickle=True)
    with pytest.raises(StartupError, match="pickled Python objects, which are not loaded"):
        load_labels(tmp_path / "labels.npy")


def test_an_npy_matrix_without_names_beside_it_says_where_to_put_them(tmp_path: Path) -> None:
    np.save(tmp_path / "onehot.npy", np.eye(2))
    with pytest.raises(StartupError, match=r"needs its names beside it in onehot.txt or onehot.json"):
        load_labels(tmp_path / "onehot.npy")


def test_an_npy_matrix_with_more_rows_than_names(tmp_path: Path) -> None:
    np.save(tmp_path / "onehot.npy", np.eye(3))
    (tmp_path / "onehot.txt").write_text("a\nb\n")
    with pytest.raises(StartupError, match=r"3 rows for 2 names of onehot.txt"):
        load_labels(tmp_path / "onehot.npy")


def test_an_npz_needs_names(tmp_path: Path) -> None:
    np.savez(tmp_path / "labels.npz", onehot=np.eye(2))
    with pytest.raises(StartupError, match=r"needs an array 'names' \(found \['onehot'\]\)"):
        load_labels(tmp_path / "labels.npz")


def test_a_count_mismatch_names_both_files_and_both_counts() -> None:
    check_count(["a", "b", "c"], 3, Path("l.txt"), Path("m.pt"))
    with pytest.raises(StartupError) as failure:
        check_count(["a", "b"], 3, Path("l.txt"), Path("m.pt"))
    assert str(failure.value) == ("--labels l.txt has 2 labels but the model m.pt outputs 3 classes; "
                                  "give one label per model output")


@pytest.mark.parametrize("classes", [10, 1000])  # sorted as a Python list, and by numpy
def test_top_k_is_best_first_with_ties_to_the_lower_class_id(classes: int) -> None:
    from types import SimpleNamespace

    from kubeinfer.runtime.tasks.classify import ClassifyTask

    rng = np.random.default_rng(classes)
    probabilities = rng.choice(np.linspace(0, 1, 7, dtype=np.float32), classes)  # many ties
    labels = [f"c{i}" for i in range(classes)]
    result = ClassifyTask.top(SimpleNamespace(labels=labels), probabilities, 5)  # type: ignore[arg-type]
    expected = np.argsort(-probabilities, kind="stable")[:5]
    assert [c.class_id for c in result.top] == expected.tolist()
    assert [c.label for c in result.top] == [labels[i] for i in expected]
    assert [c.score for c in result.top] == [float(probabilities[i]) for i in expected]
    assert all(type(c.class_id) is int and type(c.score) is float for c in result.top)
