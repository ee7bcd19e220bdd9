"""A recognize runtime with a bad gallery exits at start, non-zero, with one clear line (all cases started at once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from recognize_support import BRANDS, logo_encoders, write_base_data
from runtime_support import RuntimeProcess


def _gallery(path: Path, embeddings: np.ndarray, labels: list[str]) -> Path:
    np.savez(path, embeddings=embeddings, labels=np.array(labels, dtype=str))
    return path


def test_each_bad_gallery_exits_with_one_line(runtime_factory: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    encoders = logo_encoders()
    rng = np.random.default_rng(0)
    with_nan = rng.normal(size=(3, encoders.dimension)).astype(np.float32)
    with_nan[2, 5] = np.nan
    corrupt_base = write_base_data(tmp_path / "corrupt-base", {"acme": BRANDS["acme"]})
    (corrupt_base / "acme" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "empty-base").mkdir()
    (tmp_path / "garbage.npz").write_bytes(b"this is not an npz archive")
    np.save(tmp_path / "alone.npy", rng.normal(size=(2, encoders.dimension)).astype(np.float32))
    model = ["--model", str(encoders.torchscript)]
    cases: dict[str, tuple[list[str], str]] = {
        "dimension": (["--embeddings", str(_gallery(tmp_path / "small.npz", rng.normal(size=(4, 16)), list("abcd")))],
                      f"has 16-dimensional vectors but the encoder {encoders.torchscript} outputs 83"),
        "empty": (["--embeddings", str(_gallery(tmp_path / "empty.npz", np.zeros((0, 83), np.float32), []))],
                  "is empty: no vectors"),
        "nan": (["--embeddings", str(_gallery(tmp_path / "nan.npz", with_nan, ["a", "b", "c"]))],
                "1 vectors contain NaN or inf (first: row 2)"),
        "unreadable": (["--embeddings", str(tmp_path / "garbage.npz")], "garbage.npz is not an .npz (zip) file"),
        "no-labels": (["--embeddings", str(tmp_path / "alone.npy")], "needs its labels, one per row"),
        "corrupt-image": (["--base-data", str(corrupt_base)], "broken.jpg: not a decodable JPEG"),
        "empty-base": (["--base-data", str(tmp_path / "empty-base")], "is empty: expected one sub-folder"),
        "no-gallery": ([], "needs exactly one gallery: --embeddings FILE or --base-data DIR"),
    }
    runtimes = {name: runtime_factory("--task", "recognize", *model, *flags, wait=False)
                for name, (flags, _) in cases.items()}
    for name, runtime in runtimes.items():
        code = runtime.process.wait(timeout=120)
        logs = runtime.logs()
        errors = [line for line in logs.splitlines() if line.startswith("kubeinfer serve:")]
        assert code == 1, f"{name}: exit {code}\n{logs}"
        assert len(errors) == 1 and cases[name][1] in errors[0], f"{name}:\n{logs}"
        assert "Traceback" not in logs, f"{name}:\n{logs}"
