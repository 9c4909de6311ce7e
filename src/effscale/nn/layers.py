"""Building blocks shared by all block types."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    return {"swish": nn.SiLU, "relu6": nn.ReLU6, "relu": nn.ReLU}[name](inplace=True)


class Conv2dSame(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding: extra pixel on the bottom/right when the total is odd.

    Only strided convs differ from symmetric padding, so only those get this class; the pad is
    computed from the input size so any resolution works (as in TF).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = self._pad(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = self._pad(x.shape[-1], self.kernel_size[1], self.stride[1])
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)

    @staticmethod
    def _pad(size, kernel: int, stride: int):
        return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0) if isinstance(size, int) \
            else torch.clamp((-(-size // stride) - 1) * stride + kernel - size, min=0)


def make_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
              bias: bool = False, padding: str = "symmetric") -> nn.Conv2d:
    if padding == "same" and stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


class ConvNormAct(nn.Sequential):
    """conv -> batch norm -> activation, named `conv`, `bn`, `act` (act absent when None)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 activation: str | None = "swish", bn_eps: float = 1e-3, bn_momentum: float = 0.01,
                 padding: str = "symmetric"):
        super().__init__()
        self.conv = make_conv(in_channels, out_channels, kernel, stride, groups, padding=padding)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        if activation is not None:
            self.act = make_activation(activation)


class SqueezeExcite(nn.Module):
    """Channel gate: global pool -> 1x1 reduce -> act -> 1x1 expand -> sigmoid -> scale."""

    def __init__(self, channels: int, squeeze_channels: int, activation: str = "swish"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = make_activation(activation)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = self.expand(self.act(self.reduce(gate)))
        return x * gate.sigmoid()


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch per sample while training."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"
