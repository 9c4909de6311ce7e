"""Quantization-aware training (`effscale train --init RUN --qat`): fine-tune a trained model with
the INT8 deploy's rounding simulated, so that its weights learn to live with it, then ship INT8.

What is simulated matches what `effscale quantize` deploys (export/quantize.py, openvino_int8.py):
- weights of every conv and of the classifier: INT8 symmetric per output channel. Per-channel
  symmetric rounding commutes with multiplying a channel by any non-zero factor, so rounding the
  unfolded conv weight puts it on the same grid as the batch-norm-folded weight the runtime runs.
- activations entering those convs and the classifier: UINT8 asymmetric per tensor, over the
  min-max range of calibration images (the PTQ export's range estimator), measured once before
  fine-tuning and then held. The squeeze-excite convs stay float, as NNCF leaves them.
Rounding is torch's own fake quantization (`torch.fake_quantize_per_channel_affine` /
`_per_tensor_affine`, straight-through gradients inside the range). Why not NNCF's PyTorch QAT:
it compiles a C++ extension on first use, 142 s on this machine, beyond its own 60 s load timeout.

`prepare_qat(model, images)` adds the simulation (weight parametrizations, input pre-hooks) and
returns a handle whose `remove()` takes it away again, leaving the fine-tuned float weights,
which `quantize` then rounds exactly as simulated.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

WEIGHT_LEVELS = 127  # symmetric [-127, 127]
ACTIVATION_LEVELS = 255  # asymmetric [0, 255]


class WeightFakeQuant(nn.Module):
    """INT8 symmetric per output channel (dimension 0), as a weight parametrization."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
        scale = (flat / WEIGHT_LEVELS).clamp_min(1e-12).float()
        zero = torch.zeros(weight.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -WEIGHT_LEVELS, WEIGHT_LEVELS)


class InputFakeQuant:
    """A forward pre-hook: records the input's min / max while calibrating, then rounds it to UINT8
    on that range."""

    def __init__(self):
        self.low, self.high, self.calibrating = 0.0, 0.0, True

    def __call__(self, module, args):
        x = args[0]
        if self.calibrating:
            self.low = min(self.low, float(x.detach().min()))
            self.high = max(self.high, float(x.detach().max()))
            return None
        scale = max(self.high - self.low, 1e-8) / ACTIVATION_LEVELS
        zero = int(round(-self.low / scale))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, ACTIVATION_LEVELS), *args[1:])


def quantized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The convs and linears INT8 runs in integer arithmetic: all but the squeeze-excite convs."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear)) and ".se." not in f".{name}."]


class QATHandle:
    def __init__(self, model: nn.Module):
        self.model = model

    def remove(self) -> None:
        """The plain float model again, keeping the fine-tuned weights (not their rounded copies)."""
        strip_qat(self.model)


@torch.no_grad()
def prepare_qat(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> QATHandle:
    """Add the INT8 simulation to `model` (module docstring), calibrating the activation ranges on
    `images` (preprocessed, NCHW) in eval mode; the model's train/eval mode is restored after."""
    modules = quantized_modules(model)
    observers = []
    for _, module in modules:
        observer = InputFakeQuant()
        observers.append(observer)
        module.register_forward_pre_hook(observer)  # strip_qat finds and removes it by its type
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size].to(parameter.device))
    model.train(was_training)
    for observer in observers:
        observer.calibrating = False
    for _, module in modules:
        parametrize.register_parametrization(module, "weight", WeightFakeQuant())
    return QATHandle(model)


def strip_qat(model: nn.Module) -> None:
    """Remove any QAT simulation from `model` (e.g. an EMA copy made while it was prepared)."""
    for _, module in model.named_modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, InputFakeQuant):
                del module._forward_pre_hooks[key]
        if isinstance(module, (nn.Conv2d, nn.Linear)) and parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


__all__ = ["QATHandle", "prepare_qat", "quantized_modules", "strip_qat"]
