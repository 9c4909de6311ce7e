"""`effscale analyze representation STUDY_DIR`: the representation measures (analysis/representation.py)
of every model a study kept, as the study's rows extended with a `representation` column
(representation.json), summarised per strategy and target with the spread over seeds, with a
report (representation.md) and the smallest model of each strategy that reaches a few-shot target.

Data: probes train on a seeded, class-balanced sample of the study's training split and are scored
on its test split; few-shot episodes and the class geometry use the test split's features (the
study's models never trained on it). Every model sees the same images.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..analysis.representation import class_geometry, features, few_shot, linear_probe
from ..errors import EffscaleError, require
from ..progress import ProgressBar
from .study import by_model, seed_spread
from .robustness_study import spread, study_rows

PROBE_SIZES = (10, 100, 1000)  # training images per class for the linear probes
SHOTS = (1, 5)


def analyze_representation(study_dir, *, probe_sizes=PROBE_SIZES, shots=SHOTS, episodes: int = 600,
                           target: float | None = None, seed: int = 0, out: str | os.PathLike | None = None,
                           command: str = "", progress: bool = True) -> dict:
    """Representation quality of every kept model of the study in `study_dir`; written to `out`
    (default STUDY_DIR/representation). `target`: a 5-way 1-shot accuracy in [0, 1] (e.g. 0.4);
    the report names, per strategy, the smallest model whose mean reaches it."""
    from .task import load_task
    from ..weights import model_from_file

    require("sklearn", "analysis")  # before the long work
    study_dir = Path(study_dir).expanduser()
    rows = study_rows(study_dir)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 2:
        raise EffscaleError(f"episodes={episodes!r} must be an integer >= 2 (the confidence interval needs two)")
    if target is not None and not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise EffscaleError(f"target {target!r} must be an accuracy in (0, 1], e.g. 0.4")
    for size in probe_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise EffscaleError(f"probe size {size!r} must be an integer >= 1 (images per class)")
    config = json.loads((study_dir / "study_config.json").read_text())
    task = load_task(config["data"])
    if task.num_classes < 2:
        raise EffscaleError(f"{config['data']} has {task.num_classes} class: representation measures need at least 2")
    generator = np.random.default_rng(seed)
    train_raw, train_labels = task.train
    largest = max(probe_sizes)
    pool = np.concatenate([generator.permutation(np.flatnonzero(train_labels.numpy() == c))[:largest]
                           for c in range(task.num_classes)])
    pool.sort()
    train_raw, train_y = train_raw[torch.from_numpy(pool)], train_labels.numpy()[pool]
    test_raw, test_y = task.test[0], task.test[1].numpy()
    out = Path(out).expanduser() if out is not None else study_dir / "representation"
    results = []
    with ProgressBar(progress, label="representation") as bar:
        counter = bar.task("models", total=len(rows))
        for done, row in enumerate(rows):
            counter.update(done)
            started = time.perf_counter()
            model = model_from_file(row["weights"]).eval()
            resolution = model.spec.resolution
            train_x = features(model, task.inputs(train_raw, resolution, False))
            test_x = features(model, task.inputs(test_raw, resolution, False))
            measured = {
                "dim": int(train_x.shape[1]),
                "probes": [linear_probe(train_x, train_y, test_x, test_y, size, seed) for size in probe_sizes],
                "few_shot": [few_shot(test_x, test_y, shots=k, episodes=episodes, metric=metric, seed=seed)
                             for k in shots for metric in ("euclidean", "cosine")],
                "geometry": class_geometry(test_x, test_y),
            }
            measured["seconds"] = round(time.perf_counter() - started, 2)
            results.append({**row, "representation": measured})
        counter.update(len(rows))
    summary = summarise(results)
    report = {"study": str(study_dir), "data": config["data"], "seed": seed, "episodes": episodes,
              "probe_sizes": list(probe_sizes), "shots": list(shots), "command": command, "target": target,
              "rows": results, "summary": summary, "reaches_target": reaches(summary, target)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "representation.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "representation.md").write_text(markdown(report))
    report["out"] = str(out)
    if target is not None and not any(report["reaches_target"].values()):
        best = max(s["fewshot_1_euclidean"]["mean"] for s in summary)
        raise EffscaleError(f"no model reaches the 5-way 1-shot target {target:g} (the best mean is {best / 100:.3f}); "
                            f"the report is written to {out}")
    return report


def summarise(rows: list[dict]) -> list[dict]:
    summary = []
    for (strategy, target), members in by_model(rows):
        entry = {"strategy": strategy, "target": target, "seeds": len(members), "macs": members[0]["macs"],
                 "macs_ratio": members[0]["macs_ratio"], "dim": members[0]["representation"]["dim"]}
        measures: dict[str, list[float]] = {}
        for m in members:
            r = m["representation"]
            for probe in r["probes"]:
                measures.setdefault(f"probe_{probe['per_class']}", []).append(probe["accuracy"])
            for episode in r["few_shot"]:
                measures.setdefault(f"fewshot_{episode['shots']}_{episode['metric']}", []).append(episode["accuracy"])
            measures.setdefault("geometry_ratio", []).append(r["geometry"]["ratio"])
        for name, values in measures.items():
            entry[name] = seed_spread(values)
        summary.append(entry)
    return summary


def reaches(summary: list[dict], target: float | None) -> dict:
    """Per strategy: the smallest (by MACs) model whose mean 5-way 1-shot accuracy reaches `target`."""
    if target is None:
        return {}
    found = {}
    for strategy in sorted({s["strategy"] for s in summary}):
        members = sorted((s for s in summary if s["strategy"] == strategy), key=lambda s: s["macs"])
        hit = next((s for s in members if s["fewshot_1_euclidean"]["mean"] >= 100 * target), None)
        found[strategy] = None if hit is None else {"target": hit["target"], "macs": hit["macs"],
                                                    "accuracy": hit["fewshot_1_euclidean"]["mean"]}
    return found


def markdown(report: dict) -> str:
    sizes, shots = report["probe_sizes"], report["shots"]
    lines = ["# Representation quality against scaling", "",
             f"Study `{report['study']}` on `{report['data']}`, frozen pooled features. Linear probes (logistic "
             "regression) trained on n images per class of the training split, scored on the test split; "
             f"prototypical {report['episodes']}-episode 5-way K-shot accuracy on the test split (15 queries per "
             "class); class geometry on the test split. Mean over seeds (min..max).", ""]
    if report["command"]:
        lines += [f"Command: `{report['command']}`", ""]
    header = ["strategy", "target", "MACs x", "d"] + [f"probe n={n}" for n in sizes] + \
        [f"{k}-shot {m}" for k in shots for m in ("euclid", "cosine")] + ["between / within"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in report["summary"]:
        cells = [s["strategy"], f"{s['target']:g}x", f"{s['macs_ratio']:.2f}", str(s["dim"])]
        cells += [spread(s[f"probe_{n}"], 1) for n in sizes]
        cells += [spread(s[f"fewshot_{k}_{m}"], 1) for k in shots for m in ("euclidean", "cosine")]
        cells.append(spread(s["geometry_ratio"], 3))
        lines.append("| " + " | ".join(cells) + " |")
    if report["target"] is not None:
        lines += ["", f"Smallest model reaching 5-way 1-shot accuracy {report['target']:g} (Euclidean):"]
        for strategy, hit in report["reaches_target"].items():
            lines.append(f"- {strategy}: " + ("none" if hit is None else
                                              f"{hit['target']:g}x ({hit['accuracy']:.1f} %)"))
    return "\n".join(lines) + "\n"


__all__ = ["analyze_representation", "markdown", "reaches", "summarise"]
