"""Quantization noise against depth (the seeds' claim): output SQNR of INT8 and 4-bit-weight models
vs the compound coefficient φ, with squeeze-excite after the depthwise conv (EfficientNet) and
before it (`se_position=before_dw`).

For each SE position and φ in --phis: the quick recipe's base (`effscale_quick`, at --resolution
48 px so that φ = -2 stays above the 32 px minimum) with that
SE position, compound-scaled by φ (EfficientNet's rule: depth 1.2^φ, width 1.1^φ, resolution
1.15^φ), trained on the bundled Fashion-MNIST with the quick recipe for --epochs epochs (same
seed), then:

  int8         `effscale.export.quantize` (ONNX Runtime QDQ: int8 per-channel weights, uint8
               activations, min-max on 300 training images): logits SQNR and top-1 drop on the
               held-out split
  w4 / w8      weights only, fake-quantized in PyTorch after folding batch norm (symmetric per
               output channel, round to nearest, 4 or 8 bits; activations fp32): logits SQNR and
               top-1 drop on the same held-out images

SQNR = 10 log10(|fp32 logits|^2 / |fp32 - quantized|^2) over the held-out set. What it answers:
does the noise grow with φ (deeper and wider networks), and does moving SE before the
depthwise conv keep it lower at large φ? One seed per point: differences below ~1 dB are within
what another seed or calibration sample would move.

Run (about 25 minutes on 2 cores):
    .venv/bin/python benchmarks/sqnr_depth.py --out benchmarks/results/sqnr_depth.md \
        --json benchmarks/results/sqnr_depth.json --plot benchmarks/results/sqnr_depth.png
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from machine_info import cpu_description, usable_cpus, write_outputs

from effscale.export.quantize import _data, quantize, sqnr_db
from effscale.nn import prepare_for_inference
from effscale.train import TrainConfig, quick_spec, train
from effscale.weights import model_from_file

SE_POSITIONS = ("after_dw", "before_dw")


def fake_quantize_weights(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """Every conv / linear weight rounded to `bits`-bit symmetric per output channel (in place)."""
    levels = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                w = module.weight
                scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / levels
                shape = (-1,) + (1,) * (w.dim() - 1)
                w.copy_((w / scale.view(shape)).round().clamp(-levels - 1, levels) * scale.view(shape))
    return model


def logits(model, batches) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(b).contiguous(memory_format=torch.channels_last)).numpy()
                               for b in batches])


def weight_only(weights: Path, held_out, labels, bits: int, reference: np.ndarray) -> dict:
    model = prepare_for_inference(model_from_file(weights))
    quantized = logits(fake_quantize_weights(copy.deepcopy(model), bits), held_out)
    top1 = lambda x: 100 * float((x.argmax(1) == labels).mean())  # noqa: E731
    return {"sqnr_db": round(sqnr_db(reference, quantized), 2), "drop": round(top1(reference) - top1(quantized), 2)}


def run_point(position: str, phi: float, args, work: Path) -> dict:
    base = quick_spec(args.resolution).replace(name=f"quick_se_{position}", se_position=position)
    spec_file = work / f"{base.name}.txt"
    spec_file.write_text(base.to_text())
    out = work / f"{position}_phi{phi:+g}"
    start = time.perf_counter()
    summary = train(TrainConfig(data=args.data, out=str(out), model=str(spec_file), phi=phi, epochs=args.epochs,
                                seed=args.seed, progress=False))
    train_s = time.perf_counter() - start
    manifest = quantize(out, work / f"int8_{position}_{phi:+g}", samples=300, eval_samples=args.eval_samples)
    accuracy = manifest["quantization"]["accuracy"]
    model = model_from_file(out / "model.safetensors")
    _, held_out, labels = _data(args.data, model, 1, args.eval_samples)
    reference = logits(prepare_for_inference(model_from_file(out / "model.safetensors")), held_out)
    spec = model.spec
    return {"se_position": position, "phi": phi, "resolution": spec.resolution, "blocks": spec.num_blocks,
            "params": summary["params"], "macs": summary["macs"], "fp32_top1": summary["test_top1"],
            "train_s": round(train_s, 1),
            "int8": {"sqnr_db": accuracy["logits_sqnr_db"], "drop": accuracy["drop"],
                     "agreement": accuracy["top1_agreement"]},
            "w8": weight_only(out / "model.safetensors", held_out, labels, 8, reference),
            "w4": weight_only(out / "model.safetensors", held_out, labels, 4, reference)}


def markdown(info: dict, rows: list[dict]) -> str:
    lines = [f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, flags {' '.join(info['flags'])}; load "
             f"average {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end; {info['date']}; "
             f"wall {info['wall_s']:.0f} s; base effscale_quick at {info['base_resolution']} px; data {info['data']}, {info['epochs']} epochs, seed {info['seed']}, "
             f"{info['eval_samples']} held-out images.", "",
             "| SE | φ | res | blocks | params | MACs | fp32 top-1 | INT8 SQNR dB | INT8 drop | W8 SQNR dB | "
             "W4 SQNR dB | W4 drop |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['se_position']} | {r['phi']:+g} | {r['resolution']} | {r['blocks']} | "
                     f"{r['params'] / 1e3:.0f} K | {r['macs'] / 1e6:.1f} M | {r['fp32_top1']:.2f} | "
                     f"{r['int8']['sqnr_db']:.1f} | {r['int8']['drop']:+.2f} | {r['w8']['sqnr_db']:.1f} | "
                     f"{r['w4']['sqnr_db']:.1f} | {r['w4']['drop']:+.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    from effscale.plotting import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    for axis, key, title in ((axes[0], "int8", "INT8 (weights + activations)"), (axes[1], "w4", "4-bit weights")):
        for position, style in zip(SE_POSITIONS, ("o-", "s--")):
            points = [r for r in rows if r["se_position"] == position]
            axis.plot([r["phi"] for r in points], [r[key]["sqnr_db"] for r in points], style, label=f"SE {position}")
        axis.set_title(title)
        axis.set_xlabel("φ")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("logits SQNR (dB)")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phis", default="-2,-1,0,1,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=48,
                        help="the base's input side (48: phi = -2 still gives >= 32 px)")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    phis = [float(p) for p in args.phis.split(",")]
    warnings.filterwarnings("ignore")
    cpu, flags = cpu_description()
    info = {"cpu": cpu, "flags": flags, "usable_cpus": usable_cpus(), "loadavg_start": os.getloadavg(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "data": args.data, "epochs": args.epochs,
            "seed": args.seed, "eval_samples": args.eval_samples, "base_resolution": args.resolution}
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="effscale-sqnr-") as tmp:
        for position in SE_POSITIONS:
            for phi in phis:
                print(f"SE {position}, phi {phi:+g} ...", file=sys.stderr, flush=True)
                rows.append(run_point(position, phi, args, Path(tmp)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    info.update(loadavg_end=os.getloadavg(), wall_s=time.perf_counter() - start)
    table = markdown(info, rows)
    print(table)
    write_outputs({args.out: table, args.json: json.dumps({"machine": info, "rows": rows}, indent=1)})
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
