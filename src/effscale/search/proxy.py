"""The proxy recipe: every candidate of a search or study is trained the same short way.

What a proxy must get right is the *ranking* of candidates, not their final accuracy, so it
keeps everything equal across candidates: the number of optimizer steps, the batch, the data
order (a function of the seed), the optimizer (AdamW, warmup then cosine, label smoothing 0.1).
Before evaluation the batch-norm statistics are re-estimated on training batches (as
Once-for-All does for sub-networks): a few hundred steps are too few for running averages at
the momentum the specs carry, and stale statistics would rank models by how fast their BN
converged rather than by how good they are.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EffscaleError, closest
from ..families import family_of
from ..train.optim import parameter_groups
from .task import Task


@dataclass(frozen=True)
class ProxyBudget:
    """Optimizer steps and batch of one proxy run; samples used for BN recalibration and evaluation."""

    name: str
    steps: int
    batch_size: int
    lr: float = 4e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    bn_samples: int = 512
    eval_samples: int | None = None  # None: the whole split

    def to_dict(self) -> dict:
        return asdict(self)


BUDGETS = {
    "tiny": ProxyBudget("tiny", steps=12, batch_size=32, bn_samples=128, eval_samples=256),  # tests
    "short": ProxyBudget("short", steps=40, batch_size=64, bn_samples=256),  # `demo --quick`
    "quick": ProxyBudget("quick", steps=100, batch_size=64),
    "standard": ProxyBudget("standard", steps=400, batch_size=128),
}


def get_budget(name: str | ProxyBudget) -> ProxyBudget:
    """A named budget, or 'NAME@STEPS': that budget with its step count replaced (the demo sizes
    its budget to the machine this way; the name keeps the steps, so results record them)."""
    if isinstance(name, ProxyBudget):
        return name
    base, _, steps = str(name).partition("@")
    if base not in BUDGETS:
        raise EffscaleError(f"budget={name!r} is unknown{closest(base, BUDGETS)}; allowed: {', '.join(BUDGETS)} "
                            "(or NAME@STEPS, e.g. quick@40)")
    if not steps:
        return BUDGETS[base]
    if not steps.isdigit() or not 1 <= int(steps) <= 1_000_000:
        raise EffscaleError(f"budget={name!r}: the steps after '@' must be a whole number from 1 to 1000000")
    return replace(BUDGETS[base], name=f"{base}@{int(steps)}", steps=int(steps))


@dataclass
class ProxyResult:
    top1: float  # percent, on the evaluated split
    macs: int
    params: int
    seconds: float
    steps: int
    final_loss: float


def _batches(count: int, batch_size: int, steps: int, generator: torch.Generator):
    """`steps` index batches drawn epoch by epoch from seeded permutations (drop-last)."""
    per_epoch = max(1, count // batch_size)
    order = torch.randperm(count, generator=generator)
    for step in range(steps):
        position = step % per_epoch
        if step and position == 0:
            order = torch.randperm(count, generator=generator)
        yield order[position * batch_size:(position + 1) * batch_size]


@torch.no_grad()
def zero_init_residual_branches(model: nn.Module) -> None:
    """Zero the scale of the last batch norm in every residual branch (block with has_residual)."""
    for block in model.modules():
        if getattr(block, "has_residual", False):
            norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            if norms:
                nn.init.zeros_(norms[-1].weight)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, task: Task, resolution: int, samples: int) -> None:
    """Re-estimate BN running statistics as exact averages over `samples` training inputs."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    model.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    raw, _ = task.train
    for start in range(0, min(samples, len(raw)), 128):
        model(task.inputs(raw[start:min(start + 128, samples)], resolution, False))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


@torch.inference_mode()
def accuracy(model: nn.Module, task: Task, split: str, resolution: int, samples: int | None = None) -> float:
    raw, labels = getattr(task, split)
    if samples is not None:
        raw, labels = raw[:samples], labels[:samples]
    model.eval()
    correct = 0
    for start in range(0, len(raw), 256):
        logits = model(task.inputs(raw[start:start + 256], resolution, False))
        correct += (logits.argmax(1) == labels[start:start + 256]).sum().item()
    return 100.0 * correct / max(1, len(raw))


def train_proxy(spec, task: Task, budget: str | ProxyBudget = "quick", *, seed: int = 0,
                split: str = "minival", return_model: bool = False, step_seconds: list | None = None):
    """Train a fresh model of `spec` on `task` with the proxy recipe; top-1 on `split`.

    Deterministic in `seed` (initialisation, data order, augmentation) on CPU.
    Returns a ProxyResult, and the trained model too when `return_model`. `step_seconds`, a list,
    receives the wall time of every training step (the demo sizes itself with it).
    """
    budget = get_budget(budget)
    task.check_spec(spec)
    if split not in ("minival", "test"):
        raise EffscaleError(f"split={split!r} must be 'minival' or 'test'")
    started = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = family_of(spec).build(spec, task.num_classes, task.in_chans)
    zero_init_residual_branches(model)
    if task.kind == "image":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(parameter_groups(model, budget.weight_decay), lr=budget.lr)
    warmup = max(1, int(budget.steps * budget.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * max(0, step - warmup) / max(1, budget.steps - warmup)))))
    raw, labels = task.train
    model.train()
    loss_value = float("nan")
    for batch in _batches(len(raw), min(budget.batch_size, len(raw)), budget.steps, generator):
        step_start = time.perf_counter()
        loss = F.cross_entropy(model(task.inputs(raw[batch], spec.resolution, True)), labels[batch],
                               label_smoothing=budget.label_smoothing)
        if not torch.isfinite(loss):
            raise EffscaleError(f"proxy training of {spec.name} diverged (loss {loss.item()}); "
                                f"lower the proxy lr (now {budget.lr:g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        if step_seconds is not None:
            step_seconds.append(time.perf_counter() - step_start)
    recalibrate_batchnorm(model, task, spec.resolution, budget.bn_samples)
    top1 = accuracy(model, task, split, spec.resolution, budget.eval_samples)
    cost = family_of(spec).cost(spec, num_classes=task.num_classes, in_chans=task.in_chans)
    result = ProxyResult(top1=round(top1, 3), macs=int(cost.macs), params=int(cost.params),
                         seconds=round(time.perf_counter() - started, 2), steps=budget.steps,
                         final_loss=round(loss_value, 4))
    return (result, model) if return_model else result
