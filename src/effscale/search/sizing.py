"""Sizing the demo to the machine it runs on, so that it keeps its stated time anywhere.

The same demo took 98 s (`--quick`) on a 2-core AVX-512 machine and 470 s on a 2-core AVX2-only
one. So before any real work the demo times a few proxy training steps of its base model and of
one ~4x-MACs model per scaling dimension (seconds), models the time of every training it will
run, and scales down what it must to fit the time budget: first the proxy steps (down to
`MIN_STEPS`), then the largest MACs target. It says what it scaled down; nothing is scaled up
beyond the defaults.

Time of one proxy run of a model that `strategy` scaled to r x the base's MACs:
    steps * t_s(r) + (bn_samples + evaluated samples) / batch * t_s(r) * FORWARD_SHARE
where t_s(r) is a training step, linear in r through the base's step and the probe of that
dimension (a floor of half the base's step keeps it positive), and a forward-only batch costs
FORWARD_SHARE of a training step (forward + backward + optimizer ~ 3 forwards). One probe per
dimension because time per MAC differs between them: on a 2-core AVX2 machine a depth-scaled
model took 2.2x as long per step as a width-scaled one of about the same MACs (more, smaller layers), and a
single width probe underestimated a whole demo by 18 %. Compound scaling and the coefficient
search's candidates mix the dimensions: they take the mean of the three slopes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ..errors import EffscaleError
from ..families import family_of

MIN_STEPS = 15  # fewer steps than this train nothing worth comparing
FORWARD_SHARE = 1 / 3
SAFETY = 1.15  # latency timing, reports, Python between runs
TIMED_STEPS = 4  # one warm-up step, then the median of three


# The probes: each dimension alone, at about 4x the base's MACs.
PROBES = {"depth": {"depth": 4.0}, "width": {"width": 2.0}, "resolution": {"resolution": 2.0}}


@dataclass(frozen=True)
class Sizing:
    budget: str  # the proxy budget to use ('quick' or 'quick@40')
    targets: tuple
    estimated_s: float
    step_s: dict  # a training step (s) of "base" and of each dimension's probe
    notes: tuple[str, ...]
    seconds: float  # what the sizing itself took

    def to_dict(self) -> dict:
        return {"budget": self.budget, "targets": list(self.targets), "estimated_s": round(self.estimated_s, 1),
                "step_s": {k: round(v, 4) for k, v in self.step_s.items()}, "notes": list(self.notes),
                "seconds": round(self.seconds, 1)}


def _step_seconds(spec, task, budget) -> float:
    """Median seconds of a training step of `spec` at `budget`'s batch, the first (warm-up) left out."""
    import statistics

    from .proxy import train_proxy

    steps: list[float] = []
    timed = replace(budget, steps=TIMED_STEPS, bn_samples=budget.batch_size, eval_samples=budget.batch_size)
    train_proxy(spec, task, timed, seed=0, step_seconds=steps)
    return statistics.median(steps[1:])


def estimate_seconds(steps: int, runs: list[tuple[str, float]], step_at, budget, evaluated: int) -> float:
    """Modelled wall time of proxy runs, each (strategy, MACs ratio) (module docstring)."""
    forward_batches = (budget.bn_samples + evaluated) / budget.batch_size
    return SAFETY * sum((steps + forward_batches * FORWARD_SHARE) * step_at(strategy, ratio)
                        for strategy, ratio in runs)


def planned_runs(search_points: int, targets, seeds: int, extra: int = 0) -> list[tuple[str, float]]:
    """(strategy, MACs ratio) of every proxy training: the search (target 2, mixed dimensions),
    the study's base and four strategies per target and seed, plus `extra` base-sized runs."""
    from .strategies import STRATEGIES

    return ([("compound", 2.0)] * search_points + [("base", 1.0)] * (seeds + extra)
            + [(strategy, float(t)) for t in targets for strategy in STRATEGIES for _ in range(seeds)])


def size_demo(base, task, *, budget_name: str, targets: tuple, seeds: int, search_points: int,
              time_budget_s: float, extra_runs: int = 0) -> Sizing:
    """The proxy budget and targets that fit `time_budget_s` on this machine (module docstring)."""
    from ..scaling import Coefficients, scale_any
    from .proxy import get_budget

    if not time_budget_s > 0:
        raise EffscaleError(f"time budget {time_budget_s!r} s must be > 0")
    started = time.perf_counter()
    budget = get_budget(budget_name)

    def macs(spec) -> float:
        return family_of(spec).cost(spec, num_classes=task.num_classes, in_chans=task.in_chans).macs

    base_step = _step_seconds(base, task, budget)
    slopes, step_s = {}, {"base": base_step}
    for dimension, multipliers in PROBES.items():
        probe = scale_any(base, Coefficients(**multipliers))
        step_s[dimension] = _step_seconds(probe, task, budget)
        slopes[dimension] = (step_s[dimension] - base_step) / max(macs(probe) / macs(base) - 1, 1e-9)
    mixed = sum(slopes.values()) / len(slopes)

    def step_at(strategy: str, r: float) -> float:
        return max(base_step + slopes.get(strategy, mixed) * (r - 1), 0.5 * base_step)

    evaluated = max(len(task.test[0]), len(task.minival[0])) if budget.eval_samples is None else budget.eval_samples
    notes, chosen_targets = [], tuple(targets)
    while True:
        runs = planned_runs(search_points, chosen_targets, seeds, extra_runs)
        steps = budget.steps
        while steps > MIN_STEPS and estimate_seconds(steps, runs, step_at, budget, evaluated) > time_budget_s:
            steps = max(MIN_STEPS, int(steps * 0.9))
        fits = estimate_seconds(steps, runs, step_at, budget, evaluated) <= time_budget_s
        if fits or len(chosen_targets) == 1:
            break
        chosen_targets = chosen_targets[:-1]
    if chosen_targets != tuple(targets):
        notes.append(f"targets {','.join(f'{t:g}' for t in targets)} -> {','.join(f'{t:g}' for t in chosen_targets)}")
    if steps != budget.steps:
        notes.append(f"proxy steps {budget.steps} -> {steps}")
    estimated = estimate_seconds(steps, planned_runs(search_points, chosen_targets, seeds, extra_runs), step_at,
                                 budget, evaluated)
    if not fits:
        notes.append(f"even so it is estimated at {estimated:.0f} s, over the {time_budget_s:g} s budget")
    name = budget.name if steps == budget.steps else f"{budget.name}@{steps}"
    return Sizing(budget=name, targets=chosen_targets, estimated_s=estimated, step_s=step_s, notes=tuple(notes),
                  seconds=time.perf_counter() - started)
