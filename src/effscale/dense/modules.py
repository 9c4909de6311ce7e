"""EfficientDet as modules, built from a `DetectorSpec`: the backbone's pyramid, the levels above
it, BiFPN layers and the shared class / box heads, exactly the structure `cost.detector_params`
counts (its docstring has the details), so the parameter count of the module and of the spec
agree by construction and a test checks it.

Fast normalised fusion: out = sum_i relu(w_i) * x_i / (eps + sum_j relu(w_j)). Inputs of another
size are brought to the node's: nearest upsampling from the coarser level, 3x3 max pooling with
stride 2 from the finer one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.network import EfficientNet
from .cost import level_channels
from .spec import DetectorSpec, SegmenterSpec, neck_topology

FUSION_EPS = 1e-4
PRIOR = 0.01
BN = dict(eps=1e-3, momentum=0.01)  # the reference's batch norm in the neck and heads


class ConvBN(nn.Sequential):
    """1x1 conv (with the reference's bias) + batch norm: a width change."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout, **BN))


class SeparableConv(nn.Module):
    def __init__(self, width: int, out: int, bn: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.pointwise = nn.Conv2d(width, out, 1)
        self.bn = nn.BatchNorm2d(out, **BN) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


def downsample(x: torch.Tensor, same: bool = False) -> torch.Tensor:
    """3x3 max pooling with stride 2. `same`: TensorFlow's 'SAME' padding (the extra row / column
    at the bottom / right), as the TF reference and effdet's tf_* ports pool; otherwise one row /
    column each side. Both give ceil(size / 2); they pick different windows."""
    if not same:
        return F.max_pool2d(x, 3, 2, 1)
    pads = [max((-(-size // 2) - 1) * 2 + 3 - size, 0) for size in x.shape[-2:]]
    x = F.pad(x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2), value=float("-inf"))
    return F.max_pool2d(x, 3, 2)


def _resize(x: torch.Tensor, size: tuple[int, int], same: bool = False) -> torch.Tensor:
    while x.shape[-1] > size[-1]:
        x = downsample(x, same)
    if x.shape[-1] < size[-1]:
        x = F.interpolate(x, size=size, mode="nearest")
    return x


class FusionNode(nn.Module):
    """One BiFPN node: inputs (by index into the running list of maps), optional width changes.
    `weighted=False` (the plain FPN) sums the inputs without fusion weights."""

    def __init__(self, sources: list[int], width: int, convert: dict[int, int], weighted: bool = True,
                 same: bool = False):
        super().__init__()
        self.sources, self.same = sources, same
        self.weights = nn.Parameter(torch.ones(len(sources))) if weighted else None
        # per input position: a ConvBN when that edge carries a backbone feature of another width
        self.convert = nn.ModuleDict({str(i): ConvBN(cin, width) for i, cin in convert.items()})
        self.conv = SeparableConv(width, width)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        if self.weights is None:
            weights = [1.0] * len(self.sources)
        else:
            weights = F.relu(self.weights)
            weights = weights / (weights.sum() + FUSION_EPS)
        fused = 0
        for position, (source, weight) in enumerate(zip(self.sources, weights)):
            x = maps[source]
            if str(position) in self.convert:
                x = self.convert[str(position)](x)
            fused = fused + weight * _resize(x, size, self.same)
        return self.conv(F.silu(fused))


class BiFPNLayer(nn.Module):
    """Top-down nodes (levels max-1 .. min), then bottom-up nodes (min+1 .. max); see `neck_topology`."""

    def __init__(self, levels: tuple[int, ...], width: int, in_widths: dict[int, int], weighted: bool = True,
                 same: bool = False):
        super().__init__()
        self.levels = levels
        graph, self.outputs = neck_topology(len(levels), "bifpn")
        self.targets = [target for target, _ in graph]
        self.nodes = nn.ModuleList(FusionNode(sources, width, _conversions(sources, levels, width, in_widths),
                                              weighted, same) for _, sources in graph)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = list(features)
        for node, target in zip(self.nodes, self.targets):
            maps.append(node(maps, features[target].shape[-2:]))
        return [maps[i] for i in self.outputs]


def _conversions(sources: list[int], levels: tuple[int, ...], width: int, in_widths: dict[int, int]) -> dict:
    """Input position -> input width, for each input that is an original feature of another width
    (a backbone level, in the first layer): those get a 1x1 conv + BN (the top level too when the
    pyramid ends inside the backbone, e.g. P3-P5)."""
    return {position: in_widths[levels[source]] for position, source in enumerate(sources)
            if source < len(levels) and in_widths[levels[source]] != width}


class FPNLayer(nn.Module):
    """The plain FPN (Lin et al. 2017) in the same terms: top-down nodes only (levels max-1 .. min),
    each the sum of its level and the upsampled level above, then swish and a separable conv; the
    top level passes through (width-converted once when it is a backbone feature)."""

    def __init__(self, levels: tuple[int, ...], width: int, in_widths: dict[int, int], weighted: bool = False,
                 same: bool = False):
        super().__init__()
        top = in_widths[levels[-1]]
        self.top = ConvBN(top, width) if top != width else None
        graph, self.outputs = neck_topology(len(levels), "fpn")
        self.targets = [target for target, _ in graph]
        self.nodes = nn.ModuleList(FusionNode(sources, width, _conversions(sources, levels, width, in_widths),
                                              weighted=False, same=same) for _, sources in graph)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        top = features[-1] if self.top is None else self.top(features[-1])
        maps = list(features) + [top]
        for node, target in zip(self.nodes, self.targets):
            maps.append(node(maps, features[target].shape[-2:]))
        return [maps[i] for i in self.outputs]


class Head(nn.Module):
    """Shared separable convs with a batch norm per level, then the prediction conv."""

    def __init__(self, width: int, layers: int, levels: int, outputs: int):
        super().__init__()
        self.convs = nn.ModuleList(SeparableConv(width, width, bn=False) for _ in range(layers))
        self.norms = nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(width, **BN) for _ in range(layers))
                                   for _ in range(levels))
        self.predict = SeparableConv(width, outputs, bn=False)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for x, norms in zip(features, self.norms):
            for conv, norm in zip(self.convs, norms):
                x = F.silu(norm(conv(x)))
            out.append(self.predict(x))
        return out


class EfficientDet(nn.Module):
    """`forward(images)` -> (class maps, box maps): per level, anchors x classes and anchors x 4."""

    def __init__(self, spec: DetectorSpec, in_chans: int = 3):
        super().__init__()
        self.spec = spec
        self.backbone = EfficientNet(spec.backbone, num_classes=0, in_chans=in_chans, features_only=True)
        features = level_channels(spec)
        deepest = max(features)
        self.backbone_levels = [lvl for lvl in spec.levels if lvl <= deepest]
        self._indices = [[info["reduction"] for info in self.backbone.feature_info].index(2 ** lvl)
                         for lvl in self.backbone_levels]
        width = spec.fpn_channels
        above = spec.max_level - deepest
        self.first_above = ConvBN(features[deepest], width) if above > 0 and features[deepest] != width else None
        self.extra_levels = max(above, 0)
        in_widths = {lvl: features[lvl] if lvl <= deepest else width for lvl in spec.levels}
        layer = BiFPNLayer if spec.neck == "bifpn" else FPNLayer
        # the neck pools as the backbone pads: TF 'same' for the TF-ported reference
        self.same = spec.backbone.padding == "same"
        options = dict(weighted=spec.weighted_fusion, same=self.same)
        layers = [layer(spec.levels, width, in_widths, **options)]
        layers += [layer(spec.levels, width, {lvl: width for lvl in spec.levels}, **options)
                   for _ in range(spec.fpn_layers - 1)]
        self.bifpn = nn.ModuleList(layers)
        self.class_head = Head(width, spec.head_layers, len(spec.levels), spec.num_anchors * spec.num_classes)
        self.box_head = Head(width, spec.head_layers, len(spec.levels), spec.num_anchors * 4)
        # Focal-loss start (Lin et al.): every anchor begins at foreground probability 0.01.
        nn.init.constant_(self.class_head.predict.pointwise.bias, -math.log((1 - PRIOR) / PRIOR))
        self.in_chans, self.num_classes = in_chans, spec.num_classes
        _neck_momentum(self, spec.backbone.bn_momentum)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pyramid = self.backbone(images)
        features = [pyramid[i] for i in self._indices]
        x = features[-1]
        for k in range(self.extra_levels):
            if k == 0 and self.first_above is not None:
                x = self.first_above(x)
            x = downsample(x, self.same)
            features.append(x)
        for layer in self.bifpn:
            features = layer(features)
        return self.class_head(features), self.box_head(features)


class Segmenter(nn.Module):
    """`forward(images)` -> logits B x (1 + classes) x H x W (class 0 = background); see SegmenterSpec."""

    def __init__(self, spec: SegmenterSpec, in_chans: int = 3):
        super().__init__()
        self.spec, self.in_chans, self.num_classes = spec, in_chans, spec.num_classes
        self.backbone = EfficientNet(spec.backbone, num_classes=0, in_chans=in_chans, features_only=True)
        reductions = [info["reduction"] for info in self.backbone.feature_info]
        self._indices = [reductions.index(2 ** level) for level in spec.levels]
        features = level_channels(spec)
        width = spec.decoder_channels
        self.laterals = nn.ModuleList(nn.Conv2d(features[level], width, 1) for level in spec.levels)
        self.smooth = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                                  nn.BatchNorm2d(width), nn.SiLU()) for _ in spec.levels)
        self.classifier = nn.Conv2d(width, spec.num_classes + 1, 1)
        # multi-task: image classes from the pooled deepest backbone feature
        self.image_head = nn.Linear(features[spec.levels[-1]], spec.num_classes) if spec.classify else None
        _neck_momentum(self, spec.backbone.bn_momentum)

    def forward(self, images: torch.Tensor):
        """Mask logits B x (1 + classes) x H x W; multi-task: (those, image logits B x classes)."""
        pyramid = self.backbone(images)
        features = [lateral(pyramid[i]) for lateral, i in zip(self.laterals, self._indices)]
        for k in range(len(features) - 2, -1, -1):  # top-down: coarser maps added into finer ones
            features[k] = features[k] + F.interpolate(features[k + 1], size=features[k].shape[-2:], mode="nearest")
        size = features[0].shape[-2:]
        fused = sum(F.interpolate(smooth(x), size=size, mode="bilinear", align_corners=False) if k else smooth(x)
                    for k, (smooth, x) in enumerate(zip(self.smooth, features)))
        masks = F.interpolate(self.classifier(fused), size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.image_head is None:
            return masks
        return masks, self.image_head(pyramid[self._indices[-1]].mean((2, 3)))


def _neck_momentum(model: nn.Module, momentum: float) -> None:
    """Neck and head batch norms follow the backbone's momentum: the reference's 0.01 by default, a
    recipe's own (the quick recipe's 0.1) in training. At 0.01 a short run ends with running
    statistics far from the batch statistics, and eval-mode outputs are then meaningless."""
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and not name.startswith("backbone."):
            module.momentum = momentum


def build_dense_model(spec, in_chans: int = 3) -> nn.Module:
    return EfficientDet(spec, in_chans) if isinstance(spec, DetectorSpec) else Segmenter(spec, in_chans)


__all__ = ["BiFPNLayer", "downsample", "EfficientDet", "FPNLayer", "FusionNode", "Head", "SeparableConv", "Segmenter", "build_dense_model"]
