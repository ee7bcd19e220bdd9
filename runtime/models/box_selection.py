"""Which rows of a YOLO head's raw predictions a request keeps: confidence threshold, class filter, class-aware NMS.

numpy alone, so a model ONNX Runtime runs is served without torch. The selection is ultralytics'
``non_max_suppression`` (each anchor's best class, then NMS per class) without its per-call generality, and
``nms`` keeps exactly the boxes torchvision's CPU kernel keeps: the same greedy pass in descending score order,
the same arithmetic in the boxes' dtype, the same strict comparison with the threshold in float64
(tests/test_nms.py holds both to it). Predictions on a GPU are selected there instead, in torch
(``box_selection_torch``), so only the kept rows leave the device.

A batch is selected in one vectorised step, each image with its own thresholds: one NMS pass per distinct IoU
threshold (usually one) over every image at once, the boxes of each (image, class) group moved apart by an
offset, in float64 so the offsets cost no precision. The batch step selects right after the model's pass, which
has evicted the caches: there the ~25 small torch operations it replaced took 1.12-1.20 ms per batch of 4 at
128 px and the numpy ones 0.90-0.93 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kubeinfer.runtime.models.yolo_io import Selection

MAX_NMS_CANDIDATES = 30_000


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the ``boxes`` ([n, 4] x1 y1 x2 y2) kept, by descending ``scores``: a box is dropped when it
    overlaps a kept, higher-scored one by more than ``iou``. The answer of ``torchvision.ops.nms`` on the same
    arrays: areas and overlaps are computed in the boxes' dtype in the same order of operations, and compared
    with the threshold in float64, as its kernel compares them."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    zero = boxes.dtype.type(0)
    threshold = np.float64(iou)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(best)
        width = np.maximum(zero, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        height = np.maximum(zero, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        overlap = width * height
        overlap /= areas[best] + areas[rest] - overlap
        order = rest[~(overlap > threshold)]
    return np.asarray(kept, dtype=np.int64)


def select_boxes(predictions: np.ndarray, classes_count: int, selection: Selection) -> np.ndarray:
    """One image's kept rows ([k, 6 + extra]: x1, y1, x2, y2, score, class, extra) from its predictions
    ([4 + classes_count + extra, anchors]: xywh, class scores, mask coefficients)."""
    return select_boxes_batch(predictions[None], classes_count, [selection])[0]


def select_boxes_batch(predictions: np.ndarray, classes_count: int,
                       selections: Sequence[Selection]) -> list[np.ndarray]:
    """Each image's kept rows from a batch's predictions ([B, 4 + classes_count + extra, anchors], float32), in
    one vectorised step; an image with more than ``MAX_NMS_CANDIDATES`` candidates keeps its best-scored ones."""
    count = predictions.shape[0]
    class_scores = predictions[:, 4:4 + classes_count]
    class_ids = class_scores.argmax(axis=1)  # [B, anchors]; the first of equal scores, as torch's max
    scores = np.take_along_axis(class_scores, class_ids[:, None], axis=1)[:, 0]
    keep = scores > np.array([s.confidence for s in selections], dtype=scores.dtype)[:, None]
    if any(s.classes for s in selections):
        allowed = np.ones((count, classes_count), dtype=bool)
        for i, s in enumerate(selections):
            if s.classes:
                allowed[i] = False
                allowed[i, list(s.classes)] = True
        keep &= np.take_along_axis(allowed, class_ids, axis=1)
    for i in np.flatnonzero(keep.sum(axis=1) > MAX_NMS_CANDIDATES):
        _cap_candidates(keep[i], scores[i])
    image, anchor = keep.nonzero()
    picked = predictions[image, :, anchor]  # [candidates, channels]
    picked_scores, picked_classes = scores[image, anchor], class_ids[image, anchor]
    xy, half = picked[:, :2], picked[:, 2:4] / 2
    boxes = np.concatenate((xy - half, xy + half), axis=1)
    spaced = boxes.astype(np.float64)
    if spaced.shape[0]:
        group = image * classes_count + picked_classes
        spaced += (group * (float(spaced.max()) + 1.0))[:, None]
    ious = np.array([s.iou for s in selections])[image]
    ranked = picked_scores.astype(np.float64)
    survivors = []
    for threshold in sorted({s.iou for s in selections}):
        members = np.flatnonzero(ious == threshold)
        survivors.append(members[nms(spaced[members], ranked[members], threshold)])
    kept = np.concatenate(survivors)
    if len(survivors) > 1:  # NMS returns by descending score; merge the groups the same way
        kept = kept[np.argsort(-picked_scores[kept], kind="stable")]
    kept = kept[np.argsort(image[kept], kind="stable")]  # by image, each image's rows still by descending score
    per_image = np.bincount(image[kept], minlength=count)
    rows = np.concatenate((boxes, picked_scores[:, None], picked_classes[:, None].astype(np.float32),
                           picked[:, 4 + classes_count:]), axis=1)
    ends = np.cumsum(per_image)
    return [rows[kept[end - n:end][:s.max_detections]]
            for n, end, s in zip(per_image.tolist(), ends.tolist(), selections, strict=True)]


def _cap_candidates(keep: np.ndarray, scores: np.ndarray) -> None:
    """Leave only the ``MAX_NMS_CANDIDATES`` best-scored of an image's candidates in ``keep`` (in place)."""
    candidates = np.flatnonzero(keep)
    best = candidates[np.argsort(-scores[candidates], kind="stable")[:MAX_NMS_CANDIDATES]]
    keep[:] = False
    keep[best] = True


def select_end2end(predictions: np.ndarray, selection: Selection) -> np.ndarray:
    """One image's kept rows from a head that selected its boxes itself (NMS-free heads, NMS in the export):
    ``predictions`` is [N, 6 + extra] (x1, y1, x2, y2, score, class, extra); what is left is the score
    threshold, the class filter and the cap, in the head's order, as ultralytics does for such heads."""
    keep = predictions[:, 4] > selection.confidence
    if selection.classes:
        keep &= np.isin(predictions[:, 5], np.asarray(selection.classes, dtype=predictions.dtype))
    return predictions[np.flatnonzero(keep)[:selection.max_detections]].astype(np.float32, copy=False)
