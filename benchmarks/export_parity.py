"""Export every named family member to ONNX and OpenVINO IR and record the parity check of each.

`effscale.export.export` checks parity on every export (the exported model against the PyTorch
model on a fixed batch at the member's own resolution); this script runs it for B0-B8, L2 and
Lite0-4 with random weights whose batch-norm statistics look trained (small running variances,
where a wrong BN eps or padding would show), and tabulates max abs / relative error, top-1
agreement, export time and artifact size. The tests do the same on tiny networks; this is the
whole family at full size, too slow for the suite.

    .venv/bin/python benchmarks/export_parity.py --out benchmarks/results/export_parity.md \
        --json benchmarks/results/export_parity.json
    .venv/bin/python benchmarks/export_parity.py --models efficientnet_b0,efficientnet_lite0 --formats onnx
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_description, usable_cpus  # noqa: E402

import effscale  # noqa: E402
from effscale.export import export  # noqa: E402


def trained_looking(model: torch.nn.Module, seed: int = 0, unit_bn: bool = False) -> torch.nn.Module:
    """Small running variances (0.01-0.1), where the BN eps matters. By default the BN scale is
    ~1, so activations grow layer after layer (a hard case for fp32: PyTorch's own fp32 error grows
    too, and EfficientNet-L2 overflows); `unit_bn` scales each channel by sqrt(var) instead, as
    trained networks roughly do, keeping activations near unit size at any depth."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.09 + 0.01)
            gain = module.running_var.sqrt() if unit_bn else 1.0
            module.weight.data.copy_((1 + 0.1 * torch.randn(n, generator=generator)) * gain)
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(effscale.list_models()))
    parser.add_argument("--formats", default="onnx,openvino")
    parser.add_argument("--unit-bn", action="store_true", help="BN scaled to keep activations near unit size "
                                                               "(see trained_looking)")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    cpu, flags = cpu_description()
    load = os.getloadavg()[0]
    rows = []
    started = time.perf_counter()
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = trained_looking(effscale.create_model(name), unit_bn=args.unit_bn)
        for format in args.formats.split(","):
            directory = Path(tempfile.mkdtemp()) / "artifact"
            tick = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    manifest = export(model, directory, format=format)
                parity, error = manifest["parity"], None
            except Exception as failure:  # recorded, not hidden: a failed parity check is a row too
                parity, error = None, f"{type(failure).__name__}: {failure}"
            seconds = time.perf_counter() - tick
            size = sum(p.stat().st_size for p in directory.iterdir() if p.name != "model.safetensors") \
                if directory.exists() else 0
            shutil.rmtree(directory.parent, ignore_errors=True)
            row = {"model": name, "resolution": model.spec.resolution, "format": format, "seconds": round(seconds, 1),
                   "bytes": size, "error": error, **({k: parity[k] for k in ("max_abs", "max_rel", "top1_agreement",
                                                                             "passed", "torch_fp32_rel",
                                                                             "tolerance")} if parity else {}),
                   "runtime": parity["runtime"] if parity else None}
            rows.append(row)
            print(f"{name} {format}: " + (f"max rel {row['max_rel']:.2e}, top-1 {row['top1_agreement']:.0%}, "
                                          f"{seconds:.0f} s" if parity else error), flush=True)
    wall = time.perf_counter() - started
    header = ((f"BN statistics: {'unit-scaled (--unit-bn)' if args.unit_bn else 'growing (default)'}. ")
              + f"Machine: {cpu}, {usable_cpus()} usable CPUs, flags {' '.join(flags)}; torch {torch.__version__}; "
              f"load average {load:.2f} at start; {time.strftime('%Y-%m-%dT%H:%M:%S')}; wall {wall:.0f} s.")
    lines = [header, "", "Errors against PyTorch fp32 on the fixed parity batch (2 images), relative to the largest "
             "|output|; 'torch fp32 vs fp64': PyTorch's own fp32 error against the same model in fp64 (the "
             "check allows the larger of 1e-3 and 4x that).", "",
             "| model | res | format | max abs error | max rel error | torch fp32 vs fp64 | top-1 agreement | parity | "
             "export s | file MB |", "|---|---:|---|---:|---:|---:|---:|---|---:|---:|"]
    for row in rows:
        if row["error"]:
            lines.append(f"| {row['model']} | {row['resolution']} | {row['format']} | | | | | FAILED: "
                         f"{row['error'][:120]} | {row['seconds']} | |")
            continue
        lines.append(f"| {row['model']} | {row['resolution']} | {row['format']} | {row['max_abs']:.2e} | "
                     f"{row['max_rel']:.2e} | {row['torch_fp32_rel']:.1e} | {row['top1_agreement']:.0%} | "
                     f"{'passed' if row['passed'] else 'FAILED'} | {row['seconds']} | {row['bytes'] / 1e6:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    return 0 if all(row["error"] is None and row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
