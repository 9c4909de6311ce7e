"""Compound scaling as a pure function on specs.

depth d = alpha**phi, width w = beta**phi, resolution r = gamma**phi with
alpha * beta**2 * gamma**2 ~= 2, so FLOPs grow by about 2**phi. Rounding follows the
reference TF code: channels to a multiple of the spec's divisor (never below 90 % of the
target), repeats by ceil, resolution to a multiple of 8.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import EffscaleError
from .families import family_of
from .spec import MAX_BLOCKS, MAX_CHANNELS, MAX_RESOLUTION, MIN_RESOLUTION, NetworkSpec, make_divisible

RESOLUTION_MULTIPLE = 8


def _checked_number(name: str, value, minimum: float, *, inclusive: bool) -> float:
    """`value` as a finite float above `minimum` (or equal, when inclusive); else a named error."""
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        raise EffscaleError(f"{name}={value!r:.80} is not a number (or beyond a float's range)") from None
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


RULE_BIASES = ("resolution", "width")


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
        phi = _checked_phi(phi)
        try:
            powers = [base ** phi for base in (self.alpha, self.beta, self.gamma)]
        except OverflowError:
            powers = [math.inf]
        if not all(0 < power < math.inf for power in powers):
            raise EffscaleError(f"phi={phi:g} takes alpha**phi, beta**phi or gamma**phi (alpha={self.alpha:g}, "
                                f"beta={self.beta:g}, gamma={self.gamma:g}) out of the range of a float")
        return Coefficients(depth=powers[0], width=powers[1], resolution=powers[2])

    def biased(self, toward: str, strength: float = 1.05) -> "ScalingRule":
        """The rule leaned toward resolution (gamma x strength) or width (beta x strength), alpha
        divided by strength^2 so that alpha * beta^2 * gamma^2, the FLOPs per unit of phi, is
        unchanged: the same phi costs the same, spent differently (multi-task heads where one task
        wants resolution, another width)."""
        if toward not in RULE_BIASES:
            raise EffscaleError(f"rule bias {toward!r} is unknown; allowed: {', '.join(RULE_BIASES)}")
        strength = _checked_number("strength", strength, 1, inclusive=True)
        alpha = self.alpha / strength ** 2
        if alpha < 1:
            raise EffscaleError(f"a {toward} bias of {strength:g} takes alpha to {alpha:.4g} < 1 (alpha={self.alpha:g}); "
                                f"allowed: strength up to {math.sqrt(self.alpha):.4g}")
        if toward == "resolution":
            return ScalingRule(alpha, self.beta, self.gamma * strength)
        return ScalingRule(alpha, self.beta * strength, self.gamma)

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


# -- limits: which multipliers a spec can take ----------------------------------------------------
KNOB_BASES = {"depth": "alpha", "width": "beta", "resolution": "gamma"}


class ScaleLimitError(EffscaleError):
    """A multiplier that takes a spec past a limit. `knob` (depth, width, resolution), `value`,
    `effect` (what it does to the spec) and the allowed `low`..`high` (None: unbounded) let a
    caller restate the error in its own terms, as `compound` does for phi."""

    def __init__(self, knob: str, value: float, effect: str, low: float | None, high: float | None):
        self.knob, self.value, self.effect, self.low, self.high = knob, value, effect, low, high
        super().__init__(f"{knob}={value:g} {effect}; allowed: {_interval_text(knob, low, high, '.4g')}")


def _interval_text(name: str, low: float | None, high: float | None, fmt: str) -> str:
    if low is not None and high is not None:
        return f"{low:{fmt}} <= {name} <= {high:{fmt}}"
    if low is not None:
        return f"{name} >= {low:{fmt}}"
    return f"{name} <= {high:{fmt}}" if high is not None else "any value"


@dataclass(frozen=True)
class SizeLimits:
    """What a family's scaled spec must stay within; its resolution may be a length (series)."""

    min_resolution: int = MIN_RESOLUTION
    max_resolution: int = MAX_RESOLUTION
    unit: str = "px"


def _violation(spec, knob: str, value: float, resolution_multiple: int, limits: SizeLimits) -> str | None:
    """What multiplying `spec`'s `knob` by `value` breaks (the effect, in words), or None.

    The same checks as the spec's own validation, made on the multipliers before anything is
    built, so that a huge multiplier fails in microseconds instead of building a huge spec."""
    stages = spec.stages
    if knob == "width":
        layers = [(f"stage {i + 1}", s.out_channels) for i, s in enumerate(stages)]
        if getattr(spec, "scale_stem_head", True):
            layers += [("the stem", spec.stem_channels), ("the head", spec.head_channels)]
        where, narrowest = min(layers, key=lambda layer: layer[1])
        if narrowest * value < 1:
            return f"leaves {where} of {spec.name} with {narrowest * value:.3g} channels (< 1)"
        where, widest = max(layers, key=lambda layer: layer[1])
        if widest * value > MAX_CHANNELS:
            return f"puts {widest * value:.4g} channels in {where} of {spec.name} (the limit is {MAX_CHANNELS})"
    elif knob == "depth":
        scaled = [s.repeats * value if s.scale_depth else s.repeats for s in stages]
        blocks = sum(scaled) if max(scaled) > MAX_BLOCKS else sum(math.ceil(r) for r in scaled)
        if blocks > MAX_BLOCKS:
            return f"makes {spec.name} {blocks:.4g} blocks deep (the limit is {MAX_BLOCKS})"
    else:
        target = spec.resolution * value
        if target <= limits.max_resolution + resolution_multiple:
            rounded = round_resolution(spec.resolution, value, resolution_multiple)
            if rounded < limits.min_resolution:
                return (f"takes {spec.name}'s {spec.resolution} {limits.unit} to {target:.1f} {limits.unit} "
                        f"(the minimum is {limits.min_resolution} {limits.unit})")
            if rounded <= limits.max_resolution:
                return None
        return (f"takes {spec.name}'s {spec.resolution} {limits.unit} to {target:.4g} {limits.unit} "
                f"(the limit is {limits.max_resolution} {limits.unit})")
    return None


def feasible_interval(feasible, *, cap: float) -> tuple[float | None, float | None]:
    """The interval of t around 0 where the monotone test `feasible(t)` holds (feasible(0) is
    assumed): doubling out from 0, then bisection to 1e-4. An end beyond `cap` is None."""
    ends = []
    for sign in (-1.0, 1.0):
        good, bad = 0.0, sign
        while feasible(bad):
            good, bad = bad, bad * 2
            if abs(bad) > cap:
                break
        else:
            while abs(bad - good) > 1e-4:
                middle = (good + bad) / 2
                good, bad = (middle, bad) if feasible(middle) else (good, middle)
            ends.append(good)
            continue
        ends.append(None)
    return ends[0], ends[1]


def multiplier_range(spec, knob: str, *, resolution_multiple: int = RESOLUTION_MULTIPLE,
                     limits: SizeLimits = SizeLimits()) -> tuple[float | None, float | None]:
    """The smallest and largest `knob` multiplier (others 1) that `spec` can take; None: unbounded."""
    low, high = feasible_interval(
        lambda t: _violation(spec, knob, math.exp(t), resolution_multiple, limits) is None, cap=700)
    return (None if low is None else math.exp(low)), (None if high is None else math.exp(high))


def check_multipliers(spec, coefficients: Coefficients, *, resolution_multiple: int = RESOLUTION_MULTIPLE,
                      fixed_resolution: bool = False, limits: SizeLimits = SizeLimits()) -> None:
    """Raise ScaleLimitError for the first multiplier that takes `spec` past a limit: fewer than
    one channel in a layer, more than MAX_CHANNELS or MAX_BLOCKS, a resolution outside the limits."""
    for knob in ("width", "depth") + (() if fixed_resolution else ("resolution",)):
        value = getattr(coefficients, knob)
        effect = _violation(spec, knob, value, resolution_multiple, limits)
        if effect is not None:
            low, high = multiplier_range(spec, knob, resolution_multiple=resolution_multiple, limits=limits)
            raise ScaleLimitError(knob, value, effect, low, high)


def _require(value, kind, function: str, allowed: str):
    if not isinstance(value, kind):
        raise TypeError(f"{function}() takes {allowed}, got {type(value).__name__} {value!r:.80}")
    return value


def scale(spec: NetworkSpec, coefficients: Coefficients, *, name: str | None = None,
          resolution: int | None = None, resolution_multiple: int = RESOLUTION_MULTIPLE) -> NetworkSpec:
    """Scale `spec` by `coefficients` with the reference rounding.

    `resolution` overrides the rounded resolution (the released family uses hand-picked sizes).
    `resolution_multiple` is 8 by default; the scaling lab uses 1 at small resolutions, where a
    step of 8 px is a 25-50 % step in FLOPs and matching MACs within a few percent is impossible.
    Raises ScaleLimitError (an EffscaleError) naming the multiplier, what it does to the spec and
    the allowed range: a layer with less than one channel before rounding, a resolution below
    32 px, or more than the size limits (spec.MAX_BLOCKS, MAX_CHANNELS, MAX_RESOLUTION).
    `effscale.scale` also takes a model name, spec file, weights file or built model.
    """
    _require(spec, NetworkSpec, "scale", "a NetworkSpec (effscale.scale also takes model names)")
    _require(coefficients, Coefficients, "scale", "Coefficients(depth=, width=, resolution=) as its second argument")
    return scale_stages(spec, coefficients, name=name, resolution=resolution, resolution_multiple=resolution_multiple,
                        scale_stem_head=spec.scale_stem_head)


def scale_stages(spec, coefficients: Coefficients, *, name: str | None = None, resolution: int | None = None,
                 resolution_multiple: int = RESOLUTION_MULTIPLE, limits: SizeLimits = SizeLimits(),
                 scale_stem_head: bool = True):
    """The scaling every stage-table family shares (image, series, the next ones): repeats by
    ceil, channels by `make_divisible(spec.divisor)`, the resolution rounded to
    `resolution_multiple` (or given), after `check_multipliers` against the family's `limits`.
    Stages are changed with `dataclasses.replace`, so a field a family adds to its stage rows is
    carried over, never dropped."""
    check_multipliers(spec, coefficients, resolution_multiple=resolution_multiple,
                      fixed_resolution=resolution is not None, limits=limits)
    width, depth = coefficients.width, coefficients.depth
    if resolution is None:
        resolution = round_resolution(spec.resolution, coefficients.resolution, resolution_multiple)
    stages = tuple(dataclasses.replace(
        stage, repeats=round_repeats(stage.repeats, depth) if stage.scale_depth else stage.repeats,
        out_channels=round_channels(stage.out_channels, width, spec.divisor)) for stage in spec.stages)
    changes = dict(stages=stages, resolution=resolution)
    if scale_stem_head:
        changes["stem_channels"] = round_channels(spec.stem_channels, width, spec.divisor)
        changes["head_channels"] = round_channels(spec.head_channels, width, spec.divisor)
    if name is not None:
        changes["name"] = name
    return spec.replace(**changes)


def _checked_phi(phi) -> float:
    try:
        value = float(phi) if not isinstance(phi, bool) else None
    except (TypeError, ValueError, OverflowError):
        value = None
    if value is None:
        raise EffscaleError(f"phi={phi!r:.80} is not a number")
    if not math.isfinite(value):
        raise EffscaleError(f"phi={value!r} must be a finite number")
    return value


def phi_range(base, rule: ScalingRule | None = None) -> tuple[float | None, float | None]:
    """The smallest and largest phi that `base` (any Scalable spec) can be compound-scaled by
    under `rule`, to 0.01 (inward); None where there is no bound below |phi| = 10000."""
    rule = ScalingRule() if rule is None else rule

    def feasible(phi: float) -> bool:
        try:
            scale_any(base, rule.at(phi))
        except EffscaleError:
            return False
        return True

    low, high = feasible_interval(feasible, cap=10_000)
    return (None if low is None else math.ceil(low * 100) / 100), (None if high is None else math.floor(high * 100) / 100)


def compound(base: NetworkSpec, phi: float, rule: ScalingRule | None = None) -> NetworkSpec:
    """Scale `base` (a NetworkSpec or any Scalable spec) by `rule.at(phi)`; any finite phi,
    fractional and negative included, within the range the base allows (`phi_range`).

    An error names phi as given, what it does to the base, and the allowed phi range.
    `effscale.compound` also takes a model name, spec file, weights file or built model.
    """
    _require(base, Scalable, "compound", "a NetworkSpec or another Scalable spec (effscale.compound also "
                                         "takes model names)")
    rule = ScalingRule() if rule is None else _require(rule, ScalingRule, "compound", "rule=ScalingRule(...)")
    phi = _checked_phi(phi)
    try:
        return scale_any(base, rule.at(phi), name=f"{base.name}-phi{phi:g}")
    except EffscaleError as error:
        if isinstance(error, ScaleLimitError):
            cause = (f"phi={phi:g} gives the {error.knob} multiplier {KNOB_BASES[error.knob]}**phi = "
                     f"{error.value:.4g}, which {error.effect}")
        else:
            cause = str(error) if str(error).startswith("phi=") else f"phi={phi:g}: {error}"
        low, high = phi_range(base, rule)
        raise EffscaleError(f"{cause}; allowed for {base.name} under alpha={rule.alpha:g}, beta={rule.beta:g}, "
                            f"gamma={rule.gamma:g}: {_interval_text('phi', low, high, 'g')}") from None


def scale_any(spec, coefficients: Coefficients, **options):
    """Scale a spec of any registered family by `coefficients` (its family's `scale`)."""
    return family_of(spec).scale(spec, coefficients, **options)


@runtime_checkable
class Scalable(Protocol):
    """What a spec is: a frozen description of a network with three knobs, depth, width and a
    resolution (image side, sequence length, ...). `NetworkSpec` and the 1-D `SeriesSpec` are
    Scalable; everything done with a spec (scale, build, count) goes through its registered
    family (`effscale.families.family_of(spec)`), so a new family adds a `Family`, not methods.

    - ``kind``: the family's kind and the input it takes ("image", "series").
    - ``name``, ``resolution``: as in NetworkSpec.
    - ``to_text()``: a text form that records the whole spec (its family's `from_text` reads it).
    """

    kind: str
    name: str
    resolution: int

    def to_text(self) -> str: ...
