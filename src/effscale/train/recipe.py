"""Training recipes as functions of the spec: the EfficientNet recipe and a quick CPU one.

Regularisation grows with model size as in the paper (dropout 0.2 for B0 up to 0.5 for B7).
Rather than a table per name, it is interpolated on the spec's "effective phi": log2 of its
MACs relative to B0 at 224 px (compound scaling doubles FLOPs per unit of phi), so any scaled
or custom spec gets a sensible value.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..cost import cost
from ..errors import EffscaleError, closest
from ..scaling import Coefficients, scale
from ..spec import EFFICIENTNET_B0, NetworkSpec

OPTIMIZERS = ("rmsprop_tf", "adamw", "sgd")
SCHEDULES = ("cosine", "exponential")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # auto: bf16 where the hardware has it natively, else fp32
B0_MACS = cost(EFFICIENTNET_B0).macs
B7_EFFECTIVE_PHI = 6.6  # log2(B7 MACs / B0 MACs)


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float = 0.9
    eps: float = 1e-3
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    decay_rate: float = 0.97  # exponential schedule: lr *= decay_rate every decay_epochs
    decay_epochs: float = 2.4
    label_smoothing: float = 0.1
    ema_decay: float = 0.0  # 0 = no EMA
    dropout: float = 0.2
    drop_path_rate: float = 0.2
    augment: str = "basic"
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area range (Inception default)
    precision: str = "fp32"
    channels_last: bool = True
    bn_momentum: float | None = None  # None keeps the spec's; short runs need faster-moving BN statistics

    def __post_init__(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer={self.optimizer!r} is unknown; allowed: {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"schedule={self.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}"),
            (self.precision in PRECISIONS, f"precision={self.precision!r} is unknown; allowed: {', '.join(PRECISIONS)}"),
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs={self.epochs!r} must be an integer >= 1"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size={self.batch_size!r} must be an integer >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr!r} must be a finite number > 0"),
            (self.weight_decay >= 0, f"weight_decay={self.weight_decay!r} must be >= 0"),
            (0 <= self.label_smoothing < 1, f"label_smoothing={self.label_smoothing!r} must be in [0, 1)"),
            (0 <= self.ema_decay < 1, f"ema_decay={self.ema_decay!r} must be in [0, 1)"),
            (0 <= self.dropout < 1 and 0 <= self.drop_path_rate < 1, "dropout and drop_path_rate must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise EffscaleError(message)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def resolve_precision(precision: str, device_type: str = "cpu") -> tuple[str, str]:
    """(the precision to train in, why): "auto" becomes bf16 where the hardware computes it natively
    (CPUs with AVX512-BF16 / AMX; CUDA GPUs that support it), else fp32; others are kept as given."""
    import torch

    if precision != "auto":
        return precision, "as requested"
    if device_type == "cuda":
        native = torch.cuda.is_bf16_supported()
        where = "this GPU"
    else:
        from ..nn.inference import native_bf16

        native = native_bf16()
        where = f"this CPU ({torch.backends.cpu.get_cpu_capability()})"
    if native:
        return "bf16", f"auto: {where} computes bf16 natively"
    return "fp32", f"auto: {where} has no native bf16, where bf16 would be slower than fp32"


def effective_phi(spec: NetworkSpec) -> float:
    """log2(MACs / B0's MACs): 0 for B0, ~1 for B1-size, negative for scaled-down specs."""
    return math.log2(cost(spec).macs / B0_MACS)


def regularisation(spec: NetworkSpec) -> tuple[float, float]:
    """(dropout, drop_path_rate) for the spec: 0.2 at B0 rising linearly in phi to 0.5 at B7 size;
    scaled-down specs get less (down to 0.05), as small models underfit rather than overfit."""
    phi = effective_phi(spec)
    dropout = min(0.5, max(0.05, 0.2 + 0.3 * phi / B7_EFFECTIVE_PHI))
    drop_path = min(0.3, max(0.0, 0.2 + 0.1 * phi / B7_EFFECTIVE_PHI if phi >= 0 else 0.2 * (1 + phi / 8)))
    return round(dropout, 4), round(drop_path, 4)


def quick_spec(in_chans_resolution: int = 32) -> NetworkSpec:
    """A < 1 M-parameter EfficientNet for 28-32 px images (Fashion-MNIST) that trains in minutes on
    2 CPU cores: B0 at width 0.5, depth 0.5, with the first two strided stages at stride 1 so a
    32 px input still ends on a 2 x 2 map (total stride 16 instead of 32)."""
    small = scale(EFFICIENTNET_B0, Coefficients(depth=0.5, width=0.5), name="effscale_quick",
                  resolution=in_chans_resolution)
    stages = tuple(dataclasses.replace(stage, stride=1) if index == 1 else stage
                   for index, stage in enumerate(small.stages))
    # crop_pct 1: small images are resized whole, as the training eval transform does.
    return small.replace(stages=stages, head_channels=640, crop_pct=1.0)


def paper_recipe(spec: NetworkSpec, batch_size: int = 256) -> Recipe:
    """The published EfficientNet recipe (RMSProp TF-form, lr 0.016 per 256 images, warmup 5
    epochs, x0.97 every 2.4 epochs, wd 1e-5, EMA 0.9999, label smoothing 0.1, 350 epochs)."""
    dropout, drop_path = regularisation(spec)
    return Recipe(name="paper", epochs=350, batch_size=batch_size, optimizer="rmsprop_tf",
                  lr=0.016 * batch_size / 256, weight_decay=1e-5, momentum=0.9, eps=1e-3, warmup_epochs=5,
                  schedule="exponential", decay_rate=0.97, decay_epochs=2.4, label_smoothing=0.1,
                  ema_decay=0.9999, dropout=max(dropout, 0.2), drop_path_rate=max(drop_path, 0.2),
                  augment="randaugment", precision="auto")


def quick_recipe(spec: NetworkSpec, batch_size: int = 128) -> Recipe:
    """Minutes on 2 CPU cores: AdamW, one warmup epoch, cosine, light augmentation."""
    dropout, drop_path = regularisation(spec)
    return Recipe(name="quick", epochs=10, batch_size=batch_size, optimizer="adamw",
                  lr=4e-3 * batch_size / 128, weight_decay=0.05, warmup_epochs=1, schedule="cosine",
                  label_smoothing=0.1, ema_decay=0.0, dropout=dropout, drop_path_rate=drop_path,
                  augment="basic", crop_scale=(0.8, 1.0), precision="fp32", bn_momentum=0.1)


RECIPES = {"quick": quick_recipe, "paper": paper_recipe}


def get_recipe(name: str, spec: NetworkSpec, batch_size: int | None = None) -> Recipe:
    if name not in RECIPES:
        raise EffscaleError(f"unknown recipe {name!r}{closest(name, RECIPES)}; allowed: {', '.join(RECIPES)}")
    return RECIPES[name](spec) if batch_size is None else RECIPES[name](spec, batch_size)
