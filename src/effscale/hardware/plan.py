"""The planner: the model with the largest expected accuracy that fits every budget on a device.

`plan(profile, latency_ms=..., memory_mb=..., energy_mj=..., sustained=...)` searches one of
three candidate sets, screens them with the predictors (latency: the profile; memory, energy:
budgets.py; heat: thermal.py), then measures the winner on this machine and steps down until a
model truly fits.

Candidates and the objective
----------------------------
- Compound scaling (default): `compound(base, phi, rule)` on a phi grid (step 0.05) from the
  smallest legal phi upwards. Every dimension grows with phi, so bigger phi is a bigger model and,
  by compound scaling's premise, a more accurate one: the objective is phi.
- Free coefficients (`free_coefficients=True`): any (d, w, r), legalised by `scale()` (integer
  repeats by ceil, channels to multiples of 8, resolution to multiples of 8), ranked by the
  utility U below.
- Accuracy rows (`accuracy=`, a study's results.json rows): expected top-1 as a monotone
  (isotonic) function of log MACs fitted to the rows; the objective is that expected top-1.
  The curve is flat where rows pooled and outside the rows' range; among equal expectations
  the model nearest the rows' range wins (below it: the largest that fits), then the cheaper.

The utility U for free coefficients
-----------------------------------
The issue proposes U = a_d log d + a_w log w + a_r log r. Linear in x = (log d, log w, log r), it
has no interior optimum under a FLOPs budget, which is linear in x too (log F = x_d + 2 x_w + 2 x_r):
the Lagrange condition a = lambda * (1, 2, 2) either fails (the optimum runs to a corner of the
search box: with a = (log 1.2, 2 log 1.1, 2 log 1.15) all FLOPs go to depth, the largest a_i / c_i)
or holds everywhere (every point on the budget ties). So U keeps the a's but adds diminishing
returns. Let y_i = c_i x_i / a_i with c = (1, 2, 2): the "phi" each dimension alone has reached
(y_d = log d / log alpha when a_d = log alpha). U is the a-weighted soft minimum of the y_i:

    U = -(1/rho) * log( sum_i (a_i / A) * exp(-rho * y_i) ),   A = a_d + a_w + a_r

Maximising U on log F = L: at y_d = y_w = y_r = t the gradient is (a_i / A) * (c_i / a_i) = c_i / A,
parallel to the constraint's normal c, and U is concave (a negated log-sum-exp of linear
functions), so that point is the maximum: x_i = t * a_i / c_i, i.e. d = e^(t a_d),
w = e^(t a_w / 2), r = e^(t a_r / 2). It reproduces the rule alpha = e^(a_d), beta = e^(a_w / 2),
gamma = e^(a_r / 2) for every budget, scaling up or down, exactly when
a_d = log alpha, a_w = 2 log beta, a_r = 2 log gamma (the default, from `rule`); U equals phi there.
rho sets how much an unbalanced model loses: for small deviations U ~ mean_a(y) - rho/2 var_a(y),
and mean_a(y) = log F / A is pure FLOPs. Against the paper's Table 3 (B0 scaled to ~1.8 B MACs by
depth, width or resolution alone gains +1.9, +1.8, +2.0 points, 48 % of compound's +4.0), with the
gain read as 4.0 * U(single) / U(compound), the default rho = 0.3 predicts 56 % on average (RMS
error 0.44 points, resolution alone over-rated); the least-squares fit is rho = 0.388 (RMS 0.29).
`benchmarks/rho_fit.py` prints this. `tests/test_hardware_plan.py` checks the optimum numerically.

Verification
------------
With `verify=True` the chosen model is built with `prepare` and timed with `measure_latency`
(median of repeated calls after warm-up); with an energy budget and readable RAPL counters its
energy per call is measured too. If a measurement breaks a budget, the planner corrects its
predictions of that quantity by the worst measured/predicted ratio seen so far and moves to the
best candidate still predicted to fit, recording every attempt. When even the smallest candidate
fails, or the smallest already breaks a budget before any search, it raises EffscaleError with
its cost.

Before predicting, the profile is re-anchored (`anchor=True`, anchor.py): one or two of its own
networks are re-timed (a second or two) and the latency predictions scaled by measured /
profiled, so that a machine running faster or slower than when it was profiled is planned for as
it is now. The anchor is recorded in the result.
"""
from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..cost import cost
from ..errors import EffscaleError, check_writable_file
from ..scaling import Coefficients, ScalingRule, compound, scale
from ..spec import EFFICIENTNET_B0, MIN_RESOLUTION, NetworkSpec
from . import budgets
from .thermal import ThermalModel, parse_sustained, thermal_model

PHI_STEP = 0.05
PHI_MAX = 12.0  # a generous ceiling (B7 is phi ~ 6 from B0); budgets stop the walk long before
OVERSHOOT = 1.5  # stop walking up once a candidate costs this much over a budget
MAX_MULTIPLIER = 8.0  # free coefficients: the search box's upper end per dimension
DEFAULT_SOFTNESS = 0.3
MAX_ATTEMPTS = 6
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


# -- expected accuracy from a study's rows -----------------------------------------------------------
@dataclass(frozen=True)
class AccuracyCurve:
    """Expected top-1 vs MACs: isotonic (non-decreasing) in log MACs, linear between the fitted
    points, flat outside them (no extrapolation beyond the models the study measured)."""

    log_macs: tuple[float, ...]
    top1: tuple[float, ...]
    rows_used: int
    strategy: str

    @classmethod
    def fit(cls, rows) -> "AccuracyCurve":
        rows = _accuracy_rows(rows)
        compound_rows = [r for r in rows if r.get("strategy") == "compound"]
        strategy = "compound" if len({r["macs"] for r in compound_rows}) >= 2 else "all"
        used = compound_rows if strategy == "compound" else rows
        groups: dict[int, list[float]] = {}
        for row in used:  # seeds of the same model average into one point
            groups.setdefault(int(row["macs"]), []).append(float(row["top1"]))
        if len(groups) < 2:
            raise EffscaleError(f"accuracy rows need at least 2 models with different MACs; got {len(groups)}")
        # Pool-adjacent-violators: merge neighbours until the means never decrease.
        blocks = []  # [sum, count, first macs, last macs]
        for macs in sorted(groups):
            blocks.append([sum(groups[macs]), len(groups[macs]), macs, macs])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                total, count, _, last = blocks.pop()
                blocks[-1][0] += total
                blocks[-1][1] += count
                blocks[-1][3] = last
        xs, ys = [], []
        for total, count, first, last in blocks:  # a pooled block is flat from its first to last model
            for macs in sorted({first, last}):
                xs.append(math.log(macs))
                ys.append(total / count)
        return cls(tuple(xs), tuple(ys), len(used), strategy)

    def __call__(self, macs: float) -> float:
        x = math.log(macs)
        if x <= self.log_macs[0]:
            return self.top1[0]
        if x >= self.log_macs[-1]:
            return self.top1[-1]
        for (x0, y0), (x1, y1) in zip(zip(self.log_macs, self.top1), zip(self.log_macs[1:], self.top1[1:])):
            if x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1

    def extrapolated(self, macs: float) -> bool:
        return self.outside(macs) > 0

    def outside(self, macs: float) -> float:
        """How far (in log MACs) `macs` lies outside the range of the rows; 0 inside it."""
        x = math.log(macs)
        return max(0.0, self.log_macs[0] - x, x - self.log_macs[-1])

    def to_dict(self) -> dict:
        return {"macs": [round(math.exp(x)) for x in self.log_macs], "top1": list(self.top1),
                "rows_used": self.rows_used, "strategy": self.strategy}


def _accuracy_rows(rows) -> list[dict]:
    """Rows from a list, a {"rows": [...]} / {"results": [...]} object, or a JSON file of either."""
    source = "accuracy rows"
    if isinstance(rows, (str, Path)):
        source = str(rows)
        try:
            rows = json.loads(Path(rows).read_text())
        except FileNotFoundError:
            raise EffscaleError(f"accuracy file {source} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise EffscaleError(f"cannot read accuracy rows from {source}: {error}") from None
    if isinstance(rows, dict):
        rows = rows.get("rows", rows.get("results"))
    if not isinstance(rows, list) or not rows:
        raise EffscaleError(f"{source}: expected a non-empty list of rows (strategy, target, macs, params, top1, "
                            "seed, latency_ms), or an object with one under 'rows' or 'results'")
    for index, row in enumerate(rows):
        ok = isinstance(row, dict) and all(
            isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
            and math.isfinite(row[key]) for key in ("macs", "top1"))
        if not ok or row["macs"] <= 0:
            raise EffscaleError(f"{source}: row {index} needs numeric 'macs' (> 0) and 'top1'; got {row!r:.120}")
    return rows


# -- evaluating candidates against the budgets -------------------------------------------------------
@dataclass
class Candidate:
    """A legal spec with its predicted costs and its place in the ranking (higher key is better)."""

    spec: NetworkSpec
    coefficients: dict
    key: tuple = ()
    macs: int = 0
    params: int = 0
    memory: budgets.MemoryEstimate | None = None
    energy: budgets.EnergyEstimate | None = None
    predicted_ms: float | None = None
    expected_top1: float | None = None


@dataclass
class _Budgets:
    profile: object
    latency_ms: float | None
    memory_mb: float | None
    energy_mj: float | None
    sustained: ThermalModel | None
    batch: int
    method: str | None
    cache: dict = field(default_factory=dict)

    def evaluate(self, spec: NetworkSpec, coefficients: dict) -> Candidate:
        """Costs of `spec`, cached by structure (many coefficients round to the same legal spec)."""
        key = spec.replace(name="_").to_text()
        if key not in self.cache:
            precision = budgets._precision(self.profile, None)
            analytic = cost(spec, batch=self.batch, dtype=budgets.PRECISION_DTYPE[precision])
            self.cache[key] = Candidate(
                spec=spec, coefficients=coefficients, macs=analytic.macs, params=analytic.params,
                memory=budgets.memory_from_cost(analytic, channels_last=bool(self.profile.channels_last)),
                energy=budgets.energy_from_cost(analytic))
        return self.cache[key]

    def predicted(self, candidate: Candidate) -> float:
        if candidate.predicted_ms is None:
            candidate.predicted_ms = float(self.profile.predict_latency(candidate.spec, batch=self.batch,
                                                                        method=self.method))
        return candidate.predicted_ms

    def measured_energy(self, candidate: Candidate) -> budgets.EnergyEstimate | None:
        """Energy per call measured by RAPL, when there is an energy budget and the counters are readable."""
        if self.energy_mj is None:
            return None
        energy = budgets.energy_per_inference(candidate.spec, self.profile, batch=self.batch)
        return energy if energy.method == "rapl" else None

    def over(self, candidate: Candidate, latency_ms: float | None = None, scale_latency: float = 1.0,
             energy: budgets.EnergyEstimate | None = None, scale_energy: float = 1.0) -> list[tuple]:
        """(ratio over budget, message) for each broken budget; latency and energy are predicted
        (times `scale_*`, the measured/predicted ratios so far) unless measured values are given."""
        broken = []
        if self.memory_mb is not None and candidate.memory.total_mb > self.memory_mb:
            broken.append((candidate.memory.total_mb / self.memory_mb,
                           f"needs {candidate.memory.total_mb:.1f} MB at its peak (predicted: weights + eager "
                           f"activations + runtime); the budget is {self.memory_mb:g} MB"))
        mj = energy.total_mj if energy is not None else candidate.energy.total_mj * scale_energy
        if self.energy_mj is not None and mj > self.energy_mj:
            how = energy.method if energy is not None else candidate.energy.method if scale_energy == 1 else \
                f"{candidate.energy.method} x {scale_energy:.2f}, the measured/predicted ratio so far"
            broken.append((mj / self.energy_mj, f"uses {mj:.3g} mJ per inference ({how}); "
                                                f"the budget is {self.energy_mj:g} mJ"))
        if self.latency_ms is not None:
            measured = latency_ms is not None
            ms = latency_ms if measured else self.predicted(candidate) * scale_latency
            how = "measured" if measured else "predicted" if scale_latency == 1 else \
                f"predicted x {scale_latency:.2f}, the measured/predicted ratio so far"
            if self.sustained is not None:
                run = self.sustained.sustained(ms)
                if run["final_ms"] > self.latency_ms:
                    broken.append((run["final_ms"] / self.latency_ms,
                                   f"takes {run['final_ms']:.3g} ms after {run['duration_s']:g} s of continuous "
                                   f"inference ({self.sustained.name} thermal model; {ms:.3g} ms cool, {how}); "
                                   f"the budget is {self.latency_ms:g} ms"))
            elif ms > self.latency_ms:
                broken.append((ms / self.latency_ms, f"takes {ms:.3g} ms here ({how}, batch {self.batch}); "
                                                     f"the budget is {self.latency_ms:g} ms"))
        return broken


def _describe(spec: NetworkSpec, macs: int) -> str:
    return f"{spec.name}: {spec.resolution} px, {macs / 1e6:.1f} M MACs"


# -- candidate sets -----------------------------------------------------------------------------------
def _legal(make) -> NetworkSpec | None:
    try:
        return make()
    except EffscaleError:
        return None


def smallest_phi(base: NetworkSpec, rule: ScalingRule) -> float:
    """The smallest phi (to 1e-3) at which compound scaling still gives a legal spec."""
    if rule.flops_base <= 1:
        return 0.0
    lo, hi = -60.0, 0.0
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _legal(lambda: compound(base, mid, rule)) else (mid, hi)
    return hi


def _phi_candidates(base, rule, checker, objective) -> list[Candidate]:
    """Walk phi up the grid from the smallest legal value until a budget is far exceeded."""
    first = math.ceil(smallest_phi(base, rule) / PHI_STEP - 1e-9)
    found, seen = [], set()
    for step in range(first, int(PHI_MAX / PHI_STEP) + 1):
        phi = round(step * PHI_STEP, 10)
        spec = _legal(lambda: compound(base, phi, rule))
        if spec is None:
            continue
        coefficients = rule.at(phi)
        candidate = checker.evaluate(spec, {"phi": phi, "depth": coefficients.depth, "width": coefficients.width,
                                            "resolution": coefficients.resolution})
        if id(candidate) in seen:
            continue  # phi moved too little to change the rounded spec
        seen.add(id(candidate))
        candidate.key = objective(candidate, phi)
        found.append(candidate)
        broken = checker.over(candidate)
        if len(found) == 1 and broken:
            _infeasible(candidate, broken)
        if broken and max(ratio for ratio, _ in broken) > OVERSHOOT:
            break
    return found


def _free_candidates(base, utility, checker, objective) -> list[Candidate]:
    lower = (1 / max(s.repeats for s in base.stages) if any(s.scale_depth for s in base.stages) else 1.0,
             1.0001 / min(s.out_channels for s in base.stages), MIN_RESOLUTION / base.resolution)
    upper = (MAX_MULTIPLIER,) * 3
    resolutions = [r / base.resolution for r in range(MIN_RESOLUTION, int(base.resolution * MAX_MULTIPLIER) + 1, 8)]

    def legal_name(c: Coefficients) -> str:
        return f"{base.name}-d{c.depth:.3g}-w{c.width:.3g}-r{c.resolution:.3g}"

    def legal(c: Coefficients) -> NetworkSpec:
        return scale(base, c, name=legal_name(c))

    def candidate(c: Coefficients) -> Candidate:
        found = checker.evaluate(legal(c), {"depth": c.depth, "width": c.width, "resolution": c.resolution,
                                            "utility": utility(c)})
        key = objective(found, utility(c))
        if key > found.key:  # several coefficients share a legal spec: name it by the best of them
            found.key, found.coefficients = key, {"depth": c.depth, "width": c.width,
                                                  "resolution": c.resolution, "utility": utility(c)}
            found.spec = found.spec.replace(name=legal_name(c))
        return found

    smallest = candidate(Coefficients(*[1.0 if not a else b for a, b in zip(utility.weights, lower)]))
    broken = checker.over(smallest)
    if broken:
        _infeasible(smallest, broken)
    feasible = {}

    def fits(c: Coefficients) -> bool:
        found = candidate(c)
        ok = not checker.over(found)
        if ok:
            feasible[id(found)] = found
        return ok

    maximize_utility(utility, fits, lower, upper, resolutions=resolutions)
    return list(feasible.values()) or [smallest]


def _infeasible(smallest: Candidate, broken: list[tuple]) -> None:
    raise EffscaleError(f"no model meets the budget: the smallest model ({_describe(smallest.spec, smallest.macs)}) "
                        + "; and ".join(message for _, message in broken))


# -- the result -----------------------------------------------------------------------------------------
@dataclass
class PlanResult:
    spec: NetworkSpec
    mode: str  # "compound", "free" (+ "accuracy")
    coefficients: dict
    macs: int
    params: int
    predicted_ms: float
    measured_ms: float | None
    fits: bool | None  # None: not verified
    memory: budgets.MemoryEstimate
    energy: budgets.EnergyEstimate
    sustained: dict | None
    expected_top1: float | None
    budgets: dict
    attempts: list[dict]
    train_command: str
    notes: list[str] = field(default_factory=list)
    accuracy_curve: dict | None = None
    carbon: dict | None = None
    anchor: dict | None = None  # anchor.Anchor.to_dict() of the re-anchored profile, None when not anchored

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict:
        return {
            "name": self.name, "spec": self.spec.to_text(), "mode": self.mode, "coefficients": self.coefficients,
            "resolution": self.spec.resolution, "macs": self.macs, "params": self.params,
            "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms, "fits": self.fits,
            "memory_mb": self.memory.total_mb, "memory": self.memory.to_dict(),
            "energy_mj": self.energy.total_mj, "energy_method": self.energy.method, "energy": self.energy.to_dict(),
            "sustained": self.sustained, "expected_top1": self.expected_top1, "budgets": self.budgets,
            "attempts": self.attempts, "train_command": self.train_command, "notes": self.notes,
            "accuracy_curve": self.accuracy_curve, "carbon": self.carbon, "anchor": self.anchor,
        }


def _train_command(spec: NetworkSpec, base: NetworkSpec, rule: ScalingRule, phi: float | None,
                   spec_out: str | None, data: str) -> tuple[str, list[str]]:
    from ..zoo import get_spec, list_models

    notes = []
    if phi is not None and rule == ScalingRule() and base.name in list_models() and get_spec(base.name) == base:
        model = f"--model {base.name} --phi {phi:g}"
    else:  # a custom base, rule or free coefficients: `train --phi` cannot rebuild it, the spec file can
        model = f"--model {shlex.quote(str(spec_out)) if spec_out else 'SPEC_FILE'}"
        if not spec_out:
            notes.append("save the planned spec text to SPEC_FILE (or pass spec_out / --spec-out) before training")
    return f"effscale train {model} --data {shlex.quote(data)} --out {shlex.quote('runs/' + spec.name)}", notes


def _check_budget(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise EffscaleError(f"{name}={value!r} must be a finite number > 0")
    return float(value)


def _progress_printer(progress):
    if callable(progress):
        return progress
    if progress:
        return lambda message: print(f"plan: {message}", file=sys.stderr, flush=True)
    return lambda message: None


def plan(profile, *, latency_ms: float | None = None, memory_mb: float | None = None,
         energy_mj: float | None = None, sustained: str | ThermalModel | None = None, batch: int = 1,
         free_coefficients: bool = False, accuracy=None, base: NetworkSpec = EFFICIENTNET_B0,
         rule: ScalingRule | None = None, utility: Utility | None = None, verify: bool = True,
         method: str | None = None, spec_out: str | Path | None = None, train_data: str = "fashion-mnist",
         carbon: dict | None = None, max_attempts: int = MAX_ATTEMPTS, progress=False,
         anchor: bool = True) -> PlanResult:
    """The model with the largest expected accuracy under every given budget (module docstring).

    Budgets: `latency_ms` per call on `batch` images (with `sustained`, a thermal preset name,
    'PRESET,key=value' text or a ThermalModel: the latency after its duration of continuous
    inference), `memory_mb` (peak, SI MB), `energy_mj` (per call). At least one is required.
    `accuracy`: a study's results.json rows (or its path) to plan by expected top-1.
    `spec_out`: write the chosen spec's text there (the train command then uses it).
    `carbon`: keyword arguments of `budgets.training_carbon` (samples=, epochs=, ...) to add the
    training run's carbon to the result. `progress`: True (messages on stderr) or a callable.
    `anchor`: re-time one or two of the profile's networks first and predict at today's level
    (module docstring; skipped when there is no latency budget or the profile is already anchored).
    """
    say = _progress_printer(progress)
    if spec_out is not None:
        check_writable_file(spec_out, "spec_out")  # before minutes of searching and measuring
    latency_ms = _check_budget("latency_ms", latency_ms)
    memory_mb = _check_budget("memory_mb", memory_mb)
    energy_mj = _check_budget("energy_mj", energy_mj)
    if latency_ms is None and memory_mb is None and energy_mj is None:
        raise EffscaleError("plan needs a budget: latency_ms, memory_mb or energy_mj "
                            "(--latency-ms, --memory-mb, --energy-mj)")
    if sustained is not None:
        if latency_ms is None:
            raise EffscaleError("sustained needs latency_ms: the budget the throttled latency must meet")
        sustained = sustained if isinstance(sustained, ThermalModel) else \
            parse_sustained(sustained) if isinstance(sustained, str) else thermal_model(sustained)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EffscaleError(f"batch={batch!r} must be an integer >= 1")
    from ..model import resolve_spec

    base = resolve_spec(base)  # a name, spec, spec file or weights file; TypeError for anything else
    rule = rule or ScalingRule()
    utility = utility or Utility.from_rule(rule)
    curve = AccuracyCurve.fit(accuracy) if accuracy is not None else None
    anchor_notes = []
    # Any object with predict_latency plans; one without reanchor (a custom predictor) is used as it is.
    if latency_ms is not None and anchor and getattr(profile, "anchor", None) is None and \
            hasattr(profile, "reanchor"):
        say("re-anchoring the profile: timing its own networks now")
        profile = profile.reanchor()
    if getattr(profile, "anchor", None) is not None:
        say(profile.anchor.describe())
        if not 1 / 1.3 <= profile.anchor.factor <= 1.3:
            anchor_notes.append(f"this machine runs {profile.anchor.factor:.2f}x the profiled time now: the plan is "
                                "for the machine as it is now (is something else running? --no-anchor plans for "
                                "the profiled machine)")
        if profile.anchor.disagreement > 0.10:
            anchor_notes.append(f"the anchor networks drifted differently ({profile.anchor.describe()}): the machine's "
                                "speed is changing; predictions are less certain")
    elif latency_ms is not None:
        anchor_notes.append(f"latency predicted at the profile's level of "
                            f"{getattr(profile, 'created', '') or 'its measurement'} (not re-anchored)")
    checker = _Budgets(profile, latency_ms, memory_mb, energy_mj, sustained, batch, method)

    def objective(candidate: Candidate, score: float) -> tuple:
        if curve is None:
            return (score,)
        # Equal expected top-1 (the curve is flat where rows pooled and outside their range): prefer
        # the model the rows say most about (nearest their range), then the cheaper one.
        candidate.expected_top1 = curve(candidate.macs)
        return (round(candidate.expected_top1, 6), -round(curve.outside(candidate.macs), 9), -candidate.macs, score)

    say(f"searching {'free coefficients' if free_coefficients else 'phi'} from {base.name} ({base.resolution} px)")
    if free_coefficients:
        ranked = _free_candidates(base, utility, checker, objective)
    else:
        ranked = [c for c in _phi_candidates(base, rule, checker, objective) if not checker.over(c)]
    if not ranked:  # only reachable when rounding makes costs non-monotone right at the start
        raise EffscaleError("no candidate fits the budgets")
    ranked.sort(key=lambda c: c.key, reverse=True)
    smallest = min(ranked, key=lambda c: (c.macs, c.spec.resolution))
    say(f"{len(checker.cache)} specs evaluated, {len(ranked)} fit as predicted; best: {ranked[0].spec.name}")

    chosen, measured_ms, fits, attempts, notes = ranked[0], None, None, [], list(anchor_notes)
    energy = chosen.energy
    if verify:
        chosen, measured_ms, fits, attempts, verify_notes, measured_energy = _verify(
            ranked, smallest, checker, max_attempts, say)
        notes += verify_notes
        energy = measured_energy or chosen.energy  # measured where the RAPL counters are readable
        if fits and latency_ms is not None and measured_ms < 0.7 * checker.predicted(chosen):
            notes.append(f"measured {measured_ms:.3g} ms is {1 - measured_ms / checker.predicted(chosen):.0%} "
                         "below the prediction: a bigger model may fit (is the profile from this machine?)")
        unmeasured = ["memory"] if memory_mb is not None else []
        if energy_mj is not None and energy.method == "analytic":
            unmeasured.append("energy")
        if unmeasured:
            notes.append(f"{' and '.join(unmeasured)} {'is' if len(unmeasured) == 1 else 'are'} predicted, "
                         "not measured (benchmarks/memory.py checks the memory model)")
    phi = chosen.coefficients.get("phi")
    command, command_notes = _train_command(chosen.spec, base, rule, phi, spec_out, train_data)
    if spec_out:
        try:
            Path(spec_out).write_text(chosen.spec.to_text() + "\n")
        except OSError as error:
            raise EffscaleError(f"cannot write the spec to {spec_out}: {error.strerror or error}") from None
    if curve is not None and curve.extrapolated(chosen.macs):
        notes.append("expected top-1 is outside the MACs range the accuracy rows cover (held flat there)")
    latency_for_heat = measured_ms if measured_ms is not None else checker.predicted(chosen)
    return PlanResult(
        spec=chosen.spec, mode=("free" if free_coefficients else "compound") + ("+accuracy" if curve else ""),
        coefficients=chosen.coefficients, macs=chosen.macs, params=chosen.params,
        predicted_ms=checker.predicted(chosen), measured_ms=measured_ms, fits=fits, memory=chosen.memory,
        energy=energy, sustained=sustained.sustained(latency_for_heat) if sustained else None,
        expected_top1=chosen.expected_top1,
        budgets={"latency_ms": latency_ms, "memory_mb": memory_mb, "energy_mj": energy_mj,
                 "sustained": sustained.name if sustained else None, "batch": batch},
        attempts=attempts, train_command=command, notes=notes + command_notes,
        accuracy_curve=curve.to_dict() if curve else None,
        carbon=budgets.training_carbon(chosen.spec, profile, **carbon) if carbon else None,
        anchor=profile.anchor.to_dict() if getattr(profile, "anchor", None) is not None else None)


def _verify(ranked: list[Candidate], smallest: Candidate, checker: _Budgets, max_attempts: int, say):
    """Measure the best candidate (latency; energy too where RAPL is readable); on a miss, step down
    using the worst measured/predicted ratio of each measured quantity.

    Returns (candidate, measured ms, fits, attempts, notes, measured energy or None)."""
    from .runtime import measure_latency

    scale_ms = scale_mj = 1.0
    attempts, notes, tried, candidate, energy = [], [], set(), ranked[0], None
    for _ in range(max_attempts):
        pending = [c for c in ranked if id(c) not in tried]
        candidate = next((c for c in pending if not checker.over(c, scale_latency=scale_ms, scale_energy=scale_mj)),
                         None)
        if candidate is None:
            if id(smallest) in tried:
                break
            candidate = smallest  # nothing else is predicted to fit: the smallest is the last resort
        tried.add(id(candidate))
        say(f"measuring {candidate.spec.name} (predicted {checker.predicted(candidate):.3g} ms)")
        measured = measure_latency(candidate.spec, checker.profile, batch=checker.batch).median_ms
        energy = checker.measured_energy(candidate)
        broken = checker.over(candidate, latency_ms=measured, energy=energy)
        attempts.append({"name": candidate.spec.name, "macs": candidate.macs, "resolution": candidate.spec.resolution,
                         "predicted_ms": checker.predicted(candidate), "measured_ms": measured,
                         "energy_mj": energy.total_mj if energy else None,
                         "energy_method": energy.method if energy else None,
                         "fits": not broken, "reason": "; ".join(m for _, m in broken) or None})
        if not broken:
            if len(attempts) > 1:
                notes.append(f"stepped down {len(attempts) - 1} time(s): the first choice did not fit when measured")
            return candidate, measured, True, attempts, notes, energy
        say(f"{candidate.spec.name} {broken[0][1]}: stepping down")
        scale_ms = max(scale_ms, measured / checker.predicted(candidate))
        if energy is not None:
            scale_mj = max(scale_mj, energy.total_mj / candidate.energy.total_mj)
        if candidate is smallest:
            raise EffscaleError(f"no model meets the budget when measured: the smallest model "
                                f"({_describe(smallest.spec, smallest.macs)}) {broken[0][1]}")
    notes.append(f"no candidate fitted when measured within {max_attempts} attempts; this is the last one tried")
    return candidate, attempts[-1]["measured_ms"] if attempts else None, False, attempts, notes, energy
