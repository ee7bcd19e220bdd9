"""Boxes go back to original pixels for a whole batch at once exactly as ultralytics' per-image scale_boxes does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ultralytics.utils import ops

from kubeinfer.runtime.models.yolo_io import boxes_in_originals

SIZE = 640


@pytest.mark.parametrize("seed", range(5))
def test_a_batch_is_scaled_as_scale_boxes_scales_each_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    originals = [(int(h), int(w)) for h, w in rng.integers(1, 3000, (9, 2))] + [(480, 640), (640, 640), (17, 1)]
    kept = []
    for _ in originals:
        count = int(rng.integers(0, 6))
        xy = rng.uniform(-20, SIZE + 20, (count, 2)).astype(np.float32)
        wh = rng.uniform(0, 300, (count, 2)).astype(np.float32)
        rows = np.concatenate([xy, xy + wh, rng.uniform(0, 1, (count, 1)), rng.integers(0, 80, (count, 1)),
                               rng.normal(size=(count, 3))], axis=1).astype(np.float32)  # + mask coefficients
        kept.append(rows)
    names = {c: f"class{c}" for c in range(40)}  # half the classes drawn: the others are named by number
    found = boxes_in_originals(kept, originals, SIZE, names)
    assert [len(f) for f in found] == [k.shape[0] for k in kept]
    for rows, original, boxes in zip(kept, originals, found, strict=True):
        want = ops.scale_boxes((SIZE, SIZE), torch.from_numpy(rows[:, :4].copy()), original).tolist()
        got = [[b.x1, b.y1, b.x2, b.y2] for b in boxes]
        np.testing.assert_allclose(np.asarray(got).reshape(-1, 4), np.asarray(want).reshape(-1, 4), rtol=0,
                                   atol=1e-3)
        assert [b.score for b in boxes] == rows[:, 4].tolist()
        assert [b.class_id for b in boxes] == rows[:, 5].astype(int).tolist()
        assert [b.label for b in boxes] == [names.get(c, str(c)) for c in rows[:, 5].astype(int).tolist()]
        assert all(b.polygons == [] and 0 <= b.x1 <= original[1] and 0 <= b.y2 <= original[0] for b in boxes)


def test_no_rows_anywhere_is_no_boxes() -> None:
    assert boxes_in_originals([np.zeros((0, 6)), np.zeros((0, 6))], [(10, 10), (20, 5)], SIZE, {}) == [[], []]
