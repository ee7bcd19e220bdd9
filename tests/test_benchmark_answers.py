"""The benchmark's correctness check: served answers compared with the raw model's in-process ones."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # appended: the repo root's `operator/` must not shadow the stdlib module

from benchmarks.run import same_answer  # noqa: E402

RAW = [[0, 10.0, 20.0, 30.0, 40.0, 0.90], [1, 50.0, 50.0, 80.0, 90.0, 0.60]]


def test_classifier_answers_are_equal_classes() -> None:
    assert same_answer(3, 3)
    assert not same_answer(3, 4)


def test_boxes_match_within_tolerance_in_any_order() -> None:
    near = [[1, 51.5, 49.0, 80.0, 91.9, 0.62], [0, 10.0, 20.0, 30.0, 40.0, 0.87]]
    assert same_answer(near, RAW)
    assert same_answer([], [])


def test_boxes_that_differ_do_not_match() -> None:
    moved = [RAW[0], [1, 50.0, 50.0, 80.0, 93.0, 0.60]]  # a corner 3 px away
    relabelled = [RAW[0], [0, *RAW[1][1:]]]
    rescored = [RAW[0], [*RAW[1][:5], 0.70]]
    for served in (moved, relabelled, rescored, RAW[:1], [*RAW, RAW[1]], []):
        assert not same_answer(served, RAW), served
