"""Inference-time transformations of a built model (same function, faster on CPU)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import EffscaleError
from .layers import ConvNormAct


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every ConvNormAct's batch norm into its conv (in place; eval mode required).

    The result computes the same function with one op fewer per conv; it can no longer train BN.
    """
    if model.training:
        raise EffscaleError("fold_batchnorm needs an eval-mode model (call model.eval() first)")
    for module in model.modules():
        if isinstance(module, ConvNormAct) and isinstance(module.bn, nn.BatchNorm2d):
            conv, bn = module.conv, module.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is None:
                conv.bias = nn.Parameter(bias)
            else:
                conv.bias.mul_(scale).add_(bias)
            module.bn = nn.Identity()
    return model


def prepare_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """effscale's recommended CPU inference path: eval, BN folded into convs, channels_last."""
    model = fold_batchnorm(model.eval())
    return model.to(memory_format=torch.channels_last) if channels_last else model
