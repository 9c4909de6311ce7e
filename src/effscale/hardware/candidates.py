"""The planner's candidates: a scaled spec with its predicted costs, checked against the budgets
(latency, memory, energy, thermal), along the phi line or in the free-coefficient box."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..cost import cost
from ..errors import EffscaleError
from ..scaling import Coefficients, ScalingRule, compound, scale
from ..spec import MIN_RESOLUTION, NetworkSpec
from . import budgets
from .thermal import ThermalModel
from .utility import maximize_utility

PHI_STEP = 0.05
PHI_MAX = 12.0  # a generous ceiling (B7 is phi ~ 6 from B0); budgets stop the walk long before
OVERSHOOT = 1.5  # stop walking up once a candidate costs this much over a budget
MAX_MULTIPLIER = 8.0  # free coefficients: the search box's upper end per dimension



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
