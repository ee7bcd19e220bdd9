"""How far the candidate revision's answer agrees with the stable one's: a score in [0, 1] per mirrored call.

The stable answer is the reference. Detect: the F1 of the candidate's boxes matched to the stable ones at IoU 0.5,
greedily per class (the candidate's boxes by falling score, each to the unmatched stable box of its class it
overlaps most), with the per-class counts (a matched box is a tp, an extra one a fp, a missed one a fn). Classify
and stream frames: top-1 label agreement. Recognize: the same identity (label and known). A call of several images
scores the mean of its images (detect: the F1 of the counts summed over them); answers of different lengths score 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kubeinfer.v1 import inference_pb2 as pb

IOU_MATCH = 0.5


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn


@dataclass
class Comparison:
    score: float
    classes: dict[str, Counts] = field(default_factory=dict)  # detect only: per class (label, else class id)


def f1(counts: Counts) -> float:
    """2 tp / (2 tp + fp + fn); 1 when neither answer has a box."""
    total = 2 * counts.tp + counts.fp + counts.fn
    return 1.0 if total == 0 else 2 * counts.tp / total


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4: x1 y1 x2 y2) with every box of ``b`` (m, 4): (n, m)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _class_of(detection: pb.Detection) -> str:
    return detection.label or str(detection.class_id)


def _boxes(detections: Sequence[pb.Detection]) -> np.ndarray:
    return np.array([(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in detections], dtype=np.float64).reshape(-1, 4)


def match_detections(stable: Sequence[pb.Detection], candidate: Sequence[pb.Detection]) -> dict[str, Counts]:
    """Per class: the candidate's boxes matched greedily (by falling score) to the stable ones at IoU >= 0.5."""
    classes: dict[str, Counts] = {}
    for name in sorted({_class_of(d) for d in stable} | {_class_of(d) for d in candidate}):
        ours = [d for d in stable if _class_of(d) == name]
        theirs = sorted((d for d in candidate if _class_of(d) == name), key=lambda d: -d.score)
        counts = Counts()
        if ours and theirs:
            overlaps = iou_matrix(_boxes(theirs), _boxes(ours))
            free = np.ones(len(ours), dtype=bool)
            for row in overlaps:
                masked = np.where(free, row, -1.0)
                best = int(np.argmax(masked))
                if masked[best] >= IOU_MATCH:
                    free[best] = False
                    counts.tp += 1
                else:
                    counts.fp += 1
            counts.fn = int(free.sum())
        else:
            counts.fp, counts.fn = len(theirs), len(ours)
        classes[name] = counts
    return classes


def compare_detect(stable: pb.DetectResponse, candidate: pb.DetectResponse) -> Comparison:
    if len(stable.results) != len(candidate.results):
        return Comparison(0.0)
    classes: dict[str, Counts] = {}
    total = Counts()
    for ours, theirs in zip(stable.results, candidate.results, strict=True):
        for name, counts in match_detections(ours.detections, theirs.detections).items():
            classes.setdefault(name, Counts()).add(counts)
            total.add(counts)
    return Comparison(f1(total), classes)


def _top1(result: pb.ClassifyResult) -> str | None:
    return result.top[0].label if result.top else None


def _mean(agreements: Sequence[bool]) -> float:
    return sum(agreements) / len(agreements) if agreements else 1.0


def compare_classify(stable: pb.ClassifyResponse, candidate: pb.ClassifyResponse) -> Comparison:
    if len(stable.results) != len(candidate.results):
        return Comparison(0.0)
    return Comparison(_mean([_top1(a) == _top1(b) for a, b in zip(stable.results, candidate.results, strict=True)]))


def compare_stream_frame(stable: pb.StreamPrediction, candidate: pb.ClassifyResponse) -> Comparison:
    """A StreamClassify frame (its own prediction, ``raw``) against the candidate's Classify of the same image."""
    if len(candidate.results) != 1:
        return Comparison(0.0)
    return Comparison(float(_top1(stable.raw) == _top1(candidate.results[0])))


def compare_recognize(stable: pb.RecognizeResponse, candidate: pb.RecognizeResponse) -> Comparison:
    if len(stable.results) != len(candidate.results):
        return Comparison(0.0)
    return Comparison(_mean([(a.label, a.known) == (b.label, b.known)
                             for a, b in zip(stable.results, candidate.results, strict=True)]))
