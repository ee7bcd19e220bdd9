"""Box selection for predictions on a GPU, in torch operations there, so only the kept rows leave the device.

The same selection as ``box_selection`` (numpy, for predictions on the host), which tests/test_nms.py holds it
to: each anchor's best class, the request's score threshold and class filter, then class-aware NMS
(torchvision's), capped at the request's most boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kubeinfer.runtime.models.box_selection import MAX_NMS_CANDIDATES
from kubeinfer.runtime.models.yolo_io import Selection


def select_boxes_on_device(predictions: torch.Tensor, classes_count: int, selection: Selection) -> torch.Tensor:
    """One image's kept rows ([k, 6 + extra]: x1, y1, x2, y2, score, class, extra) from its predictions
    ([4 + classes_count + extra, anchors]) on their device: a batch of one, and images whose batch had too
    many candidates for one NMS call."""
    import torchvision

    rows = predictions.T
    scores, class_ids = predictions[4:4 + classes_count].max(dim=0)  # over contiguous rows: ~4x cheaper
    keep = scores > selection.confidence
    if selection.classes:
        keep &= torch.isin(class_ids, torch.tensor(list(selection.classes), device=class_ids.device))
    rows, scores, class_ids = rows[keep], scores[keep], class_ids[keep]
    if rows.shape[0] > MAX_NMS_CANDIDATES:
        top = scores.topk(MAX_NMS_CANDIDATES).indices
        rows, scores, class_ids = rows[top], scores[top], class_ids[top]
    xy, half = rows[:, :2], rows[:, 2:4] / 2
    boxes = torch.cat((xy - half, xy + half), dim=1)
    kept = torchvision.ops.batched_nms(boxes, scores, class_ids, selection.iou)[:selection.max_detections]
    return torch.cat((boxes[kept], scores[kept, None], class_ids[kept, None].float(), rows[kept, 4 + classes_count:]),
                     dim=1)


def select_boxes_batch_on_device(predictions: torch.Tensor, classes_count: int,
                                 selections: Sequence[Selection]) -> list[torch.Tensor]:
    """The batch selection in torch operations on the predictions' device (a GPU's: only the kept rows leave it)."""
    import torchvision

    count = predictions.shape[0]
    if count == 1:  # one image: the per-image path is leaner
        return [select_boxes_on_device(predictions[0], classes_count, selections[0])]
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
        return [select_boxes_on_device(predictions[i], classes_count, s) for i, s in enumerate(selections)]
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


