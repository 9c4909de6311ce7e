"""Latency prediction accuracy: each method of a device profile against measured held-out specs.

Profiles this machine (or loads `--profile`), then draws random compound-scaled specs of B0 —
random alpha, beta, gamma with alpha * beta^2 * gamma^2 = 2 (the log-2 budget split between
depth, width and resolution by a Dirichlet(2, 2, 2) draw) and a random phi from scaled-down
(phi = -2, ~0.17 GMACs) to B4 size (4.4 GMACs), seeded, none of them a profile member.
Every spec is measured as the profile measures (`prepare` + `measure_latency` settings: the
profile's threads, precision and memory format, inference_mode), in shuffled passes whose
samples are pooled (so a burst of load from another process hits many specs a little rather
than one a lot), and predicted by every method.

Reported per method: MAPE, the share of specs within +-10 % of the measured median, the median
signed error (bias) and the worst error, twice: *raw* (the profile as saved) and *re-anchored*
(`profile.reanchor()` just before the specs are measured, as `plan` does before it predicts:
two of the profile's own networks re-timed, predictions scaled by measured / profiled).
Target: the default method, re-anchored, >= 95 % within +-10 %.

Run (from the repository root):
    .venv/bin/python benchmarks/latency.py --threads 2 \
        --out benchmarks/results/latency.md --json benchmarks/results/latency.json
`--quick` profiles with `--quick` and measures fewer repeats (a few minutes); `--profile P`
reuses a saved profile (its threads and precision are used).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

import effscale
from effscale.hardware import DEFAULT_METHOD, METHODS, load_profile, machine_description, prepare, run_profile
from effscale.hardware.conditions import sample_others
from effscale.hardware.runtime import measure_in_passes
from effscale.hardware.runtime import example_input

MIN_PHI, MAX_MACS_MODEL = -2.0, "efficientnet_b4"
MAX_WIDTH, MAX_RESOLUTION = 2.0, 448  # stay inside the range a profile's unit grid covers
TOLERANCE, TARGET_SHARE = 0.10, 0.95


def random_specs(count: int, seed: int) -> list[tuple[effscale.NetworkSpec, dict]]:
    """`count` random scaled B0 specs between phi = -2 and B4's MACs, with their coefficients."""
    rng = random.Random(seed)
    base = effscale.get_spec("efficientnet_b0")
    max_macs = effscale.cost(MAX_MACS_MODEL).macs
    max_phi = math.log2(max_macs / effscale.cost(base).macs)
    specs = []
    while len(specs) < count:
        shares = [rng.gammavariate(2.0, 1.0) for _ in range(3)]
        depth_share, width_share, resolution_share = (s / sum(shares) for s in shares)
        rule = effscale.ScalingRule(alpha=2 ** depth_share, beta=2 ** (width_share / 2),
                                    gamma=2 ** (resolution_share / 2))
        phi = rng.uniform(MIN_PHI, max_phi)
        coefficients = rule.at(phi)
        if coefficients.width > MAX_WIDTH or base.resolution * coefficients.resolution > MAX_RESOLUTION:
            continue
        spec = effscale.scale(base, coefficients, name=f"held-out-{len(specs)}")
        if effscale.cost(spec).macs > max_macs:
            continue
        specs.append((spec, {"alpha": rule.alpha, "beta": rule.beta, "gamma": rule.gamma, "phi": phi}))
    return specs


def measure(specs, profile, *, passes: int, budget_s: float, seed: int) -> list:
    calls = []
    for spec in specs:
        model = prepare(spec, profile)
        x = example_input(profile, 3, spec.resolution)
        calls.append(lambda model=model, x=x: model(x))
    done = [0]

    def advance():
        done[0] += 1
        print(f"\rmeasured {done[0]}/{len(calls) * passes}", end="", file=sys.stderr, flush=True)

    torch.set_num_threads(profile.threads)
    with torch.inference_mode():
        results = measure_in_passes([(calls, budget_s)], passes=passes, seed=seed, advance=advance)[0]
    print(file=sys.stderr)
    return results


def summarize(rows: list[dict], key: str = "predicted_ms") -> dict:
    """Per method: MAPE, share within +-10 %, median and worst error of `row[key][method]`."""
    summary = {}
    for method in METHODS:
        errors = [row[key][method] / row["measured_ms"] - 1 for row in rows]
        summary[method] = {
            "mape": statistics.fmean(abs(e) for e in errors),
            "within_10pct": sum(abs(e) <= TOLERANCE for e in errors) / len(errors),
            "median_error": statistics.median(errors),
            "worst_error": max(errors, key=abs),
        }
    return summary


def markdown(info: dict, profile, raw: dict, anchored: dict, rows: list[dict]) -> str:
    default = anchored[DEFAULT_METHOD]
    verdict = "meets" if default["within_10pct"] >= TARGET_SHARE else "misses"
    lines = [
        f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, flags {' '.join(info['cpu_flags'])}; "
        f"torch {info['torch']}; profile: {profile.threads} threads, {profile.precision}, "
        f"{'channels_last' if profile.channels_last else 'NCHW'}, {'quick' if profile.quick else 'full'} "
        f"({len(profile.layers)} layer units, {len(profile.members)} networks; {info['profile_source']}); "
        f"load average {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end; "
        f"other processes used {info['others_cores_start']:.2f} cores just before the run; "
        f"{info['date']}; wall {info['wall_s']:.0f} s.",
        "",
        f"{len(rows)} held-out random compound-scaled B0 specs (seed {info['seed']}; "
        f"{min(r['macs'] for r in rows) / 1e9:.2f}-{max(r['macs'] for r in rows) / 1e9:.2f} GMACs, "
        f"{min(r['measured_ms'] for r in rows):.1f}-{max(r['measured_ms'] for r in rows):.1f} ms measured), "
        "batch 1, median of pooled interleaved passes. Error = predicted / measured - 1.",
        "",
        "| method | predictions | MAPE | within ±10 % | median error | worst error |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, summary in (("raw", raw), ("re-anchored", anchored)):
        for method, s in summary.items():
            name = f"{method} (default)" if method == DEFAULT_METHOD else method
            lines.append(f"| {name} | {label} | {s['mape']:.1%} | {s['within_10pct']:.0%} | {s['median_error']:+.1%} | "
                         f"{s['worst_error']:+.1%} |")
    lines += ["", f"Target: >= {TARGET_SHARE:.0%} of the default method ({DEFAULT_METHOD}, re-anchored, as `plan` "
              f"predicts) within ±10 %: {verdict} it ({default['within_10pct']:.0%}; raw "
              f"{raw[DEFAULT_METHOD]['within_10pct']:.0%}).", "",
              f"Anchor: {info['anchor']}.", "",
              f"Control: all of the profile's calibration networks, re-measured among the specs, took "
              f"{info['drift']:.3f}x their profiled time (the anchor's factor was {info['anchor_factor']:.3f}).", "",
              "Per spec, re-anchored predictions:", "",
              "| spec | α | β | γ | φ | res | GMACs | measured ms (IQR) | " + " | ".join(METHODS) + " |",
              "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(METHODS)]
    for row in rows:
        c = row["coefficients"]
        predicted = " | ".join(f"{row['anchored_ms'][m]:.1f} ({row['anchored_ms'][m] / row['measured_ms'] - 1:+.0%})"
                               for m in METHODS)
        lines.append(f"| {row['name']} | {c['alpha']:.2f} | {c['beta']:.2f} | {c['gamma']:.2f} | {c['phi']:+.2f} | "
                     f"{row['resolution']} | {row['macs'] / 1e9:.2f} | {row['measured_ms']:.1f} "
                     f"({row['p25_ms']:.1f}-{row['p75_ms']:.1f}) | {predicted} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, help="use this saved profile instead of profiling now")
    parser.add_argument("--save-profile", type=Path, help="write the profile measured now here")
    parser.add_argument("--quick", action="store_true", help="quick profile and fewer repeats (a few minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads when profiling now (default 2)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--specs", type=int, default=36, help="held-out specs (default 36; at least 30)")
    parser.add_argument("--passes", type=int, help="shuffled passes over the specs (default 3, --quick 2)")
    parser.add_argument("--budget", type=float, help="seconds of timed calls per spec (default 3, --quick 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the markdown report here (always printed)")
    parser.add_argument("--json", type=Path, help="write every spec, measurement and prediction as JSON here")
    args = parser.parse_args(argv)
    if args.specs < 1 or args.threads < 1:
        parser.error("--specs and --threads must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    loadavg_start = os.getloadavg()
    others_start = sample_others(1.0)["others_cores"] or 0.0
    if others_start > 0.25:
        print(f"warning: other processes are using {others_start:.2f} cores: the figures will not be a quiet "
              "machine's", file=sys.stderr)
    if args.profile:
        profile = load_profile(args.profile)
        source = f"loaded from {args.profile}"
    else:
        profile = run_profile(threads=args.threads, precision=args.precision, quick=args.quick)
        source = "measured in this run"
        if args.save_profile:
            profile.save(args.save_profile)
    specs = random_specs(args.specs, args.seed)
    anchored = profile.reanchor()  # as `plan` does before predicting
    print(anchored.anchor.describe(), file=sys.stderr)
    passes = args.passes or (2 if args.quick else 3)
    budget = args.budget or (1.0 if args.quick else 3.0)
    # The profile's own calibration networks are re-measured alongside, as a control: how much
    # faster or slower this machine runs now than when it was profiled (load from elsewhere).
    members = [effscale.NetworkSpec.from_text(m["spec"]) for m in profile.members]
    measured = measure([spec for spec, _ in specs] + members, profile, passes=passes, budget_s=budget,
                       seed=args.seed)
    measured, members_now = measured[:len(specs)], measured[len(specs):]
    drift = statistics.median(now.median_ms / then["median_ms"] for now, then in zip(members_now, profile.members))
    rows = []
    for (spec, coefficients), m in zip(specs, measured):
        rows.append({"name": spec.name, "spec": spec.to_text(), "coefficients": coefficients,
                     "resolution": spec.resolution, "macs": effscale.cost(spec).macs,
                     "measured_ms": m.median_ms, "p25_ms": m.p25_ms, "p75_ms": m.p75_ms, "repeats": len(m.samples),
                     "predicted_ms": {method: profile.predict_latency(spec, method=method) for method in METHODS},
                     "anchored_ms": {method: anchored.predict_latency(spec, method=method) for method in METHODS}})
    raw, corrected = summarize(rows), summarize(rows, "anchored_ms")
    info = {**machine_description(), "effscale": effscale.__version__, "profile_source": source, "seed": args.seed,
            "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(), "wall_s": time.perf_counter() - start,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "passes": passes, "budget_s": budget,
            "drift": drift, "others_cores_start": others_start, "anchor": anchored.anchor.describe(),
            "anchor_factor": anchored.anchor.factor}
    report = markdown(info, profile, raw, corrected, rows)
    print(report)
    payload = {"machine": info, "default_method": DEFAULT_METHOD, "summary_raw": raw,
               "summary_reanchored": corrected, "anchor": anchored.anchor.to_dict(),
               "profile": {k: v for k, v in profile.to_dict().items() if k != "layers"}, "rows": rows}
    for path, text in ((args.out, report), (args.json, json.dumps(payload, indent=1))):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
