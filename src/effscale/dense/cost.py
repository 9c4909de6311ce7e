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

from ..cost import DTYPE_BYTES, MAC_KINDS, Cost, _check_int, _Pass, cost
from ..errors import EffscaleError
from .spec import DetectorSpec, SegmenterSpec, backbone_levels, neck_topology


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


class _DenseWalk(_Pass):
    """`cost()`'s pass (same rows, conventions and liveness model) through a detector or segmenter."""

    def level_features(self, spec, x: int, in_chans: int) -> dict[int, tuple[int, int, tuple[int, int]]]:
        """The backbone's pyramid: {level: (tensor, channels, size)} at every level it produces."""
        stages = self.backbone(spec.backbone, x, in_chans, spec.resolution, prefix="backbone.")
        return {info["reduction"].bit_length() - 1: (stages[info["stage"]][0], info["num_chs"],
                                                    stages[info["stage"]][1])
                for info in spec.backbone.feature_levels()}

    def resize(self, name: str, x: int, channels: int, hw: tuple[int, int], size: tuple[int, int]) -> int:
        """`modules._resize`: 3x3 / 2 max pooling while larger, nearest upsampling when smaller."""
        step = 0
        while hw[1] > size[1]:
            out_hw = (-(-hw[0] // 2), -(-hw[1] // 2))
            x, hw, step = self.elementwise(f"{name}.pool{step}", "maxpool", (x,), channels, hw, out_hw), out_hw, step + 1
        if hw[1] < size[1]:
            x = self.elementwise(f"{name}.upsample", "upsample", (x,), channels, hw, size)
        return x

    def separable(self, name: str, x: int, width: int, out: int, hw, *, norm: bool, shared: bool = False,
                  bn_per_level: bool = False) -> int:
        x, _ = self.conv(f"{name}.depthwise", x, width, width, 3, hw, groups=width, kind="depthwise",
                         norm=False, shared=shared)
        x, _ = self.conv(f"{name}.pointwise", x, width, out, 1, hw, bias=True, norm=norm or bn_per_level,
                         shared=shared)
        return x

    def neck_layer(self, spec: DetectorSpec, layer: int, maps: list[tuple[int, int, tuple[int, int]]]):
        """One BiFPN / FPN layer over maps [(tensor, channels, size)] ascending; returns its outputs."""
        width, prefix = spec.fpn_channels, f"bifpn.{layer}"
        count = len(maps)
        maps = list(maps)
        if spec.neck == "fpn":
            top, channels, hw = maps[-1]
            if channels != width:
                top, _ = self.conv(f"{prefix}.top.0", top, channels, width, 1, hw, bias=True)
            maps.append((top, width, hw))
        graph, outputs = neck_topology(count, spec.neck)
        for n, (target, sources) in enumerate(graph):
            name, size = f"{prefix}.nodes.{n}", maps[target][2]
            inputs = []
            for position, source in enumerate(sources):
                x, channels, hw = maps[source]
                if source < count and channels != width:
                    x, _ = self.conv(f"{name}.convert.{position}.0", x, channels, width, 1, hw, bias=True)
                inputs.append(self.resize(f"{name}.input{position}", x, width, hw, size))
            fused = self._add(tuple(inputs), width, size, len(sources) if spec.weighted_fusion else 0, name=name,
                              kind="fusion", in_channels=width, kernel=0, stride=1, groups=1, in_hw=size, macs=0)
            maps.append((self.separable(f"{name}.conv", fused, width, width, size, norm=True), width, size))
        return [maps[i] for i in outputs]

    def head(self, spec: DetectorSpec, name: str, maps, outputs: int) -> list[int]:
        """A head shared across levels: its weights counted at the first level, a BN per level."""
        width, results = spec.fpn_channels, []
        for level, (x, _, hw) in enumerate(maps):
            for i in range(spec.head_layers):
                x = self.separable(f"{name}.convs.{i}", x, width, width, hw, norm=False, shared=level > 0,
                                   bn_per_level=True)
            results.append(self.separable(f"{name}.predict", x, width, outputs, hw, norm=False, shared=level > 0))
        return results


def dense_layer_cost(spec, *, batch: int = 1, dtype: str = "fp32", in_chans: int = 3) -> Cost:
    """`cost()` for a detector or segmenter spec: one row per operation of an inference pass, in
    execution order, named by module path (`model.get_submodule(row.name)` is the conv for conv
    rows; a head's rows repeat per level, its shared weights counted at the first), with
    `cost()`'s conventions for parameters, MACs, bytes and peak activation memory. Rows of kind
    maxpool / upsample / fusion (the weighted sum and swish of a BiFPN node) / add have no MACs.
    Totals equal `dense_cost` and the module (params; MACs by FlopCounterMode)."""
    if not isinstance(spec, (DetectorSpec, SegmenterSpec)):
        raise EffscaleError(f"dense_layer_cost() takes a DetectorSpec or SegmenterSpec, not {type(spec).__name__}")
    if dtype not in DTYPE_BYTES:
        raise EffscaleError(f"dtype={dtype!r} is unknown; allowed: {', '.join(DTYPE_BYTES)}")
    _check_int("batch", batch, 1)
    _check_int("in_chans", in_chans, 1)
    walk = _DenseWalk(batch, DTYPE_BYTES[dtype], spec.backbone.padding)
    image = walk.tensor(in_chans, (spec.resolution, spec.resolution))
    pyramid = walk.level_features(spec, image, in_chans)
    if isinstance(spec, DetectorSpec):
        walk.pinned = set(_detector_rows(walk, spec, pyramid))
    else:
        walk.pinned = set(_segmenter_rows(walk, spec, pyramid, image))
    rows = tuple(walk.rows)
    return Cost(name=spec.name, resolution=spec.resolution, batch=batch, dtype=dtype, num_classes=spec.num_classes,
                in_chans=in_chans, params=sum(r.params for r in rows), macs=sum(r.macs for r in rows),
                activations=sum(r.activations for r in rows if r.kind in MAC_KINDS),
                bytes_read=sum(r.bytes_read for r in rows), bytes_written=sum(r.bytes_written for r in rows),
                peak_activation_bytes=walk.peak_bytes(), layers=rows)


def _detector_rows(walk: _DenseWalk, spec: DetectorSpec, pyramid) -> list[int]:
    width, deepest = spec.fpn_channels, max(pyramid)
    maps = [pyramid[level] for level in spec.levels if level <= deepest]
    x, channels, hw = pyramid[deepest]
    for k in range(spec.max_level - deepest):  # the levels above the backbone
        if k == 0 and channels != width:
            x, _ = walk.conv("first_above.0", x, channels, width, 1, hw, bias=True)
            channels = width
        out_hw = (-(-hw[0] // 2), -(-hw[1] // 2))
        x = walk.elementwise(f"levels.{deepest + k + 1}.pool", "maxpool", (x,), channels, hw, out_hw)
        hw = out_hw
        maps.append((x, channels, hw))
    for layer in range(spec.fpn_layers):
        maps = walk.neck_layer(spec, layer, maps)
    return (walk.head(spec, "class_head", maps, spec.num_anchors * spec.num_classes)
            + walk.head(spec, "box_head", maps, spec.num_anchors * 4))


def _segmenter_rows(walk: _DenseWalk, spec: SegmenterSpec, pyramid, image: int) -> list[int]:
    width = spec.decoder_channels
    features = []
    for k, level in enumerate(spec.levels):
        x, channels, hw = pyramid[level]
        features.append((walk.conv(f"laterals.{k}", x, channels, width, 1, hw, bias=True, norm=False)[0], hw))
    for k in range(len(features) - 2, -1, -1):  # top-down: coarser maps added into finer ones
        (fine, hw), (coarse, coarse_hw) = features[k], features[k + 1]
        up = walk.elementwise(f"decoder.{k}.upsample", "upsample", (coarse,), width, coarse_hw, hw)
        features[k] = (walk.elementwise(f"decoder.{k}.add", "add", (fine, up), width, hw, hw), hw)
    size = features[0][1]
    fused = None
    for k, (x, hw) in enumerate(features):
        x, _ = walk.conv(f"smooth.{k}.0", x, width, width, 3, hw)
        if k:
            x = walk.elementwise(f"smooth.{k}.upsample", "upsample", (x,), width, hw, size)
        fused = x if fused is None else walk.elementwise(f"decoder.sum{k}", "add", (fused, x), width, size, size)
    logits, _ = walk.conv("classifier", fused, width, spec.num_classes + 1, 1, size, bias=True, norm=False)
    full = (spec.resolution, spec.resolution)
    outputs = [walk.elementwise("masks.upsample", "upsample", (logits,), spec.num_classes + 1, size, full)]
    if spec.classify:
        x, channels, hw = pyramid[spec.levels[-1]]
        pooled = walk.elementwise("image_head.pool", "pool", (x,), channels, hw, (1, 1))
        outputs.append(walk.linear("image_head", pooled, channels, spec.num_classes))
    return outputs


def dense_cost(spec) -> dict:
    """{"params", "macs"} totals and by part, for a detector or a segmenter spec."""
    if isinstance(spec, DetectorSpec):
        params, macs = detector_params(spec), detector_macs(spec)
    else:
        counted = segmenter_cost(spec)
        params, macs = counted["params"], counted["macs"]
    return {"params": params["total"], "macs": macs["total"], "params_by_part": params, "macs_by_part": macs}


__all__ = ["dense_cost", "dense_layer_cost", "detector_macs", "detector_params", "level_channels", "segmenter_cost"]
