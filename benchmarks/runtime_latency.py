"""Latency prediction on a deploy runtime: a runtime profile's predictions against held-out specs
measured as they ship, and what a torch profile would have predicted for them.

Profiles the runtime (`run_profile(runtime=..., precision=...)`, or loads `--profile`), draws
the same random compound-scaled B0 specs as benchmarks/latency.py (seeded; none a profile member),
builds each as it ships (export, parity check, INT8 quantization for int8: export/timed.py), and
times them all in shuffled interleaved passes through the runtime, with the profile's two anchor
networks among them. Reported per method: MAPE, share within +-10 %, median and worst error, raw
and re-anchored. With `--torch-profile P`, the eager-torch profile's re-anchored `lut` prediction
of the same specs is compared with the runtime's measurements too: the error a plan made on a
torch profile would carry to the runtime you ship on.

Run (from the repository root, on a quiet machine):
    .venv/bin/python benchmarks/runtime_latency.py --runtime openvino --precision int8 --quick \
        --torch-profile device.json --out benchmarks/results/runtime_latency.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import effscale  # noqa: E402
from effscale.hardware import METHODS, load_profile, run_profile  # noqa: E402
from effscale.hardware.anchor import anchor_members  # noqa: E402
from effscale.hardware.conditions import sample_others  # noqa: E402
from effscale.hardware.deployed import RuntimeNetwork  # noqa: E402
from effscale.timing import measure_in_passes  # noqa: E402
from latency import random_specs, summarize  # noqa: E402
from machine_info import cpu_description, write_outputs  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["openvino", "onnxruntime"], default="openvino")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="int8")
    parser.add_argument("--profile", type=Path, help="a saved runtime profile instead of profiling now")
    parser.add_argument("--save-profile", type=Path, help="write the profile measured now here")
    parser.add_argument("--torch-profile", type=Path, help="an eager-torch profile to compare against")
    parser.add_argument("--quick", action="store_true", help="quick runtime profile")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--specs", type=int, default=12, help="held-out specs (default 12; each is exported)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of timed calls per spec in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.specs < 1 or args.threads < 1 or args.passes < 1 or not args.budget > 0:
        parser.error("--specs, --threads and --passes must be >= 1, --budget > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start, loadavg_start = time.perf_counter(), os.getloadavg()
    others = sample_others(1.0)["others_cores"] or 0.0
    if args.profile:
        profile, source = load_profile(args.profile), f"loaded from {args.profile}"
    else:
        profile = run_profile(runtime=args.runtime, precision=args.precision, threads=args.threads, quick=args.quick)
        source = "measured in this run"
        if args.save_profile:
            profile.save(args.save_profile)
    torch_profile = load_profile(args.torch_profile).reanchor() if args.torch_profile else None
    specs = random_specs(args.specs, args.seed)
    anchors = [effscale.NetworkSpec.from_text(m["spec"]) for m in anchor_members(profile)]
    networks = []
    for index, spec in enumerate([s for s, _ in specs] + anchors):
        print(f"building {index + 1}/{len(specs) + len(anchors)}: {spec.name}", file=sys.stderr, flush=True)
        networks.append(RuntimeNetwork(spec, profile.runtime, profile.precision, profile.threads, counted=False))
    build_s = time.perf_counter() - start
    measured = measure_in_passes([(networks, args.budget)], passes=args.passes, seed=args.seed)[0]
    float_ops = sorted({n.float_precision for n in networks})
    del networks
    measured, anchors_now = measured[:len(specs)], measured[len(specs):]
    # The anchor, as plan computes it, from the anchor networks timed among the specs (not before).
    factor = statistics.geometric_mean(now.median_ms / m["median_ms"]
                                       for now, m in zip(anchors_now, anchor_members(profile)))
    rows = []
    for (spec, coefficients), m in zip(specs, measured):
        predicted = {method: profile.predict_latency(spec, method=method) for method in METHODS}
        row = {"name": spec.name, "coefficients": coefficients, "resolution": spec.resolution,
               "macs": effscale.cost(spec).macs, "measured_ms": m.median_ms, "p25_ms": m.p25_ms, "p75_ms": m.p75_ms,
               "predicted_ms": predicted,
               "anchored_ms": {k: v * (factor if k != "roofline" else 1.0) for k, v in predicted.items()}}
        if torch_profile is not None:
            row["torch_lut_ms"] = torch_profile.predict_latency(spec)
        rows.append(row)
    raw, anchored = summarize(rows), summarize(rows, "anchored_ms")
    cpu, flags = cpu_description()
    info = {"cpu": cpu, "flags": flags, "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(),
            "others_cores_start": others, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - start, "build_s": build_s, "profile_source": source,
            "float_ops": float_ops, "anchor_factor": factor, "runtime_version": profile.machine.get("runtime_version")}
    report = markdown(info, profile, raw, anchored, rows, torch_profile)
    print(report)
    write_outputs({args.out: report, args.json: json.dumps({"machine": info, "summary_raw": raw,
                                                            "summary_reanchored": anchored, "rows": rows}, indent=1)})
    return 0


def markdown(info, profile, raw, anchored, rows, torch_profile) -> str:
    lines = [f"Machine: {info['cpu']}, flags {' '.join(info['flags'])}; {profile.runtime} "
             f"{info['runtime_version']}, {profile.precision} (float ops {', '.join(info['float_ops'])}), "
             f"{profile.threads} threads; profile {'quick' if profile.quick else 'full'}, {len(profile.layers)} layer "
             f"units from the runtime's counters, {len(profile.members)} networks ({info['profile_source']}); load "
             f"average {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end; other processes "
             f"{info['others_cores_start']:.2f} cores before; {info['date']}; wall {info['wall_s']:.0f} s (building "
             f"the artifacts {info['build_s']:.0f} s).", "",
             f"{len(rows)} held-out random compound-scaled B0 specs ({min(r['macs'] for r in rows) / 1e9:.2f}-"
             f"{max(r['macs'] for r in rows) / 1e9:.2f} GMACs, {min(r['measured_ms'] for r in rows):.1f}-"
             f"{max(r['measured_ms'] for r in rows):.1f} ms measured), batch 1, each built as it ships. Error = "
             f"predicted / measured - 1. Re-anchored: x{info['anchor_factor']:.3f} from the profile's two anchor "
             "networks timed among the specs.", "",
             "| method | predictions | MAPE | within ±10 % | median error | worst error |", "|---|---|---:|---:|---:|---:|"]
    for label, summary in (("raw", raw), ("re-anchored", anchored)):
        for method, s in summary.items():
            lines.append(f"| {method} | {label} | {s['mape']:.1%} | {s['within_10pct']:.0%} | "
                         f"{s['median_error']:+.1%} | {s['worst_error']:+.1%} |")
    if torch_profile is not None:
        errors = [r["torch_lut_ms"] / r["measured_ms"] - 1 for r in rows]
        lines += ["", f"The eager-torch profile ({torch_profile.precision}, re-anchored lut) predicting the same specs "
                      f"against the {profile.runtime} {profile.precision} measurements: MAPE "
                      f"{statistics.fmean(abs(e) for e in errors):.0%}, median error {statistics.median(errors):+.0%}, "
                      f"{sum(abs(e) <= 0.10 for e in errors)}/{len(errors)} within ±10 %."]
    lines += ["", "| spec | res | GMACs | measured ms (IQR) | " + " | ".join(f"{m} (re-anchored)" for m in METHODS)
              + (" | torch lut |" if torch_profile is not None else " |"),
              "|---|---:|---:|---:|" + "---:|" * (len(METHODS) + (torch_profile is not None))]
    for row in rows:
        cells = [f"{row['anchored_ms'][m]:.2f} ({row['anchored_ms'][m] / row['measured_ms'] - 1:+.0%})" for m in METHODS]
        if torch_profile is not None:
            cells.append(f"{row['torch_lut_ms']:.2f} ({row['torch_lut_ms'] / row['measured_ms'] - 1:+.0%})")
        lines.append(f"| {row['name']} | {row['resolution']} | {row['macs'] / 1e9:.2f} | {row['measured_ms']:.2f} "
                     f"({row['p25_ms']:.2f}-{row['p75_ms']:.2f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
