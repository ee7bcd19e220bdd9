"""Which rows of a YOLO head's raw predictions a request keeps: confidence threshold, class filter, class-aware NMS.

The same selection as ultralytics' ``non_max_suppression`` (each anchor's best class, then NMS per class),
without its per-call generality. Three ways to run it, one answer:

- ``select_boxes``: one image, torch (video frames, end-to-end heads, images with too many candidates);
- ``select_boxes_batch``: a batch in one vectorised step, each image with its own thresholds. Predictions on
  a GPU are selected there in torch operations (``select_boxes_batch_on_device``: only the kept rows leave the
  device); predictions on the CPU in numpy with one torchvision NMS call (``select_boxes_batch_on_host``).
  The batch step selects right after the model's pass, which has evicted the caches: there the ~25 small
  torch operations took 1.12-1.20 ms per batch of 4 at 128 px, the numpy ones 0.90-0.93 ms, and the batch
  step (two instances, batches of 4, 2 cores) went from 498-508 to 511-539 images/s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kubeinfer.runtime.models.yolo_io import Selection

MAX_NMS_CANDIDATES = 30_000


def select_boxes(predictions: torch.Tensor, classes_count: int, confidence: float, iou: float,
                 classes: Sequence[int], max_detections: int) -> torch.Tensor:
    """Class-aware NMS for one image of an NMS-based YOLO head.

    ``predictions`` is [4 + classes_count + extra, anchors] (xywh, class scores, mask coefficients);
    the result is [k, 6 + extra]: x1, y1, x2, y2, score, class, extra. The same selection as ultralytics'
    non_max_suppression (best class per anchor) without its per-call generality: about a quarter cheaper
    per image. Used where no batch step selected: video frames, end-to-end heads, too many candidates.
    """
    import torchvision

    rows = predictions.T
    scores, class_ids = predictions[4:4 + classes_count].max(dim=0)  # over contiguous rows: ~4x cheaper
    keep = scores > confidence
    if classes:
        keep &= torch.isin(class_ids, torch.tensor(list(classes), device=class_ids.device))
    rows, scores, class_ids = rows[keep], scores[keep], class_ids[keep]
    if rows.shape[0] > MAX_NMS_CANDIDATES:
        top = scores.topk(MAX_NMS_CANDIDATES).indices
        rows, scores, class_ids = rows[top], scores[top], class_ids[top]
    xy, half = rows[:, :2], rows[:, 2:4] / 2
    boxes = torch.cat((xy - half, xy + half), dim=1)
    kept = torchvision.ops.batched_nms(boxes, scores, class_ids, iou)[:max_detections]
    return torch.cat((boxes[kept], scores[kept, None], class_ids[kept, None].float(), rows[kept, 4 + classes_count:]),
                     dim=1)


def select_boxes_batch(predictions: torch.Tensor, classes_count: int,
                       selections: Sequence[Selection]) -> list[torch.Tensor]:
    """``select_boxes`` for a batch ([B, 4 + classes + extra, anchors]) in one vectorised step: thresholds and
    class filters per image, one NMS call per distinct IoU threshold (usually one) over every image at once,
    boxes kept apart by an offset per (image, class), in float64 so the offsets cost no precision; the
    result equals per-image ``select_boxes``. An image with more than ``MAX_NMS_CANDIDATES`` candidates sends
    the batch through the per-image path (which caps them)."""
    if predictions.device.type != "cpu":
        return select_boxes_batch_on_device(predictions, classes_count, selections)
    return [torch.from_numpy(rows) for rows in
            select_boxes_batch_on_host(predictions.numpy(), classes_count, selections)]


def select_boxes_batch_on_device(predictions: torch.Tensor, classes_count: int,
                                 selections: Sequence[Selection]) -> list[torch.Tensor]:
    """The batch selection in torch operations on the predictions' device (a GPU's: only the kept rows leave it)."""
    import torchvision

    count = predictions.shape[0]
    if count == 1:  # one image: the per-image path is leaner
        s = selections[0]
        return [select_boxes(predictions[0], classes_count, s.confidence, s.iou, s.classes, s.max_detections)]
    rows = predictions.transpose(1, 2)  # [B, anchors, channels]: a view, gathered only for the candidates
    scores, class_ids = predictions[:, 4:4 + classes_count].max(dim=1)  # over contiguous rows: ~4x cheaper
    device = predictions.device
    keep = scores > torch.tensor([s.confidence for s in selections], dtype=scores.dtype, device=device)[:, None]
    if any(s.classes for s in selections):
        allowed = torch.ones(count, classes_count, dtype=torch.bool, device=device)
        for i, s in enumerate(selections):
            if s.classes:
                allowed[i] = False
                allowed[i, list(s.classes)] = True
        keep &= allowed.gather(1, class_ids)
    if int(keep.sum(dim=1).max()) > MAX_NMS_CANDIDATES:
        return [select_boxes(predictions[i], classes_count, s.confidence, s.iou, s.classes, s.max_detections)
                for i, s in enumerate(selections)]
    image, anchor = keep.nonzero(as_tuple=True)
    picked, picked_scores, picked_classes = rows[image, anchor], scores[image, anchor], class_ids[image, anchor]
    xy, half = picked[:, :2], picked[:, 2:4] / 2
    boxes = torch.cat((xy - half, xy + half), dim=1)
    spaced = boxes.double()
    if spaced.shape[0]:
        group = image * classes_count + picked_classes
        spaced = spaced + (group.double() * (float(spaced.max()) + 1.0))[:, None]
    ious = torch.tensor([s.iou for s in selections], device=device)[image]
    survivors = []
    for threshold in sorted({s.iou for s in selections}):
        members = (ious == threshold).nonzero(as_tuple=True)[0]
        found = torchvision.ops.nms(spaced[members], picked_scores[members].double(), threshold)
        survivors.append(members[found])
    kept = torch.cat(survivors) if survivors else torch.zeros(0, dtype=torch.long, device=device)
    if len(survivors) > 1:  # NMS returns by descending score; merge the groups the same way
        kept = kept[picked_scores[kept].argsort(descending=True, stable=True)]
    kept = kept[image[kept].argsort(stable=True)]  # by image, each image's rows still by descending score
    per_image = torch.bincount(image[kept], minlength=count).tolist()
    rows_out = torch.cat((boxes, picked_scores[:, None], picked_classes[:, None].float(),
                          picked[:, 4 + classes_count:]), dim=1)
    result = []
    for i, part in enumerate(kept.split(per_image)):
        result.append(rows_out[part[:selections[i].max_detections]])
    return result


def select_boxes_batch_on_host(predictions: np.ndarray, classes_count: int,
                               selections: Sequence[Selection]) -> list[np.ndarray]:
    """The batch selection on CPU predictions (float32), numpy for everything but the one NMS call."""
    import torchvision

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
    if int(keep.sum(axis=1).max()) > MAX_NMS_CANDIDATES:
        return [select_boxes(torch.from_numpy(predictions[i]), classes_count, s.confidence, s.iou, s.classes,
                             s.max_detections).numpy() for i, s in enumerate(selections)]
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
        found = torchvision.ops.nms(torch.from_numpy(spaced[members]), torch.from_numpy(ranked[members]), threshold)
        survivors.append(members[found.numpy()])
    kept = np.concatenate(survivors)
    if len(survivors) > 1:  # NMS returns by descending score; merge the groups the same way
        kept = kept[np.argsort(-picked_scores[kept], kind="stable")]
    kept = kept[np.argsort(image[kept], kind="stable")]  # by image, each image's rows still by descending score
    per_image = np.bincount(image[kept], minlength=count)
    rows_out = np.concatenate((boxes, picked_scores[:, None], picked_classes[:, None].astype(np.float32),
                               picked[:, 4 + classes_count:]), axis=1)
    ends = np.cumsum(per_image)
    return [rows_out[kept[end - n:end][:s.max_detections]]
            for n, end, s in zip(per_image.tolist(), ends.tolist(), selections, strict=True)]
