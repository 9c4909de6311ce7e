"""Scaling strategies matched on MACs: compound (the rule at phi) and one dimension at a time.

To compare strategies fairly, each is scaled to the same MACs: for a target t (a multiple of the
base's MACs) we solve for the single knob of the strategy (phi for compound, the multiplier for
depth-only, width-only, resolution-only) so that the *rounded* spec's MACs are as close to
t x base as rounding allows. MACs are non-decreasing in each knob, so bisection finds the two
rounding steps around the target and the closer one wins. Rounding makes some targets
unreachable within the tolerance (a depth step adds a whole block); the result says so
(`matched`) rather than hiding it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import EffscaleError, closest
from ..families import family_of
from ..scaling import Coefficients, ScalingRule, scale_any

STRATEGIES = ("compound", "depth", "width", "resolution")
TOLERANCE = 0.05
# The lab rounds resolution to whole pixels/samples: at 32 px a multiple of 8 is a 56 % FLOPs step.
LAB_RESOLUTION_MULTIPLE = 1
MAX_KNOB = 64.0


@dataclass(frozen=True)
class Matched:
    strategy: str
    target: float
    knob: float  # phi for compound, the multiplier otherwise
    coefficients: Coefficients
    spec: object
    macs: int
    macs_ratio: float

    @property
    def error(self) -> float:
        return self.macs_ratio / self.target - 1

    @property
    def matched(self) -> bool:
        return abs(self.error) <= TOLERANCE


def check_targets(targets) -> list[float]:
    values = []
    for target in targets:
        try:
            value = float(target)
        except (TypeError, ValueError):
            raise EffscaleError(f"target {target!r} is not a number; targets are FLOPs multiples >= 1") from None
        if not math.isfinite(value) or value < 1:
            raise EffscaleError(f"target {target!r} must be a finite FLOPs multiple >= 1 (1 = the base itself)")
        values.append(value)
    if not values:
        raise EffscaleError("no targets given; give FLOPs multiples >= 1, e.g. 2,4,8")
    return values


def coefficients_for(strategy: str, knob: float, rule: ScalingRule) -> Coefficients:
    if strategy == "compound":
        return rule.at(knob)
    return Coefficients(**{strategy: knob})


def macs_of(spec, num_classes: int, in_chans: int) -> int:
    return int(family_of(spec).cost(spec, num_classes=num_classes, in_chans=in_chans).macs)


def match(base, strategy: str, target: float, *, rule: ScalingRule | None = None, num_classes: int = 1000,
          in_chans: int = 3) -> Matched:
    """The spec of `strategy` whose MACs are closest to `target` x the base's."""
    if strategy not in STRATEGIES:
        raise EffscaleError(f"strategy={strategy!r} is unknown{closest(strategy, STRATEGIES)}; "
                            f"allowed: {', '.join(STRATEGIES)}")
    (target,) = check_targets([target])
    rule = rule or ScalingRule()
    base_macs = macs_of(base, num_classes, in_chans)
    neutral = 0.0 if strategy == "compound" else 1.0

    def build(knob: float):
        name = f"{base.name}-{strategy}{target:g}x"
        spec = scale_any(base, coefficients_for(strategy, knob, rule), name=name,
                         resolution_multiple=LAB_RESOLUTION_MULTIPLE)
        return spec, macs_of(spec, num_classes, in_chans) / base_macs

    low, high = neutral, neutral + 1.0
    if strategy == "compound" and rule.flops_base <= 1:
        raise EffscaleError(f"the rule alpha={rule.alpha:g}, beta={rule.beta:g}, gamma={rule.gamma:g} does not grow "
                            "FLOPs (alpha*beta^2*gamma^2 = 1); compound scaling cannot reach any target > 1")
    while build(high)[1] < target:
        low, high = high, high * 2 if strategy != "compound" else high + 2
        if high > MAX_KNOB:
            raise EffscaleError(f"{strategy} scaling of {base.name} cannot reach {target:g}x its MACs "
                                f"(knob > {MAX_KNOB:g})")
    for _ in range(60):  # bisection to the rounding step: invariant ratio(low) < target <= ratio(high)
        middle = (low + high) / 2
        if build(middle)[1] < target:
            low = middle
        else:
            high = middle
        if high - low < 1e-6:
            break
    candidates = [(knob, *build(knob)) for knob in ((low, high) if target > 1 else (neutral,))]
    knob, spec, ratio = min(candidates, key=lambda c: abs(math.log(c[2] / target)))
    return Matched(strategy=strategy, target=target, knob=round(knob, 6),
                   coefficients=coefficients_for(strategy, knob, rule), spec=spec,
                   macs=macs_of(spec, num_classes, in_chans), macs_ratio=round(ratio, 4))
