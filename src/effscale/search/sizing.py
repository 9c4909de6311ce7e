"""Sizing the demo to the machine it runs on, so that it keeps its stated time anywhere.

The same demo took 98 s (`--quick`) on a 2-core AVX-512 machine and 470 s on a 2-core AVX2-only
one. So before any real work the demo times a few proxy training steps of its base model and
of a 4x-MACs model (seconds), models the time of every training it will run, and scales down
what it must to fit the time budget: first the proxy steps (down to `MIN_STEPS`), then the
largest MACs target. It says what it scaled down; nothing is scaled up beyond the defaults.

Time of one proxy run of a model with r x the base's MACs:
    steps * t(r) + (bn_samples + evaluated samples) / batch * t(r) * FORWARD_SHARE
where t(r) is a training step, interpolated linearly in r between the two timed models
(a floor of half the base's step keeps it positive), and a forward-only batch costs
FORWARD_SHARE of a training step (forward + backward + optimizer ~ 3 forwards).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ..errors import EffscaleError

MIN_STEPS = 15  # fewer steps than this train nothing worth comparing
FORWARD_SHARE = 1 / 3
SAFETY = 1.15  # latency timing, reports, Python between runs
TIMED_STEPS = 4  # one warm-up step, then the median of three


@dataclass(frozen=True)
class Sizing:
    budget: str  # the proxy budget to use ('quick' or 'quick@40')
    targets: tuple
    estimated_s: float
    step_s: tuple[float, float]  # a training step of the base, of the 4x model
    notes: tuple[str, ...]
    seconds: float  # what the sizing itself took

    def to_dict(self) -> dict:
        return {"budget": self.budget, "targets": list(self.targets), "estimated_s": round(self.estimated_s, 1),
                "step_s": [round(s, 4) for s in self.step_s], "notes": list(self.notes),
                "seconds": round(self.seconds, 1)}


def _step_seconds(spec, task, budget) -> float:
    """Median seconds of a training step of `spec` at `budget`'s batch, the first (warm-up) left out."""
    import statistics

    from .proxy import train_proxy

    steps: list[float] = []
    timed = replace(budget, steps=TIMED_STEPS, bn_samples=budget.batch_size, eval_samples=budget.batch_size)
    train_proxy(spec, task, timed, seed=0, step_seconds=steps)
    return statistics.median(steps[1:])


def estimate_seconds(steps: int, runs: list[float], step_at, budget, evaluated: int) -> float:
    """Modelled wall time of proxy runs of the given MACs ratios (module docstring)."""
    forward_batches = (budget.bn_samples + evaluated) / budget.batch_size
    return SAFETY * sum((steps + forward_batches * FORWARD_SHARE) * step_at(ratio) for ratio in runs)


def planned_runs(search_points: int, targets, seeds: int, extra: int = 0) -> list[float]:
    """MACs ratios of every proxy training: the search (target 2), the study's base and four
    strategies per target and seed, plus `extra` base-sized runs (the planned model)."""
    return [2.0] * search_points + [1.0] * (seeds + extra) + [float(t) for t in targets for _ in range(4 * seeds)]


def size_demo(base, task, *, budget_name: str, targets: tuple, seeds: int, search_points: int,
              time_budget_s: float, extra_runs: int = 0) -> Sizing:
    """The proxy budget and targets that fit `time_budget_s` on this machine (module docstring)."""
    from ..scaling import Coefficients
    from .proxy import get_budget

    if not time_budget_s > 0:
        raise EffscaleError(f"time budget {time_budget_s!r} s must be > 0")
    started = time.perf_counter()
    budget = get_budget(budget_name)
    bigger = base.scaled(Coefficients(width=2.0))  # ~4x the MACs through the pointwise convs
    ratio = bigger.analytic_cost(num_classes=task.num_classes, in_chans=task.in_chans).macs / \
        base.analytic_cost(num_classes=task.num_classes, in_chans=task.in_chans).macs
    t1, t4 = _step_seconds(base, task, budget), _step_seconds(bigger, task, budget)

    def step_at(r: float) -> float:
        return max(t1 + (t4 - t1) * (r - 1) / max(ratio - 1, 1e-9), 0.5 * t1)

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
    return Sizing(budget=name, targets=chosen_targets, estimated_s=estimated, step_s=(t1, t4), notes=tuple(notes),
                  seconds=time.perf_counter() - started)
