"""Parameters of a detector spec, counted from the spec as the reference EfficientDet builds it.

The architecture counted (the TF reference and its PyTorch port `effdet`, whose released D0-D7
this reproduces; paper Tan, Pang & Le 2020):
- backbone: the image spec up to its last stage (no head conv, no classifier); pyramid inputs
  P_min..P_5 are the outputs of the last stage at each stride;
- levels above the backbone: the first by a 1x1 conv + batch norm from the deepest feature (when
  its width differs from the BiFPN's) and 3x3 max pooling, the others by max pooling alone;
- each BiFPN layer: a top-down node per level from max-1 down to min and a bottom-up node per
  level from min+1 up to max; every node fuses its inputs with one learned weight each (fast
  normalised fusion; none where the spec's fusion is "sum", as in D6-D7x), then swish and a
  separable conv (3x3 depthwise, no bias; 1x1 pointwise with bias) and batch norm. In the first layer, every edge carrying a backbone feature whose
  width differs from the BiFPN's gets its own 1x1 conv + batch norm (including the top level
  entering the first top-down node when the pyramid ends inside the backbone, e.g. P3-P5; the
  released models always have levels above it, so there it never applies);
- class and box heads, shared across levels: `head_layers` separable convs (as above) with a
  batch norm per level, then a separable prediction conv to anchors x classes (x 4 for boxes).
The reference keeps a conv bias before every batch norm (its "redundant bias"), counted here.
"""
from __future__ import annotations

from ..cost import cost
from .spec import DetectorSpec, SegmenterSpec, backbone_levels


def level_channels(spec: DetectorSpec) -> dict[int, int]:
    """Width of the backbone feature at each pyramid level it produces (level = log2 stride)."""
    return backbone_levels(spec.backbone)


def _conv_bn(cin: int, cout: int) -> int:
    return cin * cout + cout + 2 * cout  # 1x1 conv with bias, then batch norm (weight, bias)


def _separable(width: int, out: int, bn: bool = True) -> int:
    return width * 9 + width * out + out + (2 * out if bn else 0)


def _first_layer_edges(spec: DetectorSpec) -> list[int]:
    """Levels of the original-feature edges of the first neck layer (each gets a 1x1 conv + BN where
    the feature is a backbone one of another width). BiFPN: top-down nodes min..max-1, bottom-up
    min+1..max, and the top level into the first top-down node. FPN: top-down nodes min..max-1
    and the top level, converted once."""
    levels = spec.levels
    if spec.neck == "fpn":
        return list(levels[:-1]) + [levels[-1]]
    return list(levels[:-1]) + list(levels[1:]) + [levels[-1]]


def _neck_nodes(spec: DetectorSpec) -> list[int]:
    """The level of every fusion node of one neck layer (top-down, then BiFPN's bottom-up)."""
    levels = spec.levels
    return list(levels[:-1]) + (list(levels[1:]) if spec.neck == "bifpn" else [])


def detector_params(spec: DetectorSpec) -> dict:
    """Parameter count of `spec`, by part: backbone, resample, bifpn, class_head, box_head, total."""
    width, levels, features = spec.fpn_channels, spec.levels, level_channels(spec)
    deepest = max(features)
    rows = cost(spec.backbone, num_classes=0).layers
    backbone = sum(r.params for r in rows if not r.name.startswith(("head.", "classifier", "pool")))
    resample = 0
    if spec.max_level > deepest and features[deepest] != width:
        resample += _conv_bn(features[deepest], width)  # the first level above the backbone
    edges = _first_layer_edges(spec)
    first_layer = sum(_conv_bn(features[lvl], width) for lvl in edges
                      if lvl <= deepest and lvl in features and features[lvl] != width)
    top_down = len(levels) - 1
    bottom_up = len(levels) - 1 if spec.neck == "bifpn" else 0
    # fusion weights: 2 per top-down node, 3 per bottom-up node but the top one (2); FPN: none
    fusion_weights = 2 * top_down + 3 * (bottom_up - 1) + 2 if spec.weighted_fusion else 0
    per_layer = (top_down + bottom_up) * _separable(width, width) + fusion_weights
    bifpn = first_layer + spec.fpn_layers * per_layer
    head_convs = spec.head_layers * (width * 9 + width * width + width) + len(levels) * spec.head_layers * 2 * width
    class_head = head_convs + _separable(width, spec.num_anchors * spec.num_classes, bn=False)
    box_head = head_convs + _separable(width, spec.num_anchors * 4, bn=False)
    parts = {"backbone": backbone, "resample": resample, "bifpn": bifpn, "class_head": class_head,
             "box_head": box_head}
    return {**parts, "total": sum(parts.values())}


def detector_macs(spec: DetectorSpec, batch: int = 1) -> dict:
    """Multiply-accumulates of one forward pass at the spec's input, by part (convs and the
    backbone's linear-free layers as `cost()` counts them; pooling, resizing and fusion sums are
    not MACs). Level l is resolution / 2^l on a side (the input is a multiple of 2^max_level)."""
    width, levels, features = spec.fpn_channels, spec.levels, level_channels(spec)
    deepest = max(features)
    side = {lvl: spec.resolution // 2 ** lvl for lvl in levels}
    pixels = {lvl: side[lvl] ** 2 for lvl in levels}
    rows = cost(spec.backbone, num_classes=0, batch=1).layers
    backbone = sum(r.macs for r in rows if not r.name.startswith(("head.", "classifier", "pool")))
    resample = pixels[deepest] * features[deepest] * width \
        if spec.max_level > deepest and features[deepest] != width else 0
    edges = _first_layer_edges(spec)
    first_layer = sum(pixels[lvl] * features[lvl] * width for lvl in edges
                      if lvl <= deepest and lvl in features and features[lvl] != width)
    separable = width * 9 + width * width  # per output pixel of a width -> width separable conv
    nodes = _neck_nodes(spec)
    bifpn = first_layer + spec.fpn_layers * sum(pixels[lvl] * separable for lvl in nodes)
    every_level = sum(pixels.values())

    def head(outputs: int) -> int:
        return every_level * (spec.head_layers * separable + width * 9 + width * outputs)

    parts = {"backbone": backbone, "resample": resample, "bifpn": bifpn,
             "class_head": head(spec.num_anchors * spec.num_classes), "box_head": head(spec.num_anchors * 4)}
    parts = {k: v * batch for k, v in parts.items()}
    return {**parts, "total": sum(parts.values())}


def _backbone_rows(spec):
    rows = cost(spec.backbone, num_classes=0, batch=1).layers
    return [r for r in rows if not r.name.startswith(("head.", "classifier", "pool"))]


def segmenter_cost(spec: SegmenterSpec) -> dict:
    """{"params": {part: n}, "macs": {part: n}} of a `SegmenterSpec` as `modules.Segmenter` builds it:
    laterals (1x1 conv with bias), per-level 3x3 conv (no bias) + batch norm, 1x1 classifier over
    background + classes at the output stride (the final bilinear upsampling has no MACs)."""
    width, features = spec.decoder_channels, level_channels(spec)
    pixels = {lvl: (spec.resolution // 2 ** lvl) ** 2 for lvl in spec.levels}
    outputs = spec.num_classes + 1
    finest = pixels[spec.levels[0]]
    rows = _backbone_rows(spec)
    params = {"backbone": sum(r.params for r in rows),
              "laterals": sum(features[lvl] * width + width for lvl in spec.levels),
              "decoder": len(spec.levels) * (9 * width * width + 2 * width),
              "classifier": width * outputs + outputs,
              "image_head": features[spec.levels[-1]] * spec.num_classes + spec.num_classes if spec.classify else 0}
    macs = {"backbone": sum(r.macs for r in rows),
            "laterals": sum(pixels[lvl] * features[lvl] * width for lvl in spec.levels),
            "decoder": sum(pixels[lvl] * 9 * width * width for lvl in spec.levels),
            "classifier": finest * width * outputs,
            "image_head": features[spec.levels[-1]] * spec.num_classes if spec.classify else 0}
    return {"params": {**params, "total": sum(params.values())}, "macs": {**macs, "total": sum(macs.values())}}


def dense_cost(spec) -> dict:
    """{"params", "macs"} totals and by part, for a detector or a segmenter spec."""
    if isinstance(spec, DetectorSpec):
        params, macs = detector_params(spec), detector_macs(spec)
    else:
        counted = segmenter_cost(spec)
        params, macs = counted["params"], counted["macs"]
    return {"params": params["total"], "macs": macs["total"], "params_by_part": params, "macs_by_part": macs}


__all__ = ["dense_cost", "detector_macs", "detector_params", "level_channels", "segmenter_cost"]
