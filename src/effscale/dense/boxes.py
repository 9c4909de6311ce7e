"""Anchors, matching, the detection losses and decoding, for EfficientDet's anchor-based heads.

Anchors (as the reference): at every level l and grid cell, `num_scales` sizes
anchor_scale * 2^l * 2^(s / num_scales) times each aspect ratio r (width / height = r, same
area), centred on the cell. Their order, level by level, row by row, cell by cell, anchor by
anchor, is the order `flatten_outputs` gives the head's maps, so anchor i is prediction i.

Matching: an anchor whose best IoU with a ground-truth box is >= 0.5 is positive, < 0.4
negative, in between ignored; every box also claims its own best anchor, so no object goes
unmatched however small (the low-quality matches of Faster R-CNN's matcher).

Losses: sigmoid focal loss (alpha 0.25, gamma 1.5 as EfficientDet) over all non-ignored anchors,
and for positives either the Huber loss (delta 0.1) on the encoded offsets (dx, dy, log dw, log dh),
weighted 50 as EfficientDet, or GIoU on the decoded boxes; both normalised by the positives.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import EffscaleError
from .nms import batched_nms

POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.4
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 1.5
HUBER_DELTA, BOX_WEIGHT = 0.1, 50.0
BOX_LOSSES = ("huber", "giou")
MAX_LOG_SCALE = math.log(1000 / 16)  # decoded sizes are capped as torchvision's box coder does


def anchor_boxes(spec) -> torch.Tensor:
    """A x 4 anchors (x1, y1, x2, y2) in input pixels for a `DetectorSpec`."""
    rows = []
    for level in spec.levels:
        stride = 2 ** level
        cells = spec.resolution // stride
        centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        shapes = []
        for octave in range(spec.num_scales):
            size = spec.anchor_scale * stride * 2 ** (octave / spec.num_scales)
            for ratio in spec.aspect_ratios:
                shapes.append((size * math.sqrt(ratio), size / math.sqrt(ratio)))
        half = torch.tensor(shapes) / 2  # S x 2 (half width, half height)
        centre = torch.stack([cx, cy], -1).reshape(-1, 1, 2)
        rows.append(torch.cat([centre - half, centre + half], -1).reshape(-1, 4))
    return torch.cat(rows)


def flatten_outputs(class_maps, box_maps, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level head maps (B x A*K x H x W, B x A*4 x H x W) -> B x anchors x K and B x anchors x 4."""
    batch = class_maps[0].shape[0]
    logits = torch.cat([m.permute(0, 2, 3, 1).reshape(batch, -1, num_classes) for m in class_maps], 1)
    boxes = torch.cat([m.permute(0, 2, 3, 1).reshape(batch, -1, 4) for m in box_maps], 1)
    return logits, boxes


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in a (N x 4) with every box in b (M x 4), N x M."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    xa, ya = anchors[:, 0] + wa / 2, anchors[:, 1] + ha / 2
    w, h = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3), (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    x, y = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return torch.stack([(x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)], -1)


def decode(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode` (anchors broadcast over any leading dims of offsets)."""
    wa, ha = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    xa, ya = anchors[..., 0] + wa / 2, anchors[..., 1] + ha / 2
    x, y = xa + offsets[..., 0] * wa, ya + offsets[..., 1] * ha
    w = wa * torch.exp(offsets[..., 2].clamp(max=MAX_LOG_SCALE))
    h = ha * torch.exp(offsets[..., 3].clamp(max=MAX_LOG_SCALE))
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], -1)


def match(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per anchor: the index of its box (>= 0), -1 negative, -2 ignored (see the module docstring)."""
    assigned = torch.full((len(anchors),), -1, dtype=torch.long)
    if len(boxes) == 0:
        return assigned
    iou = box_iou(anchors, boxes)  # A x M
    best, which = iou.max(1)
    assigned[best >= NEGATIVE_IOU] = -2
    positive = best >= POSITIVE_IOU
    assigned[positive] = which[positive]
    own = iou.argmax(0)  # each box's best anchor is positive for that box
    assigned[own] = torch.arange(len(boxes))
    return assigned


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise GIoU of paired boxes (N x 4 each), in [-1, 1]."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    return inter / union.clamp(min=1e-9) - (hull - union) / hull.clamp(min=1e-9)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed sigmoid focal loss (Lin et al. 2017) of logits against 0/1 targets."""
    probability = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probability * targets + (1 - probability) * (1 - targets)
    alpha_t = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    return (alpha_t * (1 - p_t) ** FOCAL_GAMMA * cross_entropy).sum()


def detection_loss(logits: torch.Tensor, offsets: torch.Tensor, anchors: torch.Tensor, targets: torch.Tensor,
                   box_loss: str = "huber") -> dict:
    """{"loss", "class", "box"} for a batch: logits B x A x K, offsets B x A x 4, targets B x M x 5
    (x1, y1, x2, y2, class; class < 0 pads)."""
    if box_loss not in BOX_LOSSES:
        raise EffscaleError(f"box loss {box_loss!r} is unknown; allowed: {', '.join(BOX_LOSSES)}")
    class_terms, box_terms, positives = [], [], 0
    for image in range(logits.shape[0]):
        rows = targets[image]
        rows = rows[rows[:, 4] >= 0]
        assigned = match(anchors, rows[:, :4])
        cared = assigned != -2
        wanted = torch.zeros_like(logits[image])
        positive = assigned >= 0
        wanted[positive, rows[assigned[positive], 4].long()] = 1
        class_terms.append(focal_loss(logits[image][cared], wanted[cared]))
        if positive.any():
            chosen = rows[assigned[positive], :4]
            if box_loss == "huber":
                target_offsets = encode(chosen, anchors[positive])
                box_terms.append(BOX_WEIGHT * F.huber_loss(offsets[image][positive], target_offsets,
                                                          delta=HUBER_DELTA, reduction="sum") / 4)
            else:
                predicted = decode(offsets[image][positive], anchors[positive])
                box_terms.append((1 - generalized_iou(predicted, chosen)).sum())
        positives += int(positive.sum())
    normaliser = max(positives, 1)
    class_part = torch.stack(class_terms).sum() / normaliser
    box_part = torch.stack(box_terms).sum() / normaliser if box_terms else offsets.sum() * 0
    return {"loss": class_part + box_part, "class": class_part.detach(), "box": box_part.detach()}


def postprocess(logits: torch.Tensor, offsets: torch.Tensor, anchors: torch.Tensor, **options) -> list[dict]:
    """Per image: {"boxes" N x 4, "scores" N, "labels" N} after top-k, threshold and per-class NMS
    (`select_detections`' options), from the head's flattened logits and anchor offsets."""
    return select_detections(torch.sigmoid(logits.float()), decode(offsets.float(), anchors), **options)


def select_detections(scores: torch.Tensor, boxes: torch.Tensor, *, score_threshold: float = 0.05,
                      iou_threshold: float = 0.5, pre_nms: int = 1000, max_detections: int = 100) -> list[dict]:
    """Per image of `scores` (B x anchors x classes, probabilities) and decoded `boxes` (B x anchors
    x 4): the `pre_nms` best (anchor, class) pairs above `score_threshold`, then per-class NMS at
    `iou_threshold`, at most `max_detections`; {"boxes", "scores", "labels"} each. This is all an
    exported detector (outputs scores and boxes) needs after the runtime."""
    results = []
    num_classes = scores.shape[-1]
    for image in range(scores.shape[0]):
        flat = scores[image].float().flatten()
        top, index = flat.topk(min(pre_nms, flat.numel()))
        chosen = top > score_threshold
        top, index = top[chosen], index[chosen]
        anchor_index, labels = index // num_classes, index % num_classes
        chosen_boxes = boxes[image][anchor_index].float()
        kept = batched_nms(chosen_boxes, top, labels, iou_threshold)[:max_detections]
        results.append({"boxes": chosen_boxes[kept], "scores": top[kept], "labels": labels[kept]})
    return results


__all__ = ["BOX_LOSSES", "anchor_boxes", "box_iou", "decode", "detection_loss", "encode", "flatten_outputs",
           "focal_loss", "generalized_iou", "match", "postprocess",
           "select_detections"]
