"""Quantization-aware training against post-training INT8, with a plain fine-tune as the control.

From one trained model (`--init`), three INT8 artifacts through the same quantizer (`quantize`,
same calibration and held-out images):
1. PTQ: the trained model quantized as it is;
2. control: fine-tuned `--epochs` more in float (same lr, same data), then quantized; this
   separates what extra training does from what simulating INT8 does;
3. QAT: fine-tuned `--epochs` with INT8 rounding simulated (`train --qat`), then quantized.
Reported: fp32 and INT8 top-1 of each on the held-out images, the drop against its own fp32 and
against the starting model's fp32. One seed: differences smaller than a few tenths of a point
are within what a different seed would move.

Run (from the repository root):
    .venv/bin/python benchmarks/qat.py --init RUN --data fashion-mnist --epochs 2 \
        --out benchmarks/results/qat.md --json benchmarks/results/qat.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from effscale.export.compare import available_format  # noqa: E402
from effscale.export.quantize import quantize  # noqa: E402
from effscale.train import TrainConfig, train  # noqa: E402
from effscale.train.recipe import get_recipe  # noqa: E402
from effscale.train.trainer import QAT_LR_FACTOR  # noqa: E402
from effscale.weights import model_from_file  # noqa: E402
from machine_info import cpu_description, write_outputs  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", required=True, help="a trained run directory or weights file")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["onnx", "openvino"], help="INT8 through ONNX Runtime's QDQ quantizer "
                        "or NNCF (default: NNCF where installed)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    start, load = time.perf_counter(), os.getloadavg()
    init = Path(args.init)
    weights = init / "model.safetensors" if init.is_dir() else init
    spec = model_from_file(weights).spec
    lr = get_recipe("quick", spec, None).lr * QAT_LR_FACTOR  # the same for the control and QAT
    format = args.format or available_format()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="effscale-qat-") as work:
        work = Path(work)

        def int8(source, name):
            manifest = quantize(source, work / f"{name}-int8", format=format, calib=args.data,
                                eval_samples=args.eval_samples)
            return manifest["quantization"]["accuracy"]

        rows["PTQ of the trained model"] = int8(weights, "ptq")
        common = dict(data=args.data, init=str(weights), epochs=args.epochs, lr=lr, seed=args.seed, progress=False)
        control = train(TrainConfig(out=str(work / "ft"), **common))
        rows[f"float fine-tune {args.epochs} epochs, then PTQ"] = int8(work / "ft", "ft")
        qat = train(TrainConfig(out=str(work / "qat"), qat=True, **common))
        rows[f"QAT {args.epochs} epochs, then INT8"] = qat["qat"]["int8"]
    start_fp32 = rows["PTQ of the trained model"]["fp32_top1"]
    cpu, flags = cpu_description()
    lines = [f"Machine: {cpu}, flags {' '.join(flags)}; load average {load[0]:.2f} at start; "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}; wall {time.perf_counter() - start:.0f} s. "
             f"Model {spec.name} ({spec.resolution} px) from {args.init}; data {args.data}; INT8 through {format}; "
             f"fine-tunes at lr {lr:g} (a tenth of the quick recipe's), seed {args.seed}; "
             f"{rows['PTQ of the trained model']['samples']} held-out images.", "",
             "| model | fp32 top-1 | INT8 top-1 | drop vs its fp32 | INT8 vs the starting fp32 | logits SQNR |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['fp32_top1']:.2f} | {row['int8_top1']:.2f} | {row['drop']:+.2f} | "
                     f"{row['int8_top1'] - start_fp32:+.2f} | {row['logits_sqnr_db']:.1f} dB |")
    lines += ["", f"QAT's simulated INT8 top-1 on the full test split during training: "
              f"{qat['qat']['simulated_int8_top1']:.2f} %; the control's fp32: {control['test_top1']:.2f} %."]
    report = "\n".join(lines) + "\n"
    print(report)
    write_outputs({args.out: report, args.json: json.dumps({"rows": rows, "lr": lr, "epochs": args.epochs}, indent=1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
