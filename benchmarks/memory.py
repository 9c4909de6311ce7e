"""Peak inference memory: `predict_peak_memory` against RSS measured in a fresh process.

For each case (model, resolution, batch, precision) `measure_peak_memory` starts a fresh
interpreter, builds the model exactly as a profile runs it (`effscale.hardware.prepare`: BN
folded, in-place SE, channels_last), records the RSS that building it added ("model", against
the prediction's weights term), resets the kernel's peak-RSS counter and runs one inference
("first call", against the activations + runtime terms). Each case runs `--repeats` times; the
median is reported. RSS is counted in SI MB (10^6 bytes) like the prediction.

Run (from the repository root):
    .venv/bin/python benchmarks/memory.py --out benchmarks/results/memory.md \
        --json benchmarks/results/memory.json
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
from types import SimpleNamespace

from machine_info import cpu_description, usable_cpus

import effscale
from effscale.hardware.budgets import MB, measure_peak_memory, predict_peak_memory

# (model, resolution, batch, precision, channels_last). The first group is the one the two
# allowances in budgets.py were read from (a first run of this script); the second was added
# afterwards and is held out: other members, 32 px, bf16 at another size, NCHW.
CALIBRATION = [
    ("efficientnet_b0-phi-6", None, 1, "fp32", True),
    ("efficientnet_b0", 64, 1, "fp32", True),
    ("efficientnet_b0", 224, 1, "fp32", True),
    ("efficientnet_b0", 224, 8, "fp32", True),
    ("efficientnet_b0", 224, 32, "fp32", True),
    ("efficientnet_b0", 224, 8, "bf16", True),
    ("efficientnet_lite0", 224, 16, "fp32", True),
    ("efficientnet_b2", 260, 4, "fp32", True),
    ("efficientnet_b3", 300, 1, "fp32", True),
    ("efficientnet_b3", 300, 8, "fp32", True),
    ("efficientnet_b4", 380, 1, "fp32", True),
]
HELD_OUT = [
    ("efficientnet_b0-phi-6", 32, 1, "fp32", True),
    ("efficientnet_b0-phi-3", 32, 16, "fp32", True),
    ("efficientnet_b1", 240, 2, "fp32", True),
    ("efficientnet_lite2", 260, 8, "fp32", True),
    ("efficientnet_b3", 300, 4, "bf16", True),
    ("efficientnet_b5", 456, 1, "fp32", True),
    ("efficientnet_b0", 224, 4, "fp32", False),
]

def spec_of(name: str, resolution: int | None):
    if "-phi" in name:  # a compound-scaled member, as the planner makes them
        base, phi = name.split("-phi")
        spec = effscale.compound(effscale.get_spec(base), float(phi))
    else:
        spec = effscale.get_spec(name)
    return spec.replace(resolution=resolution) if resolution else spec


def run_case(name: str, resolution: int | None, batch: int, precision: str, channels_last: bool, *,
             repeats: int, held_out: bool) -> dict:
    spec = spec_of(name, resolution)
    profile = SimpleNamespace(threads=1, precision=precision, channels_last=channels_last)
    predicted = predict_peak_memory(spec, profile, batch=batch)
    runs = [measure_peak_memory(spec, profile, batch) for _ in range(repeats)]
    model_mb = statistics.median(r.model_bytes for r in runs) / MB
    growth_mb = statistics.median(r.inference_growth_bytes for r in runs) / MB
    first_call_pred = (predicted.activation_bytes + predicted.runtime_bytes) / MB
    return {
        "model": spec.name, "resolution": spec.resolution, "batch": batch, "precision": precision,
        "layout": "channels_last" if channels_last else "NCHW", "held_out": held_out,
        "predicted": predicted.to_dict(), "measured_runs": [r.to_dict() for r in runs],
        "measured_model_mb": model_mb, "measured_first_call_mb": growth_mb, "measured_total_mb": model_mb + growth_mb,
        "predicted_first_call_mb": first_call_pred,
        "error_total_pct": 100 * (predicted.total_mb / (model_mb + growth_mb) - 1),
        "error_first_call_pct": 100 * (first_call_pred / growth_mb - 1),
    }


def markdown(info: dict, rows: list[dict]) -> str:
    lines = [
        f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs; torch {info['torch']}, effscale "
        f"{info['effscale']}; 1 thread; {info['repeats']} fresh processes per case (median); "
        f"{info['date']}; wall {info['wall_s']:.0f} s.",
        "",
        "Predicted: model = weights + 10 MB build allowance; first call = 1.5 x cost()'s liveness peak (eager "
        "PyTorch) + 10 MB runtime allowance (15 MB for NCHW; budgets.py). Measured: RSS the built model added, "
        "and the peak RSS growth of its first inference (VmHWM after clear_refs). MB = 10^6 bytes; the ~250 MB of "
        "Python + torch are in neither. The two allowances were read from a first run of the calibration cases; "
        "the held-out cases (*) were added after.",
        "",
        "| model | px | batch | precision | model pred. MB | model meas. MB | first call pred. MB "
        "| first call meas. MB | error | total pred. MB | total meas. MB | error |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r["predicted"]
        lines.append(
            f"| {r['model']}{' *' if r['held_out'] else ''} | {r['resolution']} | {r['batch']} "
            f"| {r['precision']}{'' if r['layout'] == 'channels_last' else ' NCHW'} "
            f"| {(p['weights_bytes'] + p['build_bytes']) / MB:.1f} "
            f"| {r['measured_model_mb']:.1f} | {r['predicted_first_call_mb']:.1f} | {r['measured_first_call_mb']:.1f} "
            f"| {r['error_first_call_pct']:+.0f} % | {p['total_mb']:.1f} | {r['measured_total_mb']:.1f} "
            f"| {r['error_total_pct']:+.0f} % |")
    lines.append("")
    for label, held_out in (("calibration", False), ("held out", True)):
        errors = [abs(r["error_total_pct"]) for r in rows if r["held_out"] == held_out]
        if errors:
            lines.append(f"Total, {label} cases: mean absolute error {statistics.mean(errors):.0f} %, worst "
                         f"{max(errors):.0f} %, {sum(e <= 20 for e in errors)}/{len(errors)} within 20 %.  ")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="markdown table here")
    parser.add_argument("--json", type=Path, help="all results as JSON here")
    parser.add_argument("--quick", action="store_true", help="three cases, one process each")
    args = parser.parse_args(argv)
    cases = [(case, False) for case in CALIBRATION] + [(case, True) for case in HELD_OUT]
    cases = cases[1:4] if args.quick else cases
    repeats = 1 if args.quick else args.repeats
    start, rows = time.time(), []
    for case, held_out in cases:
        rows.append(run_case(*case, repeats=repeats, held_out=held_out))
        print(f"{rows[-1]['model']} @{rows[-1]['resolution']} b{case[2]} {case[3]}: predicted "
              f"{rows[-1]['predicted']['total_mb']:.1f} MB, measured {rows[-1]['measured_total_mb']:.1f} MB",
              file=sys.stderr)
    import torch

    info = {"cpu": cpu_description()[0], "usable_cpus": usable_cpus(), "torch": torch.__version__,
            "effscale": effscale.__version__, "repeats": repeats, "wall_s": time.time() - start,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "load": os.getloadavg()}
    text = markdown(info, rows)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
