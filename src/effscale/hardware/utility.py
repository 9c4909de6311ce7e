"""The planner's utility of free coefficients (see plan.py's docstring): U(d, w, r), how good a
scaling of the base is for its FLOPs, and its maximisation inside the budgets."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import EffscaleError
from ..scaling import Coefficients, ScalingRule

DEFAULT_SOFTNESS = 0.3
FLOPS_EXPONENTS = (1.0, 2.0, 2.0)  # FLOPs ~ d * w^2 * r^2



# -- the utility of free coefficients ---------------------------------------------------------------
@dataclass(frozen=True)
class Utility:
    """U(d, w, r): the a-weighted soft minimum of each dimension's own phi (module docstring)."""

    a_depth: float
    a_width: float
    a_resolution: float
    softness: float = DEFAULT_SOFTNESS

    def __post_init__(self) -> None:
        weights = self.weights
        if any(not math.isfinite(a) or a < 0 for a in weights) or sum(weights) <= 0:
            raise EffscaleError(f"utility weights (a_depth, a_width, a_resolution)={weights!r} must be "
                                f">= 0 and not all 0")
        if not math.isfinite(self.softness) or self.softness <= 0:
            raise EffscaleError(f"utility softness={self.softness!r} must be a finite number > 0")

    @classmethod
    def from_rule(cls, rule: ScalingRule, softness: float = DEFAULT_SOFTNESS) -> "Utility":
        """a_d = log alpha, a_w = 2 log beta, a_r = 2 log gamma: optimum on the rule's ray."""
        return cls(math.log(rule.alpha), 2 * math.log(rule.beta), 2 * math.log(rule.gamma), softness)

    @property
    def weights(self) -> tuple[float, float, float]:
        return (self.a_depth, self.a_width, self.a_resolution)

    def dimension_phis(self, coefficients: Coefficients) -> tuple[float | None, ...]:
        """y_i = c_i log s_i / a_i; None for a dimension with a_i = 0 (held at 1)."""
        values = (coefficients.depth, coefficients.width, coefficients.resolution)
        return tuple(c * math.log(s) / a if a else None for c, s, a in zip(FLOPS_EXPONENTS, values, self.weights))

    def __call__(self, coefficients: Coefficients) -> float:
        total = sum(self.weights)
        terms = [(a / total, y) for a, y in zip(self.weights, self.dimension_phis(coefficients)) if a]
        low = min(y for _, y in terms)  # shift for a numerically stable log-sum-exp
        return low - math.log(sum(share * math.exp(-self.softness * (y - low)) for share, y in terms)) / self.softness


def maximize_utility(utility: Utility, fits, lower: tuple[float, float, float], upper: tuple[float, float, float],
                     *, resolutions: list[float] | None = None, grid: int = 9, rounds: int = 8):
    """Largest U over (d, w, r) in the box with `fits(Coefficients)` true; returns (U, Coefficients) or None.

    Budgets grow with every dimension, so for each (d, w) on a log grid the best r is the largest
    that fits, found by bisection (over `resolutions` when given, else continuously); the (d, w)
    grid then zooms in around the best point `rounds` times. Dimensions with a_i = 0 stay at 1.
    """
    held = [not a for a in utility.weights]
    lo = [0.0 if h else math.log(v) for h, v in zip(held, lower)]
    hi = [0.0 if h else math.log(v) for h, v in zip(held, upper)]
    r_values = [1.0] if held[2] else (resolutions or None)

    def best_r(d: float, w: float) -> float | None:
        if r_values is not None:
            index_lo, index_hi = 0, len(r_values) - 1
            if not fits(Coefficients(d, w, r_values[0])):
                return None
            while index_lo < index_hi:
                mid = (index_lo + index_hi + 1) // 2
                if fits(Coefficients(d, w, r_values[mid])):
                    index_lo = mid
                else:
                    index_hi = mid - 1
            return r_values[index_lo]
        a, b = lo[2], hi[2]
        if not fits(Coefficients(d, w, math.exp(a))):
            return None
        if fits(Coefficients(d, w, math.exp(b))):
            return math.exp(b)
        while b - a > 1e-6:
            mid = (a + b) / 2
            a, b = (mid, b) if fits(Coefficients(d, w, math.exp(mid))) else (a, mid)
        return math.exp(a)

    best = None
    box = [(lo[0], hi[0]), (lo[1], hi[1])]
    for _ in range(rounds):
        axes = [[a + (b - a) * i / (grid - 1) for i in range(grid)] if b > a else [a] for a, b in box]
        for x_d in axes[0]:
            for x_w in axes[1]:
                d, w = math.exp(x_d), math.exp(x_w)
                r = best_r(d, w)
                if r is not None:
                    point = Coefficients(d, w, r)
                    value = utility(point)
                    if best is None or value > best[0]:
                        best = (value, point)
        if best is None:
            return None
        centre = (math.log(best[1].depth), math.log(best[1].width))
        box = [(max(lo[i], c - 1.5 * (b - a) / (grid - 1)), min(hi[i], c + 1.5 * (b - a) / (grid - 1)))
               for i, (c, (a, b)) in enumerate(zip(centre, box))]
    return best
