"""Batch-level transforms on tensors: uint8 batches in, normalised float32 batches out.

Training (`train=True`), by `augment`:
    "none"          resize to the resolution (as in evaluation)
    "crop"          random-resized crop to the resolution (area `scale`, aspect 3/4..4/3)
    "basic"         random-resized crop + horizontal flip (the EfficientNet recipe's geometry)
    "randaugment"   "basic" + RandAugment (2 ops at magnitude 9 of 30, kornia's default op list)
Evaluation (`train=False`): resize to resolution x resolution (bilinear, antialiased when
shrinking; a no-op when the stored size already matches). Stored images are square already
(folder images are centre-cropped at load time), so no crop is needed; 28 px images go
straight to e.g. 32 px. Then scale to [0, 1] and normalise with `mean` / `std`.

The augmentations are kornia's (kornia.augmentation), which draw from torch's global RNG:
seed it per step for reproducible runs. Kornia's RandAugment picks one set of ops for the
whole batch it sees, so it is applied per group of RANDAUGMENT_GROUP samples to mix ops
within a batch.

Channels: `in_chans` is 1 (grayscale) or 3. `mean` / `std` have 1 or 3 values; 3 values for
a 1-channel input are reduced to their average (the spec's RGB statistics applied to
grayscale), 1 value for a 3-channel input is used for every channel.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EffscaleError

AUGMENTS = ("none", "crop", "basic", "randaugment")
RANDAUGMENT_OPS = 2
RANDAUGMENT_MAGNITUDE = 9
RANDAUGMENT_GROUP = 64
ASPECT_RATIO = (3 / 4, 4 / 3)


def channel_stats(values: Sequence[float], in_chans: int, name: str) -> torch.Tensor:
    """`values` as a (1, in_chans, 1, 1) float32 tensor, reduced or broadcast as documented."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise EffscaleError(f"{name}={values!r} must be 1 or 3 numbers") from None
    if len(numbers) not in (1, 3):
        raise EffscaleError(f"{name}={values!r} must be 1 or 3 numbers, got {len(numbers)}")
    if in_chans == 1 and len(numbers) == 3:
        numbers = [sum(numbers) / 3]
    elif in_chans == 3 and len(numbers) == 1:
        numbers = numbers * 3
    return torch.tensor(numbers, dtype=torch.float32).view(1, in_chans, 1, 1)


class BatchTransform(nn.Module):
    """uint8 N x C x H x W -> float32 N x C x resolution x resolution, augmented if `train`, normalised."""

    def __init__(self, resolution: int, mean: Sequence[float], std: Sequence[float], *, train: bool,
                 augment: str = "basic", in_chans: int = 3, scale: tuple[float, float] = (0.35, 1.0)) -> None:
        super().__init__()
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
            raise EffscaleError(f"resolution={resolution!r} must be a positive integer")
        if augment not in AUGMENTS:
            raise EffscaleError(f"augment={augment!r} is unknown; allowed: {', '.join(AUGMENTS)}")
        if in_chans not in (1, 3):
            raise EffscaleError(f"in_chans={in_chans!r} must be 1 (grayscale) or 3 (RGB)")
        if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise EffscaleError(f"scale={scale!r} must be (low, high) with 0 < low <= high <= 1")
        std_values = channel_stats(std, in_chans, "std")
        if not bool((std_values > 0).all()):
            raise EffscaleError(f"std={std!r} must be positive")
        mean_values = channel_stats(mean, in_chans, "mean")
        self.resolution, self.in_chans, self.augment = resolution, in_chans, augment
        self.augmenting = bool(train) and augment != "none"
        self.scale = (float(scale[0]), float(scale[1]))
        # x / 255 normalised = x * (1 / (255 std)) - mean / std: one fused multiply-add.
        self.register_buffer("multiplier", 1.0 / (255.0 * std_values), persistent=False)
        self.register_buffer("offset", -mean_values / std_values, persistent=False)
        self.crop = self.flip = self.randaugment = None
        if self.augmenting:
            import kornia.augmentation as K  # imported here: `import effscale.data` stays light

            self.crop = K.RandomResizedCrop((resolution, resolution), scale=self.scale, ratio=ASPECT_RATIO,
                                            align_corners=False, cropping_mode="resample")
            if augment in ("basic", "randaugment"):
                self.flip = K.RandomHorizontalFlip()
            if augment == "randaugment":
                from kornia.augmentation.auto import RandAugment

                self.randaugment = RandAugment(n=RANDAUGMENT_OPS, m=RANDAUGMENT_MAGNITUDE)

    def extra_repr(self) -> str:
        mode = f"train, augment={self.augment}, scale={self.scale}" if self.augmenting else "eval"
        return f"resolution={self.resolution}, in_chans={self.in_chans}, {mode}"

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        images = images_uint8
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
                and images.shape[1] == self.in_chans):
            raise EffscaleError(f"BatchTransform expects uint8 N x {self.in_chans} x H x W, got "
                                f"{getattr(images, 'dtype', type(images).__name__)} "
                                f"{tuple(getattr(images, 'shape', ()))}")
        if images.shape[0] == 0:
            return torch.empty((0, self.in_chans, self.resolution, self.resolution), device=images.device)
        x = images.float()
        if self.augmenting:
            x = self.crop(x)  # the crop is geometric: it works on 0..255 as well as on 0..1
            if self.flip is not None:
                x = self.flip(x)
            if self.randaugment is not None:
                x = self._randaugment(x.div_(255)).mul_(255)
        else:
            return self.evaluate_pixels(x).contiguous()
        return torch.addcmul(self.offset, x, self.multiplier).contiguous()

    def evaluate_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The eval path (resize, normalise) on float pixels 0..255, differentiable in them: what an
        attack on the pixels goes through (analyze robustness)."""
        return torch.addcmul(self.offset, self._resize(pixels), self.multiplier)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if (height, width) == (self.resolution, self.resolution):
            return x
        shrinking = self.resolution < min(height, width)
        return F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                             antialias=shrinking)

    def _randaugment(self, x: torch.Tensor) -> torch.Tensor:
        """RandAugment on [0, 1] images, per group of samples; grayscale goes through as 3 equal channels."""
        groups = []
        for group in x.split(RANDAUGMENT_GROUP):
            if self.in_chans == 1:
                groups.append(self.randaugment(group.expand(-1, 3, -1, -1).contiguous()).mean(1, keepdim=True))
            else:
                groups.append(self.randaugment(group))
        return torch.cat(groups).clamp_(0, 1)


def calibration_images(dataset, spec, samples: int, seed: int = 0) -> torch.Tensor:
    """`samples` training images chosen by a seeded permutation and preprocessed for evaluation
    as `spec` says: the one calibration set INT8 quantization (export/quantize.py) and QAT's
    activation ranges (train/qat.py) both use, so that QAT simulates the ranges INT8 will get."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:samples]
    transform = BatchTransform(spec.resolution, spec.mean, spec.std, train=False, in_chans=dataset.in_chans)
    return transform(dataset.images[order])
