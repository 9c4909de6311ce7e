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

On the runtime you ship on
--------------------------
A runtime profile (`effscale profile --runtime openvino --precision int8`, runtime_profile.py)
plans for that runtime and precision with no change here: its predictors are fitted to the
runtime's own timings, and verification and anchoring build each timed model as it ships
(exported, parity-checked, quantized; ~10-30 s per model before timing). `export_dir` then ships
the chosen spec there (export/ship.py) and times the artifact itself.
"""
from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EffscaleError, check_writable_file
from ..scaling import ScalingRule
from ..spec import EFFICIENTNET_B0, NetworkSpec
from ..zoo import resolve_image_spec
from . import budgets
from .accuracy_curve import AccuracyCurve
from .candidates import Candidate, _Budgets, _describe, _free_candidates, _phi_candidates
from .thermal import ThermalModel, parse_sustained, thermal_model
from .utility import Utility

MAX_ATTEMPTS = 6


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
    runtime: str = "torch"  # what the latencies are for: the profile's runtime and precision
    precision: str = "fp32"
    export: dict | None = None  # plan(export_dir=...): the shipped artifact, its parity and measured latency

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
            "runtime": self.runtime, "precision": self.precision, "export": self.export,
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
         anchor: bool = True, export_dir: str | Path | None = None) -> PlanResult:
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
    `export_dir`: end by shipping the chosen spec to that artifact directory for the profile's runtime
    and precision (export/ship.py: exported, parity-checked, quantized for INT8, timed there); needs
    a runtime profile (`effscale profile --runtime ...`).
    """
    say = _progress_printer(progress)
    if spec_out is not None:
        check_writable_file(spec_out, "spec_out")  # before minutes of searching and measuring
    if export_dir is not None:
        _check_export(profile, export_dir)
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
    base = resolve_image_spec(base)  # a name, spec, spec file, weights file or built model
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
    shipped = None
    if export_dir is not None:
        from ..export.ship import ship_spec

        say(f"shipping {chosen.spec.name} to {export_dir} ({profile.runtime} {profile.precision}): export, parity, "
            "quantize, measure")
        shipped = ship_spec(chosen.spec, export_dir, runtime=profile.runtime, precision=profile.precision,
                            batch=batch, threads=profile.threads)
        shipped_fits = latency_ms is None or shipped["measured_ms"] <= latency_ms
        shipped = {"dir": str(export_dir), "runtime": profile.runtime, "precision": profile.precision,
                   "parity": shipped["manifest"]["parity"], "measured_ms": shipped["measured_ms"],
                   "fits": shipped_fits, "inference_precision": shipped["manifest"].get("inference_precision"),
                   "retrain": shipped["retrain"]}
        if not shipped_fits:
            notes.append(f"the shipped artifact took {shipped['measured_ms']:.3g} ms, over the "
                         f"{latency_ms:g} ms budget (verification timed the same build: the machine's speed moved?)")
        notes.append(f"{export_dir} holds random initial weights (the plan comes before training); after training "
                     f"ship the trained weights: {shipped['retrain']}")
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
        anchor=profile.anchor.to_dict() if getattr(profile, "anchor", None) is not None else None,
        runtime=getattr(profile, "runtime", "torch"), precision=getattr(profile, "precision", "fp32"),
        export=shipped)


def _check_export(profile, export_dir) -> None:
    """Before any searching: a runtime profile, the export extra, a usable directory."""
    from ..export.artifact import _check_out
    from ..export.runtimes import require_module

    runtime = getattr(profile, "runtime", "torch")
    if runtime == "torch":
        raise EffscaleError("export_dir (--export) ships the plan for the runtime it was profiled on, and this "
                            "profile times eager torch: profile the deploy runtime first (effscale profile --runtime "
                            "openvino --precision int8), or export a trained model with `effscale export`")
    require_module(runtime, "shipping the plan")
    if profile.precision == "int8":
        require_module("nncf" if runtime == "openvino" else "onnxruntime.quantization", "INT8 quantization")
    _check_out(export_dir)


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
