"""The standard dense metrics, from a well-kept library where the field has one.

Detection: COCO mAP@[.5:.95], mAP@.5, mAP@.75 and AP by object size, computed by
faster-coco-eval (a C++ port of pycocotools' COCOeval that gives the same numbers; the tests
cross-check the two). Segmentation: mean IoU over classes (background included) and pixel
accuracy from a confusion matrix, pixels marked IGNORE left out.
"""
from __future__ import annotations

import contextlib
import io

import torch

from ..errors import EffscaleError
from .data import IGNORE

COCO_STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
INSTALL_HINT = "pip install 'effscale[dense]' (faster-coco-eval)"


def _faster_coco_eval():
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise EffscaleError(f"COCO mAP needs faster-coco-eval: {INSTALL_HINT}") from None
    return COCO, COCOeval_faster


def coco_map(ground_truth: dict, detections: list[dict]) -> dict:
    """COCO box metrics (percent) of `detections` (COCO result dicts: image_id, category_id, bbox
    [x, y, w, h], score) against a COCO ground-truth dict. With no detections every AP is 0."""
    COCO, COCOeval = _faster_coco_eval()
    if not ground_truth.get("annotations"):
        raise EffscaleError("COCO mAP needs at least one ground-truth box in the evaluation split")
    if not detections:  # every AP is 0, except sizes without ground truth (None, as the library gives)
        areas = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in ground_truth["annotations"]]
        present = {"map_small": any(v < 32 ** 2 for v in areas),
                   "map_medium": any(32 ** 2 <= v < 96 ** 2 for v in areas), "map_large": any(v >= 96 ** 2 for v in areas)}
        return {name: (0.0 if present.get(name, True) else None) for name in COCO_STATS} | {"detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):  # the library prints its summary table
        gt = COCO(ground_truth)
        dt = gt.loadRes(detections)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[:6]]
    # -1 means "no ground truth of that size": reported as None, not as a zero
    return {name: (round(100 * v, 3) if v >= 0 else None) for name, v in zip(COCO_STATS, stats)} \
        | {"detections": len(detections)}


def detections_to_coco(predictions: list[dict], image_ids, scales) -> list[dict]:
    """Per-image predictions (boxes in stored pixels, labels 0..K-1) -> COCO results in file pixels."""
    rows = []
    for prediction, image_id, scale in zip(predictions, image_ids, scales):
        boxes = prediction["boxes"].double() / float(scale)
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), prediction["scores"].tolist(),
                                                  prediction["labels"].tolist()):
            rows.append({"image_id": int(image_id), "category_id": int(label) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return rows


def confusion_matrix(predicted: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    """classes x classes counts (row = truth, column = prediction), IGNORE pixels left out."""
    cared = truth != IGNORE
    index = truth[cared].long() * classes + predicted[cared].long()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def segmentation_scores(confusion: torch.Tensor, names: list[str] | None = None) -> dict:
    """mIoU (percent, over classes present in the truth or the predictions), pixel accuracy, per-class IoU."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp(min=1), torch.zeros_like(union))
    names = names or [str(k) for k in range(len(iou))]
    return {"miou": round(100 * float(iou[present].mean()), 3) if present.any() else 0.0,
            "pixel_accuracy": round(100 * float(true_positive.sum() / confusion.sum().clamp(min=1)), 3),
            "iou": {name: (round(100 * float(v), 3) if p else None) for name, v, p in zip(names, iou, present)}}


__all__ = ["COCO_STATS", "coco_map", "confusion_matrix", "detections_to_coco",
           "segmentation_scores"]
