"""MBConv and Fused-MBConv, each built from one `BlockSpec` row by walking `BlockSpec.layers()`."""
from __future__ import annotations

import torch
from torch import nn

from ..spec import BlockSpec, LayerSpec
from . import memory
from .layers import ConvNormAct, DropPath, SqueezeExcite


def make_layer(layer: LayerSpec, activation: str, bn_eps: float, bn_momentum: float, padding: str) -> nn.Module:
    """The module of one `LayerSpec`: squeeze-excite, or conv + BN (+ the network's activation)."""
    if layer.kind == "se":
        return SqueezeExcite(layer.in_channels, layer.squeeze, activation)
    spatial = dict(padding=padding) if layer.kernel > 1 else {}  # 'same' padding only matters for k > 1
    return ConvNormAct(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, groups=layer.groups,
                       activation=activation if layer.activation else None, bn_eps=bn_eps,
                       bn_momentum=bn_momentum, **spatial)


class InvertedResidual(nn.Module):
    """The block body both variants share: its layers in order (attributes named as in
    `BlockSpec.layers()`, which fixes the state-dict keys), a residual with drop-path when the
    shape allows, and the memory-efficient training path (nn/memory.py)."""

    def __init__(self, block: BlockSpec, activation: str, bn_eps: float, bn_momentum: float, padding: str):
        super().__init__()
        layers = block.layers()
        for layer in layers:
            self.add_module(layer.name, make_layer(layer, activation, bn_eps, bn_momentum, padding))
        self.layer_names = tuple(layer.name for layer in layers)
        self.has_residual = block.has_residual
        self.drop_path = DropPath(block.drop_path_rate) if self.has_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if memory.active(self):
            # Training: the depthwise conv's input (and the project conv's, without SE) is
            # recomputed in backward instead of kept (nn/memory.py).
            with memory.recompute_activations():
                out = self._branch(x)
        else:
            out = self._branch(x)
        return x + self.drop_path(out) if self.has_residual else out

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x


class MBConv(InvertedResidual):
    """Inverted residual: 1x1 expand -> kxk depthwise -> squeeze-excite -> 1x1 project (+ residual)."""


class FusedMBConv(InvertedResidual):
    """EfficientNetV2's early-stage block: one kxk conv replaces expand + depthwise."""


BLOCKS = {"mbconv": MBConv, "fused_mbconv": FusedMBConv}
