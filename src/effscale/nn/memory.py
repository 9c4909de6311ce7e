"""Memory-efficient training: custom autograd functions and per-stage activation checkpointing.

What autograd keeps for backward, not the arithmetic, bounds the batch size a CPU or GPU can
train. An MBConv block with plain modules keeps seven tensors of its expanded width: the
expand conv's output (BN input), the BN output (SiLU input), the SiLU output (depthwise conv
input), the same three after the depthwise conv (the last one held by the SE multiply) and
the gated result (project conv input). Four of them are cheap to recompute in backward:

- `batch_norm_act`: training-mode batch norm + activation in one function that keeps only the
  BN input and the per-channel statistics; backward recomputes the normalised tensor (one
  elementwise pass) instead of keeping the BN output.
- `recompute_activations` (around each block's forward): a conv whose input is a
  `batch_norm_act` output (the depthwise conv; a project conv without SE) keeps a recipe, not
  the tensor, and the input is rebuilt from what the batch norm keeps anyway.
- `squeeze_excite_gate`: `x * sigmoid(logits)` that keeps its *output* (which the following
  project conv keeps anyway) instead of `x`: since out = x * s, the gate's gradient
  sum(grad * x) * s * (1 - s) equals sum(grad * out) * (1 - s), so `x` need not live on
  (`spatial_mean`, the SE's pooling, keeps nothing either).
- `swish`: SiLU that keeps only its input and recomputes the sigmoid in backward (the classic
  memory-efficient swish; PyTorch's native SiLU already does the same, so on its own it saves
  nothing: it is the fallback where no batch norm precedes the activation, as inside the SE).

That leaves three expanded tensors per block (the two BN inputs and the gated output): with
the smaller tensors, B0 keeps ~0.45x of what the plain modules (or timm) keep, for a few extra
elementwise passes in backward. `checkpoint_stage` goes further (opt-in, one extra forward of
every stage): only each stage's input is kept and the stage is re-run in backward; batch-norm
running statistics are not updated a second time during the re-run.

The functions are used only while a module trains with autograd recording and no tracer is
looking (`active`): eval, `torch.no_grad`, torch.compile, torch.export, ONNX export and
TorchScript tracing all see the plain ops (compilers rematerialise elementwise ops on their
own). They are first-order only (`once_differentiable`): for double backward (gradient
penalties) switch them off with `memory_efficient_ops(False)`. Forward hooks on a
ConvNormAct's `bn` or `act` make that layer use the plain modules, so taps keep working.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

_state = threading.local()
aten = torch.ops.aten


def ops_enabled() -> bool:
    """Whether `memory_efficient_ops` is on in this thread."""
    return getattr(_state, "enabled", True)


def recomputing() -> bool:
    """True while `checkpoint_stage` re-runs a stage's forward during backward."""
    return getattr(_state, "recomputing", False)


@contextmanager
def memory_efficient_ops(enabled: bool = True) -> Iterator[None]:
    """Switch the custom autograd functions on or off in this thread (default on).

    Off, training uses the plain modules: the reference the tests compare gradients with, and
    the way to get double backward. Checkpointing (`set_grad_checkpointing`) is independent.
    """
    previous = ops_enabled()
    _state.enabled = bool(enabled)
    try:
        yield
    finally:
        _state.enabled = previous


def tracing() -> bool:
    """Some compiler or exporter is tracing: it must see plain, traceable ops."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.jit.is_tracing() or torch.jit.is_scripting())


def active(module: nn.Module) -> bool:
    """The memory-efficient functions apply: `module` trains, autograd records, nobody traces."""
    return module.training and torch.is_grad_enabled() and ops_enabled() and not tracing()


# -- swish --------------------------------------------------------------------------------------
class _Swish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.silu(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return aten.silu_backward(grad, x)  # sigmoid(x) recomputed here, never stored


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), keeping only `x` for backward."""
    return _Swish.apply(x)


class Swish(nn.SiLU):
    """nn.SiLU that uses `swish` while training (same name, no parameters, same outputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swish(x) if active(self) else F.silu(x, inplace=self.inplace)


# -- batch norm + activation ----------------------------------------------------------------------
# Per activation: (in-place forward on the BN output, backward writing into the recomputed
# BN output `z`: grad_in = f(grad_out, z), out-of-place forward). Each backward reads `z`
# element by element only, so writing the result over it is safe and saves one allocation.
_ACTIVATIONS: dict[str, tuple[Callable, Callable, Callable]] = {
    "silu": (aten.silu_, lambda g, z: aten.silu_backward.grad_input(g, z, grad_input=z), aten.silu),
    "relu": (aten.relu_, lambda g, z: aten.threshold_backward.grad_input(g, z, 0, grad_input=z), aten.relu),
    "relu6": (lambda y: aten.hardtanh_(y, 0.0, 6.0),
              lambda g, z: aten.hardtanh_backward.grad_input(g, z, 0.0, 6.0, grad_input=z),
              lambda z: aten.hardtanh(z, 0.0, 6.0)),
}


def activation_kind(act: nn.Module | None) -> str | None:
    """The `_ACTIVATIONS` key for a module that `batch_norm_act` can fuse, else None."""
    if isinstance(act, nn.SiLU):
        return "silu"
    if type(act) is nn.ReLU:
        return "relu"
    if type(act) is nn.ReLU6:
        return "relu6"
    return None


class _BatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, kind: str):
        y, mean, invstd = aten.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        _ACTIVATIONS[kind][0](y)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.kind = kind
        ctx.mark_non_differentiable(mean, invstd)
        return y, mean, invstd

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_mean, _grad_invstd):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        z, ctx.normalized = getattr(ctx, "normalized", None), None  # left by _Recompute, if it ran
        if z is None:
            z = _normalize(x, weight, bias, mean, invstd)
        grad_z = _ACTIVATIONS[ctx.kind][1](grad_y, z)
        grad_x, grad_w, grad_b = aten.native_batch_norm_backward(
            grad_z, x, weight, None, None, mean, invstd, True, 0.0, list(ctx.needs_input_grad[:3]))
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _normalize(x, weight, bias, mean, invstd) -> torch.Tensor:
    # (x - mean) * invstd * weight + bias with the eval-mode kernel (variance 1, eps 0, invstd
    # folded into the weight): one pass, in x's dtype and layout, the values training mode gave.
    z, _, _ = aten.native_batch_norm(x, weight * invstd, bias, mean, torch.ones_like(mean), False, 0.0, 0.0)
    return z


class _Recompute:
    """Rebuilds a `batch_norm_act` output from what that function's backward keeps anyway.

    Holds the function's autograd node (its ctx), not tensors, so it extends no lifetime, and
    the version checks on the node's saved tensors guard the inputs. The normalised tensor
    computed on the way is left on the node for its backward, which runs soon after (it
    produced the tensor whose consumer is being differentiated) and would otherwise compute it
    again.
    """

    __slots__ = ("node", "output_version")

    def __init__(self, node, output_version: int):
        self.node, self.output_version = node, output_version

    def __call__(self) -> torch.Tensor:
        node = self.node
        node.normalized = _normalize(*node.saved_tensors)
        return _ACTIVATIONS[node.kind][2](node.normalized)


def _pack(t: torch.Tensor):
    recompute = getattr(t, "_effscale_recompute", None)
    if recompute is not None and t._version == recompute.output_version:
        return recompute
    return t, t._version  # with hooks installed autograd no longer checks versions: we do


def _unpack(saved) -> torch.Tensor:
    if isinstance(saved, _Recompute):
        return saved()
    tensor, version = saved
    if tensor._version != version:
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an inplace operation: "
            f"[{tensor.type()} {list(tensor.shape)}] is at version {tensor._version}; expected version "
            f"{version} instead (saved inside an effscale block while training)")
    return tensor


@contextmanager
def recompute_activations() -> Iterator[None]:
    """Inside: tensors autograd saves that are `batch_norm_act` outputs are recomputed, not kept.

    Such an output is re-derived in backward from the batch-norm input and statistics that its
    own backward keeps anyway (two elementwise passes), so the conv that consumes it (MBConv's
    depthwise conv, a project conv without SE) keeps no tensor of its own. Blocks use it while
    training (when `active(block)`). Other saved tensors are kept as usual, with the in-place
    modification check that autograd skips for tensors packed by hooks done here instead.
    Where saved-tensor hooks are already installed (activation checkpointing,
    `torch.autograd.graph.save_on_cpu`, ...) it steps aside and leaves every tensor to them:
    only the innermost hooks see a saved tensor. (`_top_saved_tensors_default_hooks` is
    private API; should it go away, this steps aside always.)
    """
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None or top(False) is not None:
        yield
        return
    with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
        yield


def batch_norm_act(x: torch.Tensor, bn: nn.BatchNorm2d, act: nn.Module | None,
                   update_stats: bool = True, fuse: bool = True) -> torch.Tensor:
    """Training-mode `act(bn(x))` with nn.BatchNorm2d's semantics, keeping only `x` for backward.

    `update_stats=False` normalises with the batch statistics like training mode does but
    leaves the running statistics and `num_batches_tracked` alone (used while a checkpointed
    stage is recomputed, so each step updates them once). `fuse=False`, or an activation other
    than SiLU, ReLU and ReLU6, runs the plain ops (saving what nn.BatchNorm2d and the
    activation module save, which a checkpoint re-run must match). A fused output can be
    recomputed instead of kept by whoever saves it (`recompute_activations`).
    """
    momentum = bn.momentum if bn.momentum is not None else 0.0
    if update_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
            momentum = 1.0 / float(bn.num_batches_tracked)
    kind = activation_kind(act)
    if fuse and kind is not None:
        running = (bn.running_mean, bn.running_var) if update_stats else (None, None)
        y, mean, invstd = _BatchNormAct.apply(x, bn.weight, bn.bias, *running, momentum, bn.eps, kind)
        y._effscale_recompute = _Recompute(y.grad_fn, y._version)
        return y
    # Throw-away copies when not updating: the plain op must see (and save) running stats all the same.
    running = (bn.running_mean, bn.running_var) if update_stats else (bn.running_mean.clone(), bn.running_var.clone())
    y = F.batch_norm(x, *running, bn.weight, bn.bias, True, momentum, bn.eps)
    return y if act is None else act(y)


# -- squeeze-excite gate ----------------------------------------------------------------------------
class _SqueezeExciteGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(logits)
        out = x * gate
        ctx.save_for_backward(out, gate)  # `out` is kept by the next conv anyway: no extra memory
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        out, gate = ctx.saved_tensors
        grad_x = grad * gate if ctx.needs_input_grad[0] else None
        grad_logits = None
        if ctx.needs_input_grad[1]:
            # d out / d logits = x * s * (1 - s) = out * (1 - s): x is not needed.
            grad_logits = _spatial_sum(grad * out) * (1.0 - gate)
        return grad_x, grad_logits


class _SpatialMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return _spatial_sum(x) / (x.shape[-2] * x.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        height, width = ctx.shape[-2:]
        return (grad / (height * width)).expand(ctx.shape)


def _spatial_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over H, W (keepdim) with the fast kernel for the layout; bf16 accumulates in fp32 inside.

    Measured on one AVX512 core, 32 x 96 x 112 x 112: mean() in bf16 and any reduction over H, W
    of a channels_last tensor are strided / via fp32 copies (~110 ms); sum() of NCHW and
    avg_pool2d of channels_last (times H * W) take ~5 ms.
    """
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.sum((2, 3), keepdim=True)
    return F.avg_pool2d(x, x.shape[-2:]) * (x.shape[-2] * x.shape[-1])


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over H and W (keepdim) that keeps nothing for backward (avg_pool2d would keep `x`)."""
    return _SpatialMean.apply(x)


def squeeze_excite_gate(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """`x * sigmoid(logits)` (logits N x C x 1 x 1) that keeps its output, not `x`, for backward."""
    return _SqueezeExciteGate.apply(x, logits)


# -- activation checkpointing -------------------------------------------------------------------------
@contextmanager
def _recomputing(enabled: bool) -> Iterator[None]:
    previous = recomputing(), ops_enabled()
    _state.recomputing, _state.enabled = True, enabled
    try:
        yield
    finally:
        _state.recomputing, _state.enabled = previous


def checkpoint_stage(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run `stage(x)` keeping only `x` for backward; the stage is re-run during backward.

    Non-reentrant checkpointing (RNG state restored, so drop-path masks repeat). While it
    re-runs, `recomputing()` is true, effscale's batch norms skip the running-stat update, and
    `memory_efficient_ops` is as it was in the forward pass (the re-run must save the same
    tensors). Under a compiler the plain checkpoint is traced (the compiler's partitioner
    recomputes and does not repeat the buffer updates).
    """
    if tracing():
        return checkpoint(stage, x, use_reentrant=False)
    enabled = ops_enabled()
    return checkpoint(stage, x, use_reentrant=False, context_fn=lambda: (nullcontext(), _recomputing(enabled)))
