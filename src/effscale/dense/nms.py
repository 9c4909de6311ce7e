"""Batched non-maximum suppression in plain torch (no torchvision: its CPU `batched_nms` kernel is
missing beside the CPU torch here, and the product must not need it).

`batched_nms(boxes, scores, classes, iou_threshold)`: within each class, greedily keep the
highest-scoring box and drop the others that overlap it by more than `iou_threshold` (IoU);
returns the kept indices, highest score first (ties: lower index first). Classes never suppress
each other: each class's boxes are shifted by an offset larger than every coordinate, so that
boxes of different classes cannot overlap, and one NMS pass does all classes.
"""
from __future__ import annotations

import torch

from ..errors import EffscaleError


def box_iou(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """IoU of one xyxy box with each of `others` (M x 4)."""
    left = torch.maximum(box[0], others[:, 0])
    top = torch.maximum(box[1], others[:, 1])
    right = torch.minimum(box[2], others[:, 2])
    bottom = torch.minimum(box[3], others[:, 3])
    inter = (right - left).clamp(min=0) * (bottom - top).clamp(min=0)
    area = (box[2] - box[0]).clamp(min=0) * (box[3] - box[1]).clamp(min=0)
    areas = (others[:, 2] - others[:, 0]).clamp(min=0) * (others[:, 3] - others[:, 1]).clamp(min=0)
    union = area + areas - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                iou_threshold: float = 0.5) -> torch.Tensor:
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1] or classes.shape != scores.shape:
        raise EffscaleError(f"batched_nms needs boxes N x 4, scores N and classes N; got {tuple(boxes.shape)}, "
                            f"{tuple(scores.shape)}, {tuple(classes.shape)}")
    if not 0 <= iou_threshold <= 1:
        raise EffscaleError(f"iou_threshold={iou_threshold!r} must be in [0, 1]")
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    boxes = boxes.float()
    offset = (boxes.abs().max() + 1) * classes.to(boxes.dtype)
    shifted = boxes + offset[:, None]
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    order = torch.tensor(order, dtype=torch.long)
    alive = torch.ones(len(order), dtype=torch.bool)
    keep = []
    for position in range(len(order)):
        if not alive[position]:
            continue
        index = order[position]
        keep.append(int(index))
        rest = order[position + 1:]
        overlapping = box_iou(shifted[index], shifted[rest]) > iou_threshold
        alive[position + 1:] &= ~overlapping
    return torch.tensor(keep, dtype=torch.long)


__all__ = ["batched_nms", "box_iou"]
