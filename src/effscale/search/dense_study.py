"""The lab on dense tasks: which way of spending MACs helps a detector or a segmenter most.

    effscale study --task detection --data coco:DIR --out study_det
    effscale study --task multitask --data masks:DIR --out study_mt

Detection and segmentation: the base (the task's default model unless --model) is scaled to each
target (a MACs multiple of the base, whole model counted: backbone, neck, heads) by
- compound: the backbone by EfficientNet's rule at phi, the input by gamma^phi;
- depth / width: the backbone alone by that multiplier;
- resolution: the input alone;
- joint (detection): EfficientDet's rule, the backbone as compound and the BiFPN width x 1.35^phi,
  its repeats + phi, the head repeats + phi / 3 (rounded), as in the paper's eq. 1-3.
Each knob is solved by bisection so the rounded model's MACs are nearest the target; a model that
rounding keeps more than 5 % off is flagged (`matched` false), not hidden. Inputs stay multiples
of the model's required step (2^max_level for detectors, the backbone's stride for segmenters).

Multi-task: one backbone, a segmentation head and an image classifier. The base and the model at
phi = log2(target) under three rules with the same alpha * beta^2 * gamma^2: EfficientNet's,
resolution-biased and width-biased (ScalingRule.biased); each task's metric is reported.

Every model is trained with the same budget (epochs, batch, lr) and seeds through the trainer;
rows are appended to results.jsonl as they finish, so an interrupted study resumes. A proxy
budget: the ranking at full training may differ, and the report says so.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..errors import EffscaleError, require
from ..scaling import Coefficients, ScalingRule, scale
from .strategies import TOLERANCE, check_targets

DENSE_STRATEGIES = {"detection": ("compound", "depth", "width", "resolution", "joint"),
                    "segmentation": ("compound", "depth", "width", "resolution"),
                    "multitask": ("compound-rule", "resolution-rule", "width-rule")}
# The detection study's base has levels P3-P5, so its input moves in 32 px steps (P3-P7 would
# allow only multiples of 128 px: 128 -> 256 is already 4x the MACs).
STUDY_BASES = {"detection": "efficientdet@-3,anchor_scale=2,max_level=5",
               "segmentation": "segmenter@-3,resolution=128", "multitask": "multitask@-3,resolution=128"}
KNOB_RANGE = (-6.0, 6.0)  # phi, or log of the multiplier


@dataclass
class DenseStudyConfig:
    task: str
    data: str
    out: str
    model: str | None = None
    targets: tuple = (2.0,)
    seeds: int = 2
    epochs: int = 12
    batch_size: int = 32
    lr: float = 4e-3
    strategies: tuple | None = None
    progress: bool = True
    command: str = ""

    def validate(self) -> None:
        if self.task not in DENSE_STRATEGIES:
            raise EffscaleError(f"study task {self.task!r} is unknown; allowed: classification (the image lab), "
                                f"{', '.join(DENSE_STRATEGIES)}")
        for name in ("seeds", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EffscaleError(f"{name}={value!r} must be an integer >= 1")
        unknown = [s for s in self.strategies or () if s not in DENSE_STRATEGIES[self.task]]
        if unknown:
            raise EffscaleError(f"strategy {unknown[0]!r} is not one of the {self.task} study's: "
                                f"{', '.join(DENSE_STRATEGIES[self.task])}")


def _macs(spec) -> int:
    from ..dense.cost import dense_cost

    return dense_cost(spec)["macs"]


def _step(spec) -> int:
    from ..dense.spec import DetectorSpec, backbone_levels

    return 2 ** (spec.max_level if isinstance(spec, DetectorSpec) else max(backbone_levels(spec.backbone)))


def _with_resolution(spec, factor: float):
    step = _step(spec)
    return dataclasses.replace(spec, resolution=max(step, int(math.floor(spec.resolution * factor / step + 0.5)) * step))


def scaled(base, strategy: str, knob: float, rule: ScalingRule = ScalingRule()):
    """`base` scaled by one strategy at `knob` (phi for compound / joint, log multiplier otherwise)."""
    backbone = base.backbone
    if strategy == "compound":
        c = rule.at(knob)
        spec = dataclasses.replace(base, backbone=scale(backbone, Coefficients(depth=c.depth, width=c.width),
                                                        name=backbone.name))
        return _with_resolution(spec, c.resolution)
    if strategy in ("depth", "width"):
        c = Coefficients(**{strategy: math.exp(knob)})
        return dataclasses.replace(base, backbone=scale(backbone, c, name=backbone.name))
    if strategy == "resolution":
        return _with_resolution(base, math.exp(knob))
    if strategy == "joint":
        spec = scaled(base, "compound", knob, rule)
        width = max(8, int(math.floor(base.fpn_channels * 1.35 ** knob / 8 + 0.5)) * 8)
        return dataclasses.replace(spec, fpn_channels=width, fpn_layers=max(1, int(math.floor(base.fpn_layers + knob + 0.5))),
                                   head_layers=max(1, int(math.floor(base.head_layers + knob / 3 + 0.5))))
    raise EffscaleError(f"strategy {strategy!r} is unknown")


def match_dense(base, strategy: str, target: float) -> dict:
    """The knob whose rounded model's MACs are nearest `target` x the base's (bisection on the
    monotone MACs, then the closer of the two rounding steps around the target)."""
    want = _macs(base) * target
    low, high = KNOB_RANGE

    def macs_at(knob):
        try:
            return _macs(scaled(base, strategy, knob))
        except EffscaleError:
            return None

    for _ in range(40):
        middle = (low + high) / 2
        value = macs_at(middle)
        if value is None or value > want:
            high = middle
        else:
            low = middle
    candidates = [k for k in (low, high) if macs_at(k) is not None]
    if not candidates:
        raise EffscaleError(f"{strategy} scaling of {base.name} cannot reach {target:g}x its MACs")
    knob = min(candidates, key=lambda k: abs(math.log(macs_at(k) / want)))
    spec = scaled(base, strategy, knob)
    ratio = _macs(spec) / _macs(base)
    return {"strategy": strategy, "target": target, "knob": round(knob, 4), "spec": spec,
            "macs_ratio": round(ratio, 4), "matched": abs(ratio / target - 1) <= TOLERANCE}


def plan_dense_runs(config: DenseStudyConfig, base) -> list[dict]:
    runs = [{"strategy": "base", "target": 1.0, "knob": None, "spec": base, "macs_ratio": 1.0, "matched": True}]
    strategies = config.strategies or DENSE_STRATEGIES[config.task]
    for target in check_targets(config.targets):
        for strategy in strategies:
            if config.task == "multitask":
                runs.append(_rule_run(base, strategy, target))
            else:
                runs.append(match_dense(base, strategy, target))
    return runs


def _rule_run(base, strategy: str, target: float) -> dict:
    """Multi-task: the backbone at phi = log2(target) by a rule (EfficientNet's or biased), decoder
    and head as the base; input rounded to the backbone's stride."""
    rule = ScalingRule() if strategy == "compound-rule" else ScalingRule().biased(strategy.split("-")[0])
    phi = math.log(target) / math.log(rule.flops_base)
    spec = scaled(base, "compound", phi, rule)
    ratio = _macs(spec) / _macs(base)
    rule_text = f"alpha {rule.alpha:.3f}, beta {rule.beta:.3f}, gamma {rule.gamma:.3f}"
    return {"strategy": strategy, "target": target, "knob": round(phi, 4), "spec": spec, "rule": rule_text,
            "macs_ratio": round(ratio, 4), "matched": abs(ratio / target - 1) <= TOLERANCE}


METRICS = {"detection": ("test_map", "test_map_50"), "segmentation": ("test_miou",),
           "multitask": ("test_miou", "test_top1")}


def run_dense_study(config: DenseStudyConfig) -> dict:
    """Train every run for every seed; results.json, report.md and a plot in `out`."""
    from ..dense.spec import dense_spec_to_dict, resolve_dense_spec
    from ..train import TrainConfig, train
    from ..train.dense_task import dense_task
    from .study import _check_resume, _Rows

    config.validate()
    require("matplotlib", "lab")
    reference = config.model or STUDY_BASES[config.task]
    base = resolve_dense_spec(reference, num_classes=1)
    # the task's kind of model (a detector for detection, ...), refused before anything is written
    dense_task(TrainConfig(data=config.data, out=config.out, task=config.task, model=reference)).check_spec(base)
    runs = plan_dense_runs(config, base)  # every model matched before any training
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = {"task": config.task, "data": config.data, "base": dense_spec_to_dict(base),
                   "targets": check_targets(config.targets), "epochs": config.epochs, "batch_size": config.batch_size,
                   "lr": config.lr, "strategies": [r["strategy"] for r in runs]}
    _check_resume(out / "study_config.json", fingerprint)
    rows = _Rows(out / "results.jsonl")
    for run in runs:
        for seed in range(config.seeds):
            if rows.has(run["strategy"], run["target"], seed):
                continue
            name = f"{run['strategy']}-{run['target']:g}x-seed{seed}"
            summary = train(TrainConfig(data=config.data, out=str(out / "runs" / name), task=config.task,
                                        model=run["spec"], epochs=config.epochs, batch_size=config.batch_size,
                                        lr=config.lr, seed=seed, progress=False))
            row = {"strategy": run["strategy"], "target": run["target"], "seed": seed, "knob": run["knob"],
                   "macs": summary["macs"], "params": summary["params"], "macs_ratio": run["macs_ratio"],
                   "matched": run["matched"], "resolution": summary["resolution"], "seconds": summary["wall_s"],
                   "rule": run.get("rule"), "spec": json.dumps(dense_spec_to_dict(run["spec"])),
                   **{metric: summary[metric] for metric in METRICS[config.task]}}
            rows.add(row)
    rows = rows.rows
    summary = summarise_dense(rows, METRICS[config.task])
    result = {"task": config.task, "data": config.data, "base": base.name, "epochs": config.epochs,
              "batch_size": config.batch_size, "lr": config.lr, "seeds": config.seeds,
              "targets": check_targets(config.targets), "command": config.command, "rows": rows, "summary": summary}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    result["report"] = str(_write_report(result, out))
    return result


def summarise_dense(rows: list[dict], metrics: tuple) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["strategy"]), []).append(row)
    summary = []
    for (target, strategy), members in sorted(groups.items()):
        entry = {"strategy": strategy, "target": target, "seeds": len(members), "macs": members[0]["macs"],
                 "macs_ratio": members[0]["macs_ratio"], "matched": members[0]["matched"],
                 "params": members[0]["params"], "resolution": members[0]["resolution"], "rule": members[0].get("rule")}
        for metric in metrics:
            values = [r[metric] for r in members]
            entry[f"{metric}_mean"] = round(statistics.fmean(values), 3)
            entry[f"{metric}_min"], entry[f"{metric}_max"] = min(values), max(values)
        summary.append(entry)
    return summary


def _write_report(result: dict, out: Path) -> Path:
    from ..plotting import pyplot

    plt = pyplot()

    metrics = METRICS[result["task"]]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for strategy in dict.fromkeys(r["strategy"] for r in result["summary"]):
            points = [r for r in result["summary"] if r["strategy"] in (strategy, "base")]
            points.sort(key=lambda r: r["macs"])
            axis.errorbar([p["macs"] / 1e6 for p in points], [p[f"{metric}_mean"] for p in points],
                          yerr=[[p[f"{metric}_mean"] - p[f"{metric}_min"] for p in points],
                                [p[f"{metric}_max"] - p[f"{metric}_mean"] for p in points]],
                          marker="o", capsize=3, label=strategy)
        axis.set_xlabel("MACs (M)")
        axis.set_ylabel(metric.replace("test_", "").replace("_", " "))
        axis.legend(fontsize=8)
    figure.suptitle(f"{result['task']} study on {result['data']} ({result['epochs']} epochs, {result['seeds']} seeds)")
    figure.tight_layout()
    figure.savefig(out / "study.png", dpi=110)
    plt.close(figure)
    lines = [f"# Dense study: {result['task']}", "",
             f"Data {result['data']}, base {result['base']}, {result['epochs']} epochs, batch {result['batch_size']}, "
             f"lr {result['lr']}, seeds {result['seeds']}. Command: `{result['command']}`", "",
             "| target | strategy | MACs (M) | ratio | matched | input | " + " | ".join(
                 f"{m.replace('test_', '')} mean (min..max)" for m in metrics) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(metrics)]
    for r in result["summary"]:
        cells = [f"{r[f'{m}_mean']:.2f} ({r[f'{m}_min']:.2f}..{r[f'{m}_max']:.2f})" for m in metrics]
        lines.append(f"| {r['target']:g}x | {r['strategy']}{' (' + r['rule'] + ')' if r.get('rule') else ''} | "
                     f"{r['macs'] / 1e6:.1f} | {r['macs_ratio']:.2f} | {'yes' if r['matched'] else 'NO'} | "
                     f"{r['resolution']} | " + " | ".join(cells) + " |")
    lines += ["", "![study](study.png)", "",
              "A proxy budget: every model gets the same few epochs, so larger models are further from "
              "convergence; the ranking at full training may differ. Differences within the min..max over "
              "seeds are not evidence either way."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["DENSE_STRATEGIES", "DenseStudyConfig", "match_dense", "plan_dense_runs", "run_dense_study", "scaled"]
