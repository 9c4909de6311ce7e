"""Compound scaling as a pure function on specs.

depth d = alpha**phi, width w = beta**phi, resolution r = gamma**phi with
alpha * beta**2 * gamma**2 ~= 2, so FLOPs grow by about 2**phi. Rounding follows the
reference TF code: channels to a multiple of the spec's divisor (never below 90 % of the
target), repeats by ceil, resolution to a multiple of 8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import EffscaleError
from .spec import MIN_RESOLUTION, NetworkSpec, make_divisible

RESOLUTION_MULTIPLE = 8


def _checked_number(name: str, value, minimum: float, *, inclusive: bool) -> float:
    """`value` as a finite float above `minimum` (or equal, when inclusive); else a named error."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise EffscaleError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        raise EffscaleError(f"{name}={value!r} must be a finite number {'>=' if inclusive else '>'} {minimum:g}")
    return value


@dataclass(frozen=True)
class Coefficients:
    """Multipliers applied to a base spec: depth (repeats), width (channels), resolution."""

    depth: float = 1.0
    width: float = 1.0
    resolution: float = 1.0

    def __post_init__(self) -> None:
        for name in ("depth", "width", "resolution"):
            object.__setattr__(self, name, _checked_number(name, getattr(self, name), 0, inclusive=False))

    @property
    def flops_factor(self) -> float:
        """Expected FLOPs multiplier d * w**2 * r**2 (before rounding)."""
        return self.depth * self.width ** 2 * self.resolution ** 2


@dataclass(frozen=True)
class ScalingRule:
    """alpha (depth), beta (width), gamma (resolution), each >= 1; EfficientNet's by default."""

    alpha: float = 1.2
    beta: float = 1.1
    gamma: float = 1.15

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            object.__setattr__(self, name, _checked_number(name, getattr(self, name), 1, inclusive=True))

    @property
    def flops_base(self) -> float:
        """alpha * beta**2 * gamma**2: the FLOPs multiplier per unit of phi (~2 for EfficientNet)."""
        return self.alpha * self.beta ** 2 * self.gamma ** 2

    def at(self, phi: float) -> Coefficients:
        phi = float(phi)
        if not math.isfinite(phi):
            raise EffscaleError(f"phi={phi!r} must be a finite number")
        return Coefficients(depth=self.alpha ** phi, width=self.beta ** phi, resolution=self.gamma ** phi)

    def check_constraint(self, target: float = 2.0, tolerance: float = 0.1) -> None:
        """Raise unless alpha * beta**2 * gamma**2 is within `tolerance` (relative) of `target`."""
        if abs(self.flops_base / target - 1) > tolerance:
            raise EffscaleError(f"alpha*beta^2*gamma^2 = {self.flops_base:.3f} is not within "
                                f"{tolerance:.0%} of the target {target}")


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    return make_divisible(channels * width, divisor)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(repeats * depth))


def round_resolution(resolution: int, factor: float, multiple: int = RESOLUTION_MULTIPLE) -> int:
    if not isinstance(multiple, int) or multiple < 1:
        raise EffscaleError(f"resolution multiple={multiple!r} must be an integer >= 1")
    return int(round(resolution * factor / multiple)) * multiple


def scale(spec: NetworkSpec, coefficients: Coefficients, *, name: str | None = None,
          resolution: int | None = None, resolution_multiple: int = RESOLUTION_MULTIPLE) -> NetworkSpec:
    """Scale `spec` by `coefficients` with the reference rounding.

    `resolution` overrides the rounded resolution (the released family uses hand-picked sizes).
    `resolution_multiple` is 8 by default; the scaling lab uses 1 at small resolutions, where a
    step of 8 px is a 25-50 % step in FLOPs and matching MACs within a few percent is impossible.
    Raises when a stage would have less than one channel before rounding, or the resolution
    falls below 32 pixels.
    """
    width, depth = coefficients.width, coefficients.depth
    for index, stage in enumerate(spec.stages):
        if stage.out_channels * width < 1:
            min_width = 1 / min(s.out_channels for s in spec.stages)
            raise EffscaleError(
                f"width multiplier {width:.4g} leaves stage {index + 1} with {stage.out_channels * width:.3g} "
                f"channels (< 1); the width multiplier must be >= {min_width:.4g} for {spec.name}")
    if resolution is None:
        resolution = round_resolution(spec.resolution, coefficients.resolution, resolution_multiple)
        if resolution < MIN_RESOLUTION:
            raise EffscaleError(
                f"resolution multiplier {coefficients.resolution:.4g} takes {spec.name}'s {spec.resolution} px "
                f"to {spec.resolution * coefficients.resolution:.1f} px; the minimum is {MIN_RESOLUTION} px "
                f"(multiplier >= {MIN_RESOLUTION / spec.resolution:.4g})")
    stages = tuple(
        stage.__class__(
            block=stage.block,
            repeats=round_repeats(stage.repeats, depth) if stage.scale_depth else stage.repeats,
            kernel=stage.kernel, stride=stage.stride, expand_ratio=stage.expand_ratio,
            out_channels=round_channels(stage.out_channels, width, spec.divisor),
            se_ratio=stage.se_ratio, scale_depth=stage.scale_depth)
        for stage in spec.stages)
    changes = dict(stages=stages, resolution=resolution)
    if spec.scale_stem_head:
        changes["stem_channels"] = round_channels(spec.stem_channels, width, spec.divisor)
        changes["head_channels"] = round_channels(spec.head_channels, width, spec.divisor)
    if name is not None:
        changes["name"] = name
    return spec.replace(**changes)


def compound(base: NetworkSpec, phi: float, rule: ScalingRule | None = None) -> NetworkSpec:
    """Scale `base` by `rule.at(phi)`; any finite phi, fractional and negative included."""
    rule = rule or ScalingRule()
    coefficients = rule.at(phi)
    return scale(base, coefficients, name=f"{base.name}-phi{phi:g}")


@runtime_checkable
class Scalable(Protocol):
    """What the scaling lab (search, study, demo) needs from a family's spec.

    A spec is a frozen description with three knobs, depth, width and a resolution (image
    side, sequence length, ...). `NetworkSpec` implements it, and so does the 1-D time-series
    family in `effscale.series`: anything with these members can be searched and studied.

    - ``kind``: the input it takes ("image", "series"); the lab checks it against the data's.
    - ``name``, ``resolution``: as in NetworkSpec.
    - ``scaled(coefficients, *, name=None, resolution_multiple=8)``: the spec scaled by
      (depth, width, resolution) with the family's rounding; pure, raises EffscaleError.
    - ``build(num_classes, in_chans)``: a fresh torch module for the spec.
    - ``analytic_cost(num_classes, in_chans)``: an object with ``params`` and ``macs`` (batch 1,
      at the spec's own resolution, for a model built with those classes and input channels).
    - ``to_text()``: a text form that records the whole spec.
    """

    kind: str
    name: str
    resolution: int

    def scaled(self, coefficients: Coefficients, *, name: str | None = None,
               resolution_multiple: int = RESOLUTION_MULTIPLE): ...

    def build(self, num_classes: int, in_chans: int): ...

    def analytic_cost(self, num_classes: int = 1000, in_chans: int = 3): ...

    def to_text(self) -> str: ...
