"""The shadow mirror's comparators and sampler, and the traffic table's parsing, on hand-made answers."""

from __future__ import annotations

import pytest

from kubeinfer.runtime.shadow import compare
from kubeinfer.runtime.shadow.compare import Counts
from kubeinfer.runtime.shadow.mirror import Sampler
from kubeinfer.runtime.traffic import TrafficError, parse
from kubeinfer.v1 import inference_pb2 as pb


def box(x1: float, y1: float, x2: float, y2: float, label: str = "car", score: float = 0.9) -> pb.Detection:
    return pb.Detection(box=pb.Box(x1=x1, y1=y1, x2=x2, y2=y2), score=score, label=label)


def detect(*images: list[pb.Detection]) -> pb.DetectResponse:
    return pb.DetectResponse(results=[pb.DetectResult(detections=boxes) for boxes in images])


def test_identical_detections_agree_fully() -> None:
    boxes = [box(0, 0, 10, 10), box(20, 20, 40, 40, "person")]
    result = compare.compare_detect(detect(boxes), detect(list(boxes)))
    assert result.score == 1.0
    assert result.classes == {"car": Counts(1, 0, 0), "person": Counts(1, 0, 0)}


def test_boxes_match_at_iou_one_half_and_not_below() -> None:
    stable = detect([box(0, 0, 10, 10), box(100, 0, 110, 10)])
    # (0,0,10,10) vs (0,0,10,5): IoU 50/100, exactly 0.5 -> a match; (100,0,110,10) vs (104,0,114,10)
    # is 60/140 = 0.43 -> a false positive and a miss
    candidate = detect([box(0, 0, 10, 5), box(104, 0, 114, 10)])
    result = compare.compare_detect(stable, candidate)
    assert result.classes == {"car": Counts(tp=1, fp=1, fn=1)}
    assert result.score == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_matching_is_per_class() -> None:
    stable = detect([box(0, 0, 10, 10, "car")])
    candidate = detect([box(0, 0, 10, 10, "truck")])
    result = compare.compare_detect(stable, candidate)
    assert result.classes == {"car": Counts(0, 0, 1), "truck": Counts(0, 1, 0)}
    assert result.score == 0.0


def test_greedy_matching_takes_the_candidates_by_falling_score() -> None:
    # one stable box, two candidate boxes over it: the higher-scored one takes it, the other is a false positive
    stable = detect([box(0, 0, 10, 10)])
    candidate = detect([box(0, 0, 10, 9, score=0.3), box(0, 0, 10, 10, score=0.8)])
    result = compare.compare_detect(stable, candidate)
    assert result.classes == {"car": Counts(1, 1, 0)}
    assert result.score == pytest.approx(2 / 3)


def test_counts_add_up_over_the_images_of_a_call() -> None:
    stable = detect([box(0, 0, 10, 10)], [box(0, 0, 10, 10), box(50, 50, 60, 60)])
    candidate = detect([box(0, 0, 10, 10)], [])
    result = compare.compare_detect(stable, candidate)
    assert result.classes == {"car": Counts(1, 0, 2)}
    assert result.score == pytest.approx(2 / 4)


def test_no_boxes_on_either_side_agree_and_different_lengths_do_not() -> None:
    assert compare.compare_detect(detect([]), detect([])).score == 1.0
    assert compare.compare_detect(detect([]), detect([], [])).score == 0.0


def classify(*labels: str) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(results=[pb.ClassifyResult(top=[pb.Classification(label=label)]) for label in labels])


def test_classify_scores_the_top1_agreement_per_image() -> None:
    assert compare.compare_classify(classify("red", "blue"), classify("red", "blue")).score == 1.0
    assert compare.compare_classify(classify("red", "blue"), classify("red", "green")).score == 0.5
    frame = pb.StreamPrediction(raw=pb.ClassifyResult(top=[pb.Classification(label="red")]))
    assert compare.compare_stream_frame(frame, classify("red")).score == 1.0
    assert compare.compare_stream_frame(frame, classify("blue")).score == 0.0


def test_recognize_scores_the_same_identity() -> None:
    def answer(label: str, known: bool) -> pb.RecognizeResponse:
        return pb.RecognizeResponse(results=[pb.Recognition(label=label, known=known, similarity=0.5)])

    assert compare.compare_recognize(answer("ada", True), answer("ada", True)).score == 1.0
    assert compare.compare_recognize(answer("ada", True), answer("bob", True)).score == 0.0
    assert compare.compare_recognize(answer("ada", True), answer("ada", False)).score == 0.0


@pytest.mark.parametrize(("percent", "calls", "taken"), [(0, 50, 0), (20, 50, 10), (30, 40, 12), (100, 7, 7)])
def test_sampling_takes_exactly_the_percent(percent: int, calls: int, taken: int) -> None:
    sampler = Sampler()
    picks = [sampler.take(percent) for _ in range(calls)]
    assert sum(picks) == taken
    if percent == 20:  # spread evenly: every fifth call
        assert [i for i, pick in enumerate(picks) if pick] == list(range(4, 50, 5))


def test_the_traffic_table_parses_and_refuses_what_is_wrong() -> None:
    table = parse('{"generation": 7, "stable": {"revision": "a1", "target": "s:8001"},'
                  ' "candidate": {"revision": "f6", "target": "c:8001"}, "candidateWeight": 10, "shadowPercent": 0}')
    assert (table.generation, table.stable.revision if table.stable else None, table.candidate_weight) == (7, "a1", 10)
    assert parse('{"generation": 1, "stable": {"revision": "a1", "target": "s:8001"}, "candidate": null}'
                 ).candidate is None
    for bad in ("", "[]", '{"generation": -1}', '{"generation": 1, "shadowPercent": 5}',
                '{"generation": 1, "candidate": {"revision": "x", "target": "y"}, "shadowPercent": 101}',
                '{"generation": 1, "stable": {"revision": 3}}'):
        with pytest.raises(TrafficError):
            parse(bad)
