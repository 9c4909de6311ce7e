"""Optimisers and learning-rate schedules of the recipes."""
from __future__ import annotations

import math

import torch
from torch import nn

from .recipe import Recipe


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow implements it (the EfficientNet reference optimiser).

    Differences from torch.optim.RMSprop that matter for reproducing the recipe: the squared
    average starts at 1 (not 0), eps is added *inside* the square root, and momentum accumulates
    the lr-scaled update, so an lr change takes effect gradually.
    """

    def __init__(self, params, lr: float, alpha: float = 0.9, eps: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["square_avg"] = torch.ones_like(param)
                    state["momentum_buffer"] = torch.zeros_like(param)
                square_avg = state["square_avg"]
                square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                update = grad / (square_avg + group["eps"]).sqrt()
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                param.sub_(buffer)
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only: never on BN affine parameters or biases."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = parameter_groups(model, recipe.weight_decay)
    if recipe.optimizer == "rmsprop_tf":
        return RMSpropTF(groups, lr=recipe.lr, eps=recipe.eps, momentum=recipe.momentum)
    if recipe.optimizer == "adamw":
        return _fused_if_available(torch.optim.AdamW, groups, lr=recipe.lr)
    return _fused_if_available(torch.optim.SGD, groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)


def _fused_if_available(optimizer_class, groups, **options) -> torch.optim.Optimizer:
    """The fused kernel (one pass over all parameters) where this torch has it for the parameters'
    device. For B0 on a 2-core AVX2 CPU an SGD step took 4.6 ms fused against 12.0 ms (14.2 ms
    foreach), AdamW 7.3 against 21.3 ms: well under 1 % of a training step either way, but free
    (benchmarks/optimizer_step.py, benchmarks/results/optimizer_step.txt)."""
    try:
        return optimizer_class(groups, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the kernel
        return optimizer_class(groups, **options)


def lr_factor(step: int, *, steps_per_epoch: int, total_steps: int, recipe: Recipe) -> float:
    """Multiplier of the base lr at optimizer step `step`: linear warmup, then cosine to 0 or
    exponential decay by `decay_rate` every `decay_epochs` (staircase, as in the TF code)."""
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if recipe.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.decay_rate ** ((step - warmup) // max(1, int(recipe.decay_epochs * steps_per_epoch)))
