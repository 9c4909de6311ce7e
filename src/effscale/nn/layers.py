"""Building blocks shared by all block types."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import memory


def make_activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    return {"swish": memory.Swish, "relu6": nn.ReLU6, "relu": nn.ReLU}[name](inplace=True)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # While training, batch norm + activation run as one memory-efficient function (and
        # never update running statistics twice under checkpointing); see nn/memory.py.
        if not (self.training and torch.is_grad_enabled()) or memory.tracing() or not self._fusable():
            return super().forward(x)
        fuse = memory.ops_enabled() and not self._hooked()  # plain modules: switched off, or bn/act tapped
        recomputing = memory.recomputing()
        if not (fuse or recomputing):
            return super().forward(x)
        return memory.batch_norm_act(self.conv(x), self.bn, getattr(self, "act", None),
                                     update_stats=not recomputing, fuse=fuse)

    def _fusable(self) -> bool:
        bn = self.bn
        return type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats

    def _hooked(self) -> bool:
        return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                   for m in (self.bn, getattr(self, "act", None)) if m is not None)


class SqueezeExcite(nn.Module):
    """Channel gate: global pool -> 1x1 reduce -> act -> 1x1 expand -> sigmoid -> scale."""

    def __init__(self, channels: int, squeeze_channels: int, activation: str = "swish"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = make_activation(activation)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if memory.active(self):  # training: keep the gated output for backward, not x
            gate = self.expand(self.act(self.reduce(memory.spatial_mean(x))))
            return memory.squeeze_excite_gate(x, gate)
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
