"""Markdown reports and PNG plots for the study and the demo (matplotlib, Agg backend).

Reports state what was measured, whatever it shows: the compound margin over the best
single-dimension strategy per target, with the spread over seeds next to it.
"""
from __future__ import annotations

from pathlib import Path

def compound_margins(summary: list[dict]) -> list[dict]:
    """Per target: compound's mean top-1 minus the best single-dimension strategy's."""
    margins = []
    for target in sorted({s["target"] for s in summary if s["strategy"] != "base"}):
        at = {s["strategy"]: s for s in summary if s["target"] == target}
        singles = [s for name, s in at.items() if name not in ("compound", "base")]
        if "compound" not in at or not singles:
            continue
        best = max(singles, key=lambda s: s["top1_mean"])
        margins.append({"target": target, "compound": at["compound"]["top1_mean"], "best_single": best["strategy"],
                        "best_single_top1": best["top1_mean"],
                        "margin": round(at["compound"]["top1_mean"] - best["top1_mean"], 3),
                        "spread": max(at["compound"]["top1_std"], best["top1_std"])})
    return margins


STYLE = {"compound": ("C3", "o"), "depth": ("C0", "s"), "width": ("C2", "^"), "resolution": ("C1", "D"),
         "base": ("k", "*")}


def _pyplot():
    from ..plotting import pyplot

    return pyplot()


def _series(summary: list[dict], strategy: str) -> list[dict]:
    base = [s for s in summary if s["strategy"] == "base"]
    return base + sorted((s for s in summary if s["strategy"] == strategy), key=lambda s: s["macs"])


def plot_accuracy(summary: list[dict], x_key: str, x_label: str, path: Path, title: str) -> Path:
    """Mean top-1 per strategy against `x_key`, error bars spanning min..max over seeds."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    strategies = [s for s in STYLE if s != "base" and any(r["strategy"] == s for r in summary)]
    for strategy in strategies:
        points = _series(summary, strategy)
        color, marker = STYLE[strategy]
        xs = [p[x_key] / (1e6 if x_key == "macs" else 1) for p in points]
        ys = [p["top1_mean"] for p in points]
        errors = [[p["top1_mean"] - p["top1_min"] for p in points], [p["top1_max"] - p["top1_mean"] for p in points]]
        axes.errorbar(xs, ys, yerr=errors, color=color, marker=marker, capsize=3, label=strategy,
                      linewidth=2.2 if strategy == "compound" else 1.3)
    base = [s for s in summary if s["strategy"] == "base"]
    if base:
        axes.plot([base[0][x_key] / (1e6 if x_key == "macs" else 1)], [base[0]["top1_mean"]], "k*", markersize=12,
                  label="base")
    axes.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    for axis in (axes.xaxis,):  # plain numbers on the log axis, not 6 x 10^0
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(ScalarFormatter())
    axes.set_xlabel(x_label)
    axes.set_ylabel("top-1 (%)  [bars: min..max over seeds]")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3, which="both")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def study_markdown(result: dict, plots: dict[str, str]) -> str:
    summary = result["summary"]
    budget = result["budget"]
    lines = [f"# Compound vs single-dimension scaling: {result['base']} on {result['data']}", "",
             f"Base `{result['base']}`; rule alpha={result['rule']['alpha']:g}, beta={result['rule']['beta']:g}, "
             f"gamma={result['rule']['gamma']:g}; proxy budget `{budget['name']}` ({budget['steps']} steps of batch "
             f"{budget['batch_size']}); {result['seeds']} seed(s); top-1 on the test split; latency = batch 1 on "
             "this machine (median).", ""]
    margins = compound_margins(summary)
    if margins:
        lines += ["## Outcome", "", "| target | compound top-1 | best single-dimension | its top-1 | margin | "
                  "spread (max stdev) |", "|---|---|---|---|---|---|"]
        for m in margins:
            lines.append(f"| {m['target']:g}x | {m['compound']:.2f} | {m['best_single']} | {m['best_single_top1']:.2f} "
                         f"| {m['margin']:+.2f} | {m['spread']:.2f} |")
        wins = sum(m["margin"] > 0 for m in margins)
        clear = sum(m["margin"] > max(m["spread"], 0) and m["margin"] > 0 for m in margins)
        lines += ["", f"Compound scaling beat every single-dimension strategy at {wins} of {len(margins)} targets"
                  f" ({clear} by more than the spread over seeds)." if result["seeds"] > 1 else
                  f"Compound scaling beat every single-dimension strategy at {wins} of {len(margins)} targets "
                  "(one seed: no spread measured, differences under ~1 point are within typical seed noise).", ""]
    lines += ["## All runs (mean over seeds)", "",
              "| strategy | target | MACs | ratio | matched ±5 % | params | top-1 mean | min..max | latency ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['strategy']} | {s['target']:g}x | {s['macs'] / 1e6:.2f} M | {s['macs_ratio']:.3f} | "
                     f"{'yes' if s['matched'] else '**no**'} | {s['params'] / 1e3:.0f} K | {s['top1_mean']:.2f} | "
                     f"{s['top1_min']:.2f}..{s['top1_max']:.2f} | {s['latency_ms']:.2f} |")
    unmatched = [s for s in summary if not s["matched"]]
    if unmatched:
        lines += ["", "Rows marked **no** could not be brought within ±5 % of the target MACs: the strategy's "
                  "rounding (whole blocks, channel multiples) steps over it; their ratio column says by how much."]
    lines += [""] + [f"![{name}]({path})" for name, path in plots.items()]
    if result.get("command"):
        lines += ["", "Reproduce:", "", "```", result["command"], "```"]
    return "\n".join(lines) + "\n"


def write_study_report(result: dict, out: Path) -> Path:
    out = Path(out)
    summary = result["summary"]
    plots = {
        "accuracy vs MACs": plot_accuracy(summary, "macs", "MACs (M, log)", out / "accuracy_vs_macs.png",
                                          f"{result['base']}: accuracy vs MACs").name,
        "accuracy vs latency": plot_accuracy(summary, "latency_ms", "latency, batch 1 (ms, log)",
                                             out / "accuracy_vs_latency.png",
                                             f"{result['base']}: accuracy vs latency on this machine").name,
    }
    path = out / "report.md"
    path.write_text(study_markdown(result, plots))
    return path


def plot_search(trials: list[dict], path: Path, title: str) -> Path:
    """Each candidate at (alpha, beta), coloured by its minival top-1; the best one ringed."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.6, 4.2), dpi=110)
    points = axes.scatter([t["alpha"] for t in trials], [t["beta"] for t in trials], c=[t["top1"] for t in trials],
                          cmap="viridis", s=160, edgecolors="k")
    best = max(trials, key=lambda t: t["top1"])
    axes.scatter([best["alpha"]], [best["beta"]], s=420, facecolors="none", edgecolors="C3", linewidths=2)
    for t in trials:
        axes.annotate(f"γ={t['gamma']:.2f}", (t["alpha"], t["beta"]), textcoords="offset points", xytext=(0, 11),
                      ha="center", fontsize=7)
    figure.colorbar(points, label="minival top-1 (%)")
    axes.set_xlabel("alpha (depth)")
    axes.set_ylabel("beta (width)")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def demo_markdown(result: dict, study_md: str) -> str:
    search, rule, chosen = result["search"], result["rule"], result["chosen"]
    commands, seconds = result["commands"], result["seconds"]
    lines = ["# effscale demo" + (" (--quick)" if result["quick"] else ""), "",
             f"Everything below was measured on this machine in {seconds['total']:.0f} s (search "
             f"{seconds['search']:.0f} s, family + comparison {seconds['study']:.0f} s). Accuracies come from short "
             f"proxy trainings (budget `{search['budget']}`), so they rank models; they are not converged numbers.", "",
             "## 1. Coefficient search", "",
             f"Around `{search['base']}` ({search['base_macs'] / 1e6:.2f} M MACs) with phi = 1 and "
             f"alpha·beta²·gamma² = {search['target']:g}; every candidate trained the same way and ranked on a "
             "minival split carved from the training data.", "",
             "| alpha | beta | gamma | resolution | MACs (x base) | minival top-1 |", "|---|---|---|---|---|---|"]
    for t in search["trials"]:
        lines.append(f"| {t['alpha']:g} | {t['beta']:g} | {t['gamma']:.3f} | {t['resolution']} | "
                     f"{t['macs'] / 1e6:.2f} M ({t['macs_ratio']:.2f}x) | {t['top1']:.2f} |")
    lines += ["", f"**Found: alpha = {rule['alpha']:g}, beta = {rule['beta']:g}, gamma = {rule['gamma']:.4g}** "
              "(EfficientNet's on ImageNet: 1.2, 1.1, 1.15). Rounding (whole blocks, channels in multiples of 8) "
              "moves the real MACs away from the constraint; the x-base column shows by how much.", "",
              "![search](search.png)", "", "Reproduce: `" + commands["search"] + "`", "",
              "## 2. The family and single-dimension scaling", ""]
    targets = result["study"]["targets"]
    lines += [f"The compound rows are the family: phi = 0..{len(targets)} under the found rule, i.e. "
              + ", ".join(f"{t:g}x" for t in targets) + " the base's MACs, each matched by depth-only, width-only "
              "and resolution-only scaling.", ""]
    lines += [("#" + line if line.startswith("## ") else line).replace("](accuracy", "](study/accuracy")
              for line in study_md.splitlines()[2:]]
    lines += ["", "## 3. Best model under a latency budget", ""]
    verdict = "fits" if chosen["fits"] else "**does not fit on re-measurement** (timing noise on a busy machine)"
    if result.get("plan"):
        planned = result["plan"]
        lines += [f"Budget {result['latency_budget_ms']:g} ms per image (batch 1). `effscale plan` with the device "
                  f"profile `{result['device']}`, the found rule and the study's accuracy rows chose "
                  f"`{chosen['name']}` ({chosen['macs'] / 1e6:.2f} M MACs, {chosen['resolution']} px): predicted "
                  f"{planned['predicted_ms']:.2f} ms, measured {planned['measured_ms']:.2f} ms -> {verdict} "
                  f"({len(planned['attempts'])} attempt(s)). Trained with the proxy budget: test top-1 "
                  f"{chosen['top1']:.2f} %.", ""]
    else:
        lines += [f"Budget {result['latency_budget_ms']:g} ms per image (batch 1) on this machine. The best family "
                  f"member that fits is `{chosen['name']}` ({chosen['strategy']} {chosen['target']:g}x, "
                  f"{chosen['macs'] / 1e6:.2f} M MACs, {chosen['params'] / 1e3:.0f} K params, "
                  f"{chosen['resolution']} px): {chosen['latency_ms']:.2f} ms measured in the study, "
                  f"{chosen['remeasured_ms']:.2f} ms re-measured now -> {verdict}. Test top-1 {chosen['top1']:.2f} %.",
                  "", "Between the trained members, the hardware planner predicts any phi from a device profile "
                  "and checks its pick by measurement (`effscale demo --device device.json` does this step with it):",
                  "", "```", "effscale profile --quick --out device.json", commands["plan"], "```", ""]
    lines += [
              "## 4. Weights, ready to use", "",
              f"`{result['weights']}` (spec, preprocessing and class names in its metadata) and its spec in "
              "`model_spec.txt`:", "", "```", commands["eval"],
              f"effscale predict IMAGE.png --weights {result['weights']}",
              f"{commands['train_longer']}   # train it properly (quick recipe)", "```", "",
              "Reproduce the whole demo: `" + commands["demo"] + "`", ""]
    lines += ["## 5. Shipped: INT8 against fp32", ""] + _shipped_lines(result.get("shipped"), commands)
    return "\n".join(lines) + "\n"


def _shipped_lines(shipped: dict | None, commands: dict) -> list[str]:
    if not shipped or "skipped" in shipped:
        return [f"Skipped: {shipped['skipped'] if shipped else 'not run'}."]
    accuracy = shipped["accuracy"]
    lines = [f"`{shipped['int8_dir']}` (INT8, {shipped['format']}, float ops {shipped['float_ops']}) beside "
             f"`{shipped['fp32_dir']}` (fp32). Top-1 on {accuracy['samples']} held-out images: fp32 "
             f"{accuracy['fp32_top1']:.2f} %, INT8 {accuracy['int8_top1']:.2f} % (drop {accuracy['drop']:.2f} points; "
             f"top-1 agreement {accuracy['top1_agreement']:.1%}, logits SQNR {accuracy['logits_sqnr_db']:.1f} dB). "
             f"Files: {shipped['size_bytes']['fp32'] / 1e6:.2f} MB fp32, {shipped['size_bytes']['int8'] / 1e6:.2f} MB "
             "INT8.", "", f"| batch | fp32 ms | INT8 ms | speed-up ({shipped['runtime']}) |", "|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['fp32_ms']:.3f} | {r['int8_ms']:.3f} | {r['speedup']:.2f}x |"
              for r in shipped["timings"]]
    return lines + ["", "Medians of interleaved repeats on this machine.", "", "```", commands["quantize"], "```"]


def write_demo_report(result: dict, out: Path, study_dir: Path) -> Path:
    out = Path(out)
    plot_search(result["search"]["trials"], out / "search.png",
                f"coefficient search around {result['search']['base']} (target {result['search']['target']:g})")
    study_md = (Path(study_dir) / "report.md").read_text()
    path = out / "report.md"
    path.write_text(demo_markdown(result, study_md))
    return path
