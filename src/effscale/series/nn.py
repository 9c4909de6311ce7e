"""`SeriesNet`: the 1-D MBConv module built from a `SeriesSpec` and nothing else.

Module names mirror the image EfficientNet's: `stem`, `stages.{stage}.{block}.{expand|depthwise|
se|project}`, `head`, `pool`, `dropout`, `classifier`. The image layers' activation factory and
`DropPath` are shape-agnostic and reused; conv + BN and squeeze-excite are 2-D there (and carry
the image family's memory-saving training paths), so the 1-D versions are the plain few lines below.
"""
from __future__ import annotations

import torch
from torch import nn

from ..cost import _check_int
from ..nn.layers import DropPath, make_activation
from ..spec import STEM_STRIDE, BlockSpec, LayerSpec
from .spec import DEFAULT_NUM_CLASSES, SeriesSpec


class ConvNormAct1d(nn.Sequential):
    """conv1d (padding k // 2, no bias) -> batch norm -> activation (absent when None)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 activation: str | None = "swish", bn_eps: float = 1e-3, bn_momentum: float = 0.1):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm1d(out_channels, eps=bn_eps, momentum=bn_momentum)
        if activation is not None:
            self.act = make_activation(activation)


class SqueezeExcite1d(nn.Module):
    """Channel gate: mean over time -> 1x1 reduce -> act -> 1x1 expand -> sigmoid -> scale."""

    def __init__(self, channels: int, squeeze_channels: int, activation: str):
        super().__init__()
        self.reduce = nn.Conv1d(channels, squeeze_channels, 1)
        self.act = make_activation(activation)
        self.expand = nn.Conv1d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.expand(self.act(self.reduce(x.mean(2, keepdim=True)))).sigmoid()


def make_layer1d(layer: LayerSpec, activation: str, bn_eps: float, bn_momentum: float) -> nn.Module:
    """The 1-D module of one `LayerSpec` (squeeze-excite, or conv1d + BN (+ activation))."""
    if layer.kind == "se":
        return SqueezeExcite1d(layer.in_channels, layer.squeeze, activation)
    return ConvNormAct1d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, groups=layer.groups,
                         activation=activation if layer.activation else None, bn_eps=bn_eps, bn_momentum=bn_momentum)


class MBConv1d(nn.Module):
    """Inverted residual along time, built from `BlockSpec.layers()` as the image MBConv is:
    1x1 expand -> depthwise k -> SE -> 1x1 project (+ residual)."""

    def __init__(self, block: BlockSpec, activation: str, bn_eps: float, bn_momentum: float):
        super().__init__()
        layers = block.layers()
        for layer in layers:
            self.add_module(layer.name, make_layer1d(layer, activation, bn_eps, bn_momentum))
        self.layer_names = tuple(layer.name for layer in layers)
        self.has_residual = block.has_residual
        self.drop_path = DropPath(block.drop_path_rate) if self.has_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for name in self.layer_names:
            out = getattr(self, name)(out)
        return x + self.drop_path(out) if self.has_residual else out


class SeriesNet(nn.Module):
    """Input N x in_chans x length (any length >= 1); output N x num_classes logits."""

    def __init__(self, spec: SeriesSpec, num_classes: int = DEFAULT_NUM_CLASSES, in_chans: int = 1):
        super().__init__()
        _check_int("num_classes", num_classes, 0)  # 0: no classifier (features for a probe)
        _check_int("in_chans", in_chans, 1)
        self.spec, self.num_classes, self.in_chans = spec, num_classes, in_chans
        norm = dict(bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)
        self.stem = ConvNormAct1d(in_chans, spec.stem_channels, spec.stem_kernel, STEM_STRIDE,
                                  activation=spec.activation, **norm)
        stages: list[list[nn.Module]] = [[] for _ in spec.stages]
        for block in spec.blocks():
            stages[block.stage].append(MBConv1d(block, spec.activation, **norm))
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        self.head = ConvNormAct1d(spec.out_channels, spec.head_channels, 1, activation=spec.activation, **norm)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.head_channels, num_classes) if num_classes else nn.Identity()
        for module in self.modules():  # the image family's (reference TF) initialisers
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.uniform_(module.weight, -module.out_features ** -0.5, module.out_features ** -0.5)
                nn.init.zeros_(module.bias)
            elif isinstance(module, MBConv1d) and module.has_residual:
                # Zero-init the branch's last BN (Goyal et al. 2017): a deeper spec starts as the
                # shallower one, which keeps short proxy trainings of depth-scaled specs stable.
                nn.init.zeros_(module.project.bn.weight)

    @property
    def num_features(self) -> int:
        return self.spec.head_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and head: N x head_channels x (length / stride)."""
        return self.head(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.pool(x).flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
