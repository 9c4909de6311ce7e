"""MBConv and Fused-MBConv, each built from one `BlockSpec` row."""
from __future__ import annotations

import torch
from torch import nn

from ..spec import BlockSpec
from . import memory
from .layers import ConvNormAct, DropPath, SqueezeExcite


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> squeeze-excite -> 1x1 project (+ residual)."""

    def __init__(self, block: BlockSpec, activation: str, bn_eps: float, bn_momentum: float, padding: str):
        super().__init__()
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        hidden = block.expanded_channels
        if block.expand_ratio != 1:
            self.expand = ConvNormAct(block.in_channels, hidden, 1, activation=activation, **norm)
        self.depthwise = ConvNormAct(hidden, hidden, block.kernel, block.stride, groups=hidden,
                                     activation=activation, padding=padding, **norm)
        if block.se_channels:
            self.se = SqueezeExcite(hidden, block.se_channels, activation)
        self.project = ConvNormAct(hidden, block.out_channels, 1, activation=None, **norm)
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
        out = self.expand(x) if hasattr(self, "expand") else x
        out = self.depthwise(out)
        if hasattr(self, "se"):
            out = self.se(out)
        return self.project(out)


class FusedMBConv(nn.Module):
    """EfficientNetV2's early-stage block: one kxk conv replaces expand + depthwise."""

    def __init__(self, block: BlockSpec, activation: str, bn_eps: float, bn_momentum: float, padding: str):
        super().__init__()
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        hidden = block.expanded_channels
        if block.expand_ratio != 1:
            self.fused = ConvNormAct(block.in_channels, hidden, block.kernel, block.stride,
                                     activation=activation, padding=padding, **norm)
            if block.se_channels:
                self.se = SqueezeExcite(hidden, block.se_channels, activation)
            self.project = ConvNormAct(hidden, block.out_channels, 1, activation=None, **norm)
        else:  # no expansion: the kxk conv maps straight to the output width (V2 reference)
            self.fused = ConvNormAct(block.in_channels, block.out_channels, block.kernel, block.stride,
                                     activation=activation, padding=padding, **norm)
            if block.se_channels:
                self.se = SqueezeExcite(block.out_channels, block.se_channels, activation)
        self.has_residual = block.has_residual
        self.drop_path = DropPath(block.drop_path_rate) if self.has_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if memory.active(self):  # see MBConv.forward
            with memory.recompute_activations():
                out = self._branch(x)
        else:
            out = self._branch(x)
        return x + self.drop_path(out) if self.has_residual else out

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fused(x)
        if hasattr(self, "se"):
            out = self.se(out)
        return self.project(out) if hasattr(self, "project") else out


BLOCKS = {"mbconv": MBConv, "fused_mbconv": FusedMBConv}
