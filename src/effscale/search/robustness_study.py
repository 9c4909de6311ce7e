"""`effscale analyze robustness STUDY_DIR`: the robustness measures (analysis/robustness.py) of
every model a study kept, on the study's own test data, as the study's rows extended with new
columns (robustness.json), summarised per strategy and target with the spread over seeds, with
a report (robustness.md) and the plot of attack success against MACs per strategy.

The test images are a seeded sample of the study's test split; every model sees the same ones.
The attacks run through each model's own preprocessing (its resolution, the task's normalisation),
checked against the study's input pipeline on the clean images before any attack.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from ..analysis.robustness import EPSILONS, PGD_STEPS, robustness
from ..errors import EffscaleError
from ..progress import ProgressBar
from .study import by_model, seed_spread

PLOT_EPSILON = 2 / 255  # the attack strength the plot and the summary's headline use


def analyze_robustness(study_dir, *, samples: int = 250, epsilons=EPSILONS, steps: int = PGD_STEPS, seed: int = 0,
                       out: str | os.PathLike | None = None, command: str = "", progress: bool = True) -> dict:
    """Robustness of every kept model of the study in `study_dir`; written to `out` (default
    STUDY_DIR/robustness). The study's own files are only read."""
    from ..data.transforms import BatchTransform
    from ..weights import model_from_file
    from .task import load_task

    from ..plotting import pyplot

    study_dir = Path(study_dir).expanduser()
    rows = study_rows(study_dir)
    pyplot()  # the plot's matplotlib (lab extra), before the long work
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise EffscaleError(f"samples={samples!r} must be an integer >= 1")
    epsilons = tuple(epsilons)
    if not epsilons or any(not (isinstance(e, (int, float)) and 0 <= e <= 1) for e in epsilons):
        raise EffscaleError(f"epsilons {list(epsilons)!r} must be numbers in [0, 1] (the [0, 1] pixel scale)")
    out = Path(out).expanduser() if out is not None else study_dir / "robustness"
    config = json.loads((study_dir / "study_config.json").read_text())
    task = load_task(config["data"])
    raw, labels = task.test
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    raw, labels = raw[chosen], labels[chosen]
    images = raw.float() / 255
    results = []
    with ProgressBar(progress, label="robustness") as bar:
        counter = bar.task("models", total=len(rows))
        for done, row in enumerate(rows):
            counter.update(done)
            model = model_from_file(row["weights"]).eval()
            resolution = model.spec.resolution
            transform = BatchTransform(resolution, task.mean, task.std, train=False, in_chans=task.in_chans)

            def preprocess(pixels, transform=transform):  # differentiable in the [0, 1] pixels
                return transform.evaluate_pixels(pixels * 255)

            with torch.no_grad():
                gap = (preprocess(images[:64]) - task.inputs(raw[:64], resolution, False)).abs().max().item()
            if gap > 1e-4:
                raise EffscaleError(f"{row['weights']}: the attack's preprocessing differs from the study's by {gap:.2g}")
            started = time.perf_counter()
            measured = robustness(model, preprocess, images, labels, epsilons=epsilons, steps=steps, seed=seed)
            measured["seconds"] = round(time.perf_counter() - started, 2)
            results.append({**row, "robustness": measured})
        counter.update(len(rows))
    report = {"study": str(study_dir), "data": config["data"], "samples": int(len(labels)), "seed": seed,
              "epsilons": [float(e) for e in epsilons], "pgd_steps": steps, "command": command,
              "rows": results, "summary": summarise(results, epsilons)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "robustness.md").write_text(markdown(report))
    _plot(report, out / "robustness.png")
    report["out"] = str(out)
    return report


def study_rows(study_dir: Path) -> list[dict]:
    path = study_dir / "results.json"
    if not path.is_file():
        raise EffscaleError(f"{str(study_dir)!r} is not a finished study (no results.json); run `effscale study` "
                            "first")
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        raise EffscaleError(f"{str(path)!r} is not a study's results file") from None
    kept = [row for row in rows if row.get("weights") and Path(row["weights"]).is_file()]
    from ..dense.io import is_dense_file

    if any(row.get("task", "classification") != "classification" or is_dense_file(row["weights"]) for row in kept):
        raise EffscaleError(f"the study in {str(study_dir)!r} is a detection / segmentation study; the analyses "
                            "take classification studies")
    if not kept:
        raise EffscaleError(f"the study in {str(study_dir)!r} kept no model weights (run with --no-weights, by an "
                            "effscale before weights were kept, or moved): run the study again to analyse it")
    return kept


def summarise(rows: list[dict], epsilons) -> list[dict]:
    """Per (strategy, target): mean and min..max over seeds of clean top-1, FGSM and PGD success
    at each epsilon, the median clean margin and the gradient norm."""
    summary = []
    for (strategy, target), members in by_model(rows):
        entry = {"strategy": strategy, "target": target, "seeds": len(members),
                 "macs": members[0]["macs"], "macs_ratio": members[0]["macs_ratio"]}
        measures = {"clean_top1": [m["robustness"]["clean_top1"] for m in members],
                    "margin_median": [m["robustness"]["margin_clean"]["median"] for m in members],
                    "grad_l1": [m["robustness"]["grad_l1"] for m in members]}
        for attack in ("fgsm", "pgd"):
            for eps in epsilons:
                measures[f"{attack}_{_eps_label(eps)}"] = [m["robustness"][attack][f"{eps:.6g}"]["success"]
                                                           for m in members]
        for name, values in measures.items():
            entry[name] = seed_spread(values)
        summary.append(entry)
    return summary


def _eps_label(eps: float) -> str:
    """2/255 -> '2/255' style label where it is one, else the number."""
    steps = eps * 255
    return f"{round(steps):g}/255" if math.isclose(steps, round(steps), abs_tol=1e-6) else f"{eps:g}"


def markdown(report: dict) -> str:
    epsilons = report["epsilons"]
    lines = ["# Robustness against scaling", "",
             f"Study `{report['study']}` on `{report['data']}`: {report['samples']} test images (seed "
             f"{report['seed']}), L-infinity attacks on the [0, 1] pixel scale through each model's preprocessing; "
             f"PGD {report['pgd_steps']} steps with a random start. Success: the share of the correctly classified "
             "images that the attack makes wrong. Mean over seeds, (min..max).", ""]
    if report["command"]:
        lines += [f"Command: `{report['command']}`", ""]
    header = ["strategy", "target", "MACs x", "seeds", "clean top-1 %", "median margin", "grad l1"] + \
        [f"FGSM {_eps_label(e)}" for e in epsilons] + [f"PGD {_eps_label(e)}" for e in epsilons]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in report["summary"]:
        cells = [s["strategy"], f"{s['target']:g}x", f"{s['macs_ratio']:.2f}", str(s["seeds"]),
                 spread(s["clean_top1"], 2), spread(s["margin_median"], 2), spread(s["grad_l1"], 3)]
        cells += [spread(s[f"fgsm_{_eps_label(e)}"], 1) for e in epsilons]
        cells += [spread(s[f"pgd_{_eps_label(e)}"], 1) for e in epsilons]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![attack success against MACs](robustness.png)", "", verdict(report)]
    return "\n".join(lines) + "\n"


def verdict(report: dict) -> str:
    """Is compound scaling more robust than the single dimensions at each target, beyond the seed spread?"""
    key = f"pgd_{_eps_label(PLOT_EPSILON)}" if PLOT_EPSILON in report["epsilons"] else \
        f"pgd_{_eps_label(report['epsilons'][len(report['epsilons']) // 2])}"
    sentences = []
    for target in sorted({s["target"] for s in report["summary"] if s["strategy"] != "base"}):
        group = {s["strategy"]: s[key] for s in report["summary"] if s["target"] == target}
        if "compound" not in group or len(group) < 2:
            continue
        compound = group.pop("compound")
        best = min(group, key=lambda name: group[name]["mean"])
        if compound["max"] < min(g["min"] for g in group.values()):
            outcome = "lower than every single-dimension strategy beyond the seed spread (more robust)"
        elif compound["min"] > max(g["max"] for g in group.values()):
            outcome = "higher than every single-dimension strategy beyond the seed spread (less robust)"
        else:
            outcome = "within the seed spread of the others: no difference shown"
        sentences.append(f"At {target:g}x, compound's PGD success ({key[4:]}) is {compound['mean']:.1f} % against "
                         f"{group[best]['mean']:.1f} % for {best}, the most robust single dimension: {outcome}.")
    return " ".join(sentences) or "No target has compound and another strategy to compare."


def spread(values: dict, digits: int) -> str:
    if values["min"] == values["max"]:
        return f"{values['mean']:.{digits}f}"
    return f"{values['mean']:.{digits}f} ({values['min']:.{digits}f}..{values['max']:.{digits}f})"


def _plot(report: dict, path: Path) -> None:
    from ..plotting import pyplot

    plt = pyplot()
    eps = PLOT_EPSILON if PLOT_EPSILON in report["epsilons"] else report["epsilons"][len(report["epsilons"]) // 2]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, attack in enumerate(("fgsm", "pgd")):
        key = f"{attack}_{_eps_label(eps)}"
        for strategy in sorted({s["strategy"] for s in report["summary"]}):
            points = sorted((s["macs"], s[key]) for s in report["summary"] if s["strategy"] == strategy)
            macs = [p[0] / 1e6 for p in points]
            axes[index].errorbar(macs, [p[1]["mean"] for p in points],
                                 yerr=[[p[1]["mean"] - p[1]["min"] for p in points],
                                       [p[1]["max"] - p[1]["mean"] for p in points]],
                                 marker="o", capsize=3, label=strategy)
        axes[index].set_xscale("log")
        axes[index].set_xlabel("MACs (M)")
        axes[index].set_ylabel("attack success %")
        axes[index].set_title(f"{attack.upper()} at eps {_eps_label(eps)}")
        axes[index].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


__all__ = ["analyze_robustness", "markdown", "spread", "study_rows", "summarise", "verdict"]
