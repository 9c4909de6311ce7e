"""How well the planner's utility U fits the paper's Table 3, for several softnesses rho.

`effscale.hardware.utility.Utility` (the objective of `plan(..., free_coefficients=True)`) ranks
(d, w, r) by U, the a-weighted soft minimum of each dimension's own phi, with a softness rho
(`DEFAULT_SOFTNESS`). U equals phi on the rule's ray, so read as "top-1 gain is proportional to
U", U predicts what fraction of compound scaling's gain a single-dimension model of about the
same MACs keeps: gain_i = gain_compound * U(single_i) / U(compound). This script compares that
prediction with the paper's Table 3 for EfficientNet-B0 at ~1.8 B MACs, for a few values of rho
and for the least-squares best rho (a grid over 0.01..5), and prints the errors in top-1 points.

Data (constants below): Tan & Le, "EfficientNet", ICML 2019, arXiv 1905.11946v5, Table 3
(scaling B0 by one dimension vs compound): baseline
0.39 B MACs 77.1 %; depth d=4 1.8 B 79.0 %; width w=2 1.8 B 78.9 %; resolution r=2 1.9 B 79.1 %;
compound 1.8 B 81.1 %. The compound model's multipliers (d=1.4, w=1.2, r=300/224) are B3's
(1.8 B MACs, Table 2), the paper's "d=1.4, w=1.2, r=1.3". The rule is
EfficientNet's alpha=1.2, beta=1.1, gamma=1.15 (`ScalingRule()`).

Run (from the repository root; a second or two, no model is built):
    .venv/bin/python benchmarks/rho_fit.py
"""
from __future__ import annotations

import math

from effscale.hardware.utility import DEFAULT_SOFTNESS, Utility
from effscale.scaling import Coefficients, ScalingRule

BASELINE_TOP1 = 77.1  # B0, 0.39 B MACs
COMPOUND = ("compound (d=1.4, w=1.2, r=300/224)", Coefficients(depth=1.4, width=1.2, resolution=300 / 224), 81.1)
SINGLE = [  # (label, multipliers, top-1)
    ("depth only (d=4)", Coefficients(depth=4.0), 79.0),
    ("width only (w=2)", Coefficients(width=2.0), 78.9),
    ("resolution only (r=2)", Coefficients(resolution=2.0), 79.1),
]
SHOWN = (0.1, 0.2, 0.3, 0.5, 1.0)


def predicted_gains(rho: float) -> list[float]:
    """Top-1 gain over B0 that U with softness rho predicts for each single-dimension row."""
    utility = Utility.from_rule(ScalingRule(), softness=rho)
    compound_gain = COMPOUND[2] - BASELINE_TOP1
    return [compound_gain * utility(c) / utility(COMPOUND[1]) for _, c, _ in SINGLE]


def rms_error(rho: float) -> float:
    errors = [p - (top1 - BASELINE_TOP1) for p, (_, _, top1) in zip(predicted_gains(rho), SINGLE)]
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def main() -> None:
    grid = [i / 1000 for i in range(10, 5001)]
    best = min(grid, key=rms_error)
    compound_gain = COMPOUND[2] - BASELINE_TOP1
    print(f"EfficientNet-B0, Table 3: compound scaling gains {compound_gain:+.1f} points "
          f"({BASELINE_TOP1} -> {COMPOUND[2]} %); prediction = {compound_gain:.1f} x U(single) / U(compound)")
    columns = sorted(set(SHOWN) | {best, DEFAULT_SOFTNESS})
    header = f"{'top-1 gain over B0':<24}{'Table 3':>9}" + "".join(f"{'rho=' + format(r, 'g'):>11}" for r in columns)
    print(header)
    rows = {rho: predicted_gains(rho) for rho in columns}
    for index, (label, _, top1) in enumerate(SINGLE):
        actual = top1 - BASELINE_TOP1
        print(f"{label:<24}{actual:>+9.2f}" + "".join(f"{rows[r][index]:>+11.2f}" for r in columns))
    print(f"{'RMS error (points)':<24}{'':>9}" + "".join(f"{rms_error(r):>11.2f}" for r in columns))
    mean_actual = sum(top1 - BASELINE_TOP1 for _, _, top1 in SINGLE) / len(SINGLE) / compound_gain
    print(f"Table 3: single-dimension scaling keeps {mean_actual:.0%} of compound's gain on average")
    for rho in (DEFAULT_SOFTNESS, best):
        kept = sum(rows[rho]) / len(rows[rho]) / compound_gain
        print(f"rho={rho:g}{' (default)' if rho == DEFAULT_SOFTNESS else ' (least-squares best)'}: "
              f"predicted {kept:.0%} on average, RMS error {rms_error(rho):.2f} points")


if __name__ == "__main__":
    main()
