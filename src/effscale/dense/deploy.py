"""The deployable form of a detector or segmenter: what `effscale export` writes and what an
exported artifact computes.

A detector's per-level head maps become two outputs that need nothing model-specific after the
runtime: `scores` (B x anchors x classes, sigmoid probabilities) and `boxes` (B x anchors x 4,
x1 y1 x2 y2 in input pixels, decoded against the spec's anchors inside the graph). Thresholding
and per-class NMS (`boxes.select_detections`) follow; they are left out of the graph because
their output size depends on the data. A segmenter gives `masks` (logits B x (1 + classes) x H
x W at the input size) and a multi-task one also `image_logits` (B x classes).
"""
from __future__ import annotations

import torch
from torch import nn

from .boxes import anchor_boxes, decode, flatten_outputs
from .spec import DetectorSpec


class DeployedDetector(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("anchors", anchor_boxes(model.spec), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, offsets = flatten_outputs(*self.model(images), self.model.num_classes)
        return torch.sigmoid(logits), decode(offsets, self.anchors)


class DeployedSegmenter(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def deployable(model: nn.Module) -> nn.Module:
    """`model` (an EfficientDet or Segmenter) wrapped to give its deployed outputs (`output_names`),
    in eval mode; `spec`, `in_chans`, `num_classes` and `classes` are carried over."""
    wrapped = DeployedDetector(model) if isinstance(model.spec, DetectorSpec) else DeployedSegmenter(model)
    for name in ("spec", "in_chans", "num_classes"):
        setattr(wrapped, name, getattr(model, name))
    wrapped.classes = getattr(model, "classes", None)
    wrapped.features_only = False
    return wrapped.eval()


def dense_task_of(spec) -> str:
    if isinstance(spec, DetectorSpec):
        return "detection"
    return "multitask" if spec.classify else "segmentation"


def output_names(spec) -> list[str]:
    task = dense_task_of(spec)
    return {"detection": ["scores", "boxes"], "segmentation": ["masks"], "multitask": ["masks", "image_logits"]}[task]


__all__ = ["DeployedDetector", "DeployedSegmenter", "deployable", "dense_task_of", "output_names"]
