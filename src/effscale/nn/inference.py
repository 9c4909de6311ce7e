"""Inference-time transformations of a built model (same function, faster on CPU).

`benchmarks/inference.py` measures every choice made here against timm and torchvision;
BENCHMARKS.md ("Inference") has the numbers.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EffscaleError
from .layers import ConvNormAct, SqueezeExcite


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


class InplaceSqueezeExcite(SqueezeExcite):
    """Inference-only SqueezeExcite that scales its input in place.

    In MBConv and FusedMBConv the SE input is a conv output that nothing else holds, so writing
    the gated result into it is safe and saves allocating (and page-faulting) a tensor as large
    as the expanded activation, the biggest one in the block. Not for training: autograd needs
    the unscaled input. A forward hook that keeps the depthwise output sees it gated afterwards
    (clone it in the hook). Same parameters and state_dict keys as SqueezeExcite.

    `channels_last` picks the pooling op (set by `prepare_for_inference`, not a runtime check, so
    the module stays traceable): mean() over H, W of a channels_last tensor is a strided
    reduction, and in bf16 one that converts to fp32 first, ~40x slower than avg_pool2d's
    channels_last kernel (-25 % on a B3 batch-8 bf16 call); for NCHW, mean() is the fast one.
    """

    channels_last: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, x.shape[-2:]) if self.channels_last else x.mean((2, 3), keepdim=True)
        gate = self.expand(self.act(self.reduce(pooled)))
        return x.mul_(gate.sigmoid_())


def _inputs_to_bf16(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.to(torch.bfloat16) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _outputs_to_float32(module: nn.Module, args: tuple, output):
    if torch.is_tensor(output):
        return output.float()
    if isinstance(output, (list, tuple)):  # features_only models return one map per level
        return type(output)(o.float() if torch.is_tensor(o) else o for o in output)
    return output


def native_bf16() -> bool:
    """True where this CPU computes bf16 natively (AVX512-BF16 or AMX, as oneDNN reports it).

    Without it bf16 is emulated and slower than fp32 (4x on AVX2-only CPUs), so every "auto"
    precision in effscale picks fp32 there.
    """
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported()) if supported is not None else False


def prepare_for_inference(model: nn.Module, channels_last: bool = True, *, bf16: bool | str = False) -> nn.Module:
    """effscale's recommended CPU inference path; run the result under `torch.inference_mode()`.

    The default (fp32) computes the same logits as the eager model, within float rounding:
      - eval mode, batch norm folded into the preceding conv (`fold_batchnorm`): one pass over
        each activation fewer, and conv+bias is a single oneDNN call;
      - squeeze-excite gates applied in place (`InplaceSqueezeExcite`). With glibc's default
        malloc every tensor above its mmap threshold (<= 32 MiB) is a fresh mmap that page-faults
        on first write, and at batch 32 the expanded activations are 40-150 MB: one such
        allocation fewer per block was ~18 % of a B0 batch-32 call;
      - `channels_last` (default True): oneDNN's native conv layout, no reorders between layers.
        Give it channels_last inputs as well (`x.contiguous(memory_format=torch.channels_last)`).
    Together ~1.3x timm/torchvision's eager fp32 at B0 batch 1 and 2.5-3x at batch 8-32
    (2-core AVX512-BF16 CPU, 2 threads; benchmarks/inference.py, BENCHMARKS.md).

    `bf16=True` (keyword only) stores the weights in bfloat16 (folded in fp32, then rounded once),
    casts float inputs to bf16 on the way in and returns float32 outputs (forward hooks on
    `model`; call `forward_features` & co. with bf16 inputs yourself). Unlike torch.autocast
    nothing is re-cast per call. On CPUs with native bf16 (AVX512-BF16, AMX) it is the fastest
    path at batch > 1: ~1.5x the fp32 path and ~1.3-1.5x timm/torchvision's best (channels_last
    + bf16 autocast), because the in-place SE also pools with avg_pool2d, whose channels_last
    kernel is ~40x faster than a bf16 mean(); at batch 1 it is no faster than fp32. Logits move
    by ~1e-2 relative, as with any bf16 inference. Without native bf16 it is slower (warned);
    `bf16="auto"` chooses bf16 exactly where the CPU has it natively (`native_bf16()`).

    Not included: torch.compile with Inductor freezing, 0-6 % faster on an AVX-512 machine and
    0-18 % on an AVX2 one (B3 batch 8 to B0 batch 32; max-autotune or cpp_wrapper no better), for
    a 30-170 s first call per input shape and a C++ compiler at run time, which pays only in a
    long-lived process (the references compiled the same way were 8-15 % slower than this path
    compiled: BENCHMARKS.md); torch.jit.freeze, ~15 % at batch 1 only (and
    TorchScript is deprecated); conv+SiLU fused through oneDNN's private post-op API, slower in
    fp32 and < 10 % faster in bf16. Wrap the result yourself if your hardware differs:
    `torch.compile(prepare_for_inference(model), options={"freezing": True})`.
    Outside the model, the allocator matters most: MALLOC_MMAP_MAX_=0 (glibc),
    THP_MEM_ALLOC_ENABLE=1 (PyTorch) or jemalloc/tcmalloc made batch-32 calls of every
    implementation 1.5-3x faster.

    The model is modified in place (and returned); it can no longer train.
    """
    model = fold_batchnorm(model.eval())
    # An SE that is a block's first layer (se_position="before_dw" without expansion) gates the
    # block input, which the residual adds back later: it must not overwrite it.
    first = {id(getattr(block, block.layer_names[0])) for block in model.modules() if hasattr(block, "layer_names")}
    for module in model.modules():
        if id(module) in first:
            continue
        if type(module) in (SqueezeExcite, InplaceSqueezeExcite):  # not subclasses with their own forward
            module.__class__ = InplaceSqueezeExcite
            module.channels_last = channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if bf16 == "auto":
        bf16 = native_bf16()
    if bf16:
        if not native_bf16():
            warnings.warn("this CPU has no native bf16 support: bf16=True will likely be slower than fp32",
                          stacklevel=2)
        model = model.to(torch.bfloat16)
        model.register_forward_pre_hook(_inputs_to_bf16)
        model.register_forward_hook(_outputs_to_float32)
    return model
