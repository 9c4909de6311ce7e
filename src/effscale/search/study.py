"""Compound versus single-dimension scaling, measured on your base and data.

For each target t (a FLOPs multiple of the base), the base is scaled four ways to the same
MACs (within the rounding the strategy allows; `strategies.match`): compound (the rule at the
phi that gives t), depth only, width only, resolution only. Every model, and the base itself,
is trained with the same proxy budget and seeds, evaluated on the test split, and timed on this
machine (batch 1, median of repeats). Rows are appended to results.jsonl as they finish, so an
interrupted study keeps its rows and a re-run with the same settings resumes.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import EffscaleError, require
from ..families import family_of
from ..progress import ProgressBar
from ..scaling import ScalingRule, scale_any
from .family import fit_to_task, resolve_base
from .proxy import get_budget, train_proxy
from .strategies import STRATEGIES, check_targets, match
from .task import load_task

ROW_KEYS = ("strategy", "target", "macs", "macs_ratio", "params", "top1", "seed", "latency_ms")


@dataclass
class StudyConfig:
    model: str | None
    data: str
    out: str
    targets: tuple = (2, 4, 8)
    seeds: int = 1
    phi: float | None = None
    budget: str = "quick"
    rule: ScalingRule = field(default_factory=ScalingRule)
    strategies: tuple = STRATEGIES
    progress: bool = True
    base: object = field(default=None, repr=False)  # a Scalable, instead of `model`
    command: str = ""
    # Weights saved to out/models for the analyses (analyze robustness): True every image model of
    # every seed, False none, a tuple those strategies' seed-0 models only (the demo's choice).
    keep_weights: bool | tuple = True


def architecture(spec) -> str:
    """The spec's text without its name: two strategies that land on the same network share it."""
    return spec.replace(name="x").to_text()


def measure_latencies(specs: list, task, rounds: int = 5, seed: int = 0) -> dict[str, float]:
    """Batch-1 latency (ms) of each distinct architecture, keyed by `architecture(spec)`.

    Each model is built for inference (BN folded, channels_last for image models) and timed
    under torch.inference_mode() with torch's current thread count. Models are timed in
    `rounds` shuffled, interleaved passes and the median over passes is kept, so a burst of
    load from another process, or allocator state left by training, shifts one sample of many
    models rather than all samples of one.
    """
    import random

    from ..timing import time_call

    models = {}
    for spec in specs:
        key = architecture(spec)
        if key in models:
            continue
        model = family_of(spec).build(spec, task.num_classes, task.in_chans).eval()
        if task.kind == "image":
            from ..nn import prepare_for_inference

            model = prepare_for_inference(model, channels_last=True)
        models[key] = (model, task.inputs(task.test[0][:1], spec.resolution, False))
    samples: dict[str, list[float]] = {key: [] for key in models}
    order = list(models)
    shuffle = random.Random(seed).shuffle
    with torch.inference_mode():
        for _ in range(rounds):
            shuffle(order)
            for key in order:
                model, x = models[key]
                samples[key].append(time_call(lambda: model(x), warmup=2, budget_s=0.1, min_repeats=5,
                                              collect=False).median_ms)
    return {key: round(statistics.median(values), 4) for key, values in samples.items()}


def measure_latency_ms(spec, task) -> float:
    return measure_latencies([spec], task)[architecture(spec)]


class _Rows:
    """results.jsonl: one JSON row per trained model, appended as it finishes."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
            if path.exists() else []

    def has(self, strategy: str, target: float, seed: int) -> bool:
        return any(r["strategy"] == strategy and r["target"] == target and r["seed"] == seed for r in self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def plan_runs(config: StudyConfig, base, task) -> list[dict]:
    """Every (strategy, target, spec) to train, matched before any training starts."""
    targets = check_targets(config.targets)
    unknown = [s for s in config.strategies if s not in STRATEGIES]
    if unknown:
        raise EffscaleError(f"strategy {unknown[0]!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    runs = [{"strategy": "base", "target": 1.0, "spec": base, "macs_ratio": 1.0, "knob": None}]
    for target in targets:
        for strategy in config.strategies:
            m = _match_within_limits(base, strategy, target, config.rule, task)
            runs.append({"strategy": strategy, "target": target, "spec": m.spec, "macs_ratio": m.macs_ratio,
                         "knob": m.knob, "matched": m.matched})
    return runs


def _match_within_limits(base, strategy: str, target: float, rule: ScalingRule, task):
    """`strategies.match`, with a target beyond what the strategy can reach inside the size limits
    (spec.MAX_BLOCKS, MAX_CHANNELS, MAX_RESOLUTION) named as such, with the largest reachable one."""
    try:
        return match(base, strategy, target, rule=rule, num_classes=task.num_classes, in_chans=task.in_chans)
    except EffscaleError as error:
        if strategy not in STRATEGIES:
            raise
        reach = largest_reachable(base, strategy, rule, task)
        if reach >= target:
            raise
        raise EffscaleError(f"target {target:g}x is out of reach for {strategy} scaling of {base.name}: within "
                            f"effscale's size limits it reaches at most {reach:.4g}x its MACs ({error}); allowed: "
                            f"targets from 1 to {reach:.4g}") from None


def largest_reachable(base, strategy: str, rule: ScalingRule, task) -> float:
    """The largest MACs multiple of `base` that `strategy` reaches with a spec inside the size
    limits and the lab's largest knob (strategies.MAX_KNOB)."""
    import math

    from ..scaling import feasible_interval
    from .strategies import LAB_RESOLUTION_MULTIPLE, MAX_KNOB, coefficients_for, macs_of

    def scaled(t: float):
        knob = t if strategy == "compound" else math.exp(t)
        return scale_any(base, coefficients_for(strategy, knob, rule), resolution_multiple=LAB_RESOLUTION_MULTIPLE)

    def feasible(t: float) -> bool:
        try:
            scaled(t)
        except EffscaleError:
            return False
        return True

    _, high = feasible_interval(feasible, cap=MAX_KNOB if strategy == "compound" else math.log(MAX_KNOB))
    high = high if high is not None else (MAX_KNOB if strategy == "compound" else math.log(MAX_KNOB))
    return macs_of(scaled(high), task.num_classes, task.in_chans) / macs_of(base, task.num_classes, task.in_chans)


def run_study(config: StudyConfig) -> dict:
    """Train every run of the study for every seed; writes results.json, report.md and plots."""
    if not isinstance(config.seeds, int) or isinstance(config.seeds, bool) or config.seeds < 1:
        raise EffscaleError(f"seeds={config.seeds!r} must be an integer >= 1")
    budget = get_budget(config.budget)
    require("matplotlib", "lab")  # the report's plots: fail now, not after the training
    base = resolve_base(config.base if config.base is not None else config.model, config.phi)
    task = load_task(config.data)
    task.check_spec(base)
    base = fit_to_task(base, task)
    runs = plan_runs(config, base, task)
    _check_trainable(runs, base, task)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = {"base": base.to_text(), "data": config.data, "budget": budget.to_dict(),
                   "rule": [config.rule.alpha, config.rule.beta, config.rule.gamma],
                   "targets": check_targets(config.targets),
                   "strategies": list(config.strategies)}
    _check_resume(out / "study_config.json", fingerprint)
    rows = _Rows(out / "results.jsonl")
    jobs = [(run, seed) for run in runs for seed in range(config.seeds)]
    with ProgressBar(config.progress, label="study") as bar:
        progress = bar.task("study", total=len(jobs))
        for done, (run, seed) in enumerate(jobs):
            progress.update(done)
            if rows.has(run["strategy"], run["target"], seed):
                continue
            spec = run["spec"]
            result, model = train_proxy(spec, task, budget, seed=seed, split="test", return_model=True)
            weights = None
            keep = config.keep_weights is True or (isinstance(config.keep_weights, tuple) and seed == 0
                                                   and run["strategy"] in config.keep_weights)
            if keep and task.kind == "image":
                weights = _save_model(model, task, out / "models" /
                                      f"{run['strategy']}-{run['target']:g}x-s{seed}.safetensors")
            rows.add({"strategy": run["strategy"], "target": run["target"], "macs": result.macs,
                      "macs_ratio": run["macs_ratio"], "params": result.params, "top1": result.top1, "seed": seed,
                      "matched": run.get("matched", True), "knob": run["knob"], "resolution": spec.resolution,
                      "seconds": result.seconds, "spec": spec.to_text(), "weights": weights})
        progress.update(len(jobs))
    # Latency after all training, every architecture in the same interleaved passes.
    latency_path = out / "latency.json"
    latency = json.loads(latency_path.read_text()) if latency_path.exists() else {}
    missing = [run["spec"] for run in runs if architecture(run["spec"]) not in latency]
    if missing:
        latency.update(measure_latencies(missing, task))
        latency_path.write_text(json.dumps(latency, indent=1) + "\n")
    by_text = {run["spec"].to_text(): latency[architecture(run["spec"])] for run in runs}
    for row in rows.rows:
        row["latency_ms"] = by_text[row["spec"]]
    summary = summarise(rows.rows)
    result = {"base": base.name, "base_spec": base.to_text(), "data": config.data, "budget": budget.to_dict(),
              "rule": {"alpha": config.rule.alpha, "beta": config.rule.beta, "gamma": config.rule.gamma},
              "seeds": config.seeds, "targets": [float(t) for t in check_targets(config.targets)],
              "command": config.command, "rows": rows.rows, "summary": summary}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    from .report import write_study_report

    result["report"] = str(write_study_report(result, out))
    return result


def _check_trainable(runs: list[dict], base, task) -> None:
    """Refuse, before any training, a run whose model is beyond what effscale trains (MAX_TRAIN_MACS)."""
    from ..spec import MAX_TRAIN_MACS, check_trainable_macs
    from .strategies import macs_of

    base_macs = macs_of(base, task.num_classes, task.in_chans)
    for run in runs:
        check_trainable_macs(base_macs * run["macs_ratio"], f"target {run['target']:g}x: the {run['strategy']} "
                             "model has", "per example",
                             f"allowed: targets up to {MAX_TRAIN_MACS / base_macs:.4g}x for {base.name}")


def _check_resume(path: Path, fingerprint: dict) -> None:
    """A study directory resumes only with the settings it was started with: its rows, latencies
    and report belong to them. Checked before any training; writes the fingerprint when new."""
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise EffscaleError(f"{path} is not readable ({error}); use another --out") from None
        if not isinstance(stored, dict):
            raise EffscaleError(f"{path} is not a study's settings file; use another --out")
        differ = [key for key in fingerprint if stored.get(key) != json.loads(json.dumps(fingerprint[key]))]
        if differ:
            shown = "; ".join(f"{key}: {_short(stored.get(key))} there, {_short(fingerprint[key])} now"
                              for key in differ if key in ("targets", "strategies", "data", "rule"))
            raise EffscaleError(f"{path.parent} holds a study with other settings ({', '.join(differ)} differ"
                                + (f": {shown}" if shown else "")
                                + "); resume it with the same arguments or use another --out")
    path.write_text(json.dumps(fingerprint, indent=2) + "\n")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _save_model(model, task, path: Path) -> str:
    from ..weights import save_weights

    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, extra_metadata={"classes": list(task.classes), "data": task.name})
    return str(path)


def by_model(rows: list[dict]) -> list[tuple[tuple[str, float], list[dict]]]:
    """The rows grouped per (strategy, target), its seeds together, ordered by target then strategy:
    the groups every summary of a study (and of its analyses) is made of."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["strategy"], row["target"]), []).append(row)
    return sorted(groups.items(), key=lambda item: (item[0][1], item[0][0]))


def seed_spread(values: list[float]) -> dict:
    """Mean, min and max of one measure over a model's seeds."""
    return {"mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values)}


def summarise(rows: list[dict]) -> list[dict]:
    """Per (strategy, target): mean, spread (min..max, stdev) of top-1 over seeds, MACs, latency."""
    summary = []
    for (strategy, target), members in by_model(rows):
        top1 = [r["top1"] for r in members]
        summary.append({
            "strategy": strategy, "target": target, "seeds": len(members), "macs": members[0]["macs"],
            "macs_ratio": members[0]["macs_ratio"], "params": members[0]["params"],
            "matched": members[0].get("matched", True), "latency_ms": members[0]["latency_ms"],
            "top1_mean": round(statistics.fmean(top1), 3), "top1_min": min(top1), "top1_max": max(top1),
            "top1_std": round(statistics.stdev(top1), 3) if len(top1) > 1 else 0.0})
    return summary
