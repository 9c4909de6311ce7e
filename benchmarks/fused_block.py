"""What a tiled, fused depthwise + pointwise pair gains in torch on this CPU (issue 11, part 3).

The roofline (`effscale info --roofline`) says fusing a block's depthwise conv with its 1x1
projection saves writing and re-reading the depthwise output, and OpenVINO does not fuse these
pairs. This measures what the fusion gains when written in torch: the input is cut into bands
of rows (with the kernel's halo), and each band runs depthwise conv -> activation -> projection
while its depthwise output is still in cache, against the plain sequence on the whole tensor.
Lite-style pairs (ReLU6, no squeeze-excite: with SE the gate needs the whole depthwise output
before the projection can start), batch norm folded, fp32 channels_last, stride 1, at the shapes
B0 / Lite0 run them (224 px). Outputs are compared (max abs difference). Medians of interleaved
passes (effscale.timing.measure_in_passes).

Run (from the repository root, on a quiet machine):
    .venv/bin/python benchmarks/fused_block.py --out benchmarks/results/fused_block.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from effscale.timing import measure_in_passes  # noqa: E402
from machine_info import cpu_description, write_outputs  # noqa: E402

# (name, expanded channels, out channels, side, kernel): the stride-1 pairs of B0 / Lite0 at 224 px
PAIRS = [("stage2 (24)", 144, 24, 56, 3), ("stage3 (40)", 240, 40, 28, 5), ("stage4 (80)", 480, 80, 14, 3),
         ("stage5 (112)", 672, 112, 14, 5), ("stage6 (192)", 1152, 192, 7, 5)]
BANDS = (2, 4, 8, 16)


def plain(x, dw, dw_bias, pw, pw_bias, kernel):
    y = F.conv2d(x, dw, dw_bias, padding=kernel // 2, groups=dw.shape[0]).clamp_(0, 6)
    return F.conv2d(y, pw, pw_bias)


def banded(x, dw, dw_bias, pw, pw_bias, kernel, rows):
    """The same computation band by band: each band's depthwise output is consumed at once."""
    pad = kernel // 2
    padded = F.pad(x, (pad, pad, pad, pad))
    height = x.shape[2]
    out = torch.empty(x.shape[0], pw.shape[0], height, x.shape[3]).contiguous(memory_format=torch.channels_last)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        band = padded[:, :, top:bottom + 2 * pad]
        y = F.conv2d(band, dw, dw_bias, groups=dw.shape[0]).clamp_(0, 6)
        out[:, :, top:bottom] = F.conv2d(y, pw, pw_bias)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of timed calls per variant in all")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        for batch in [int(b) for b in args.batches.split(",")]:
            for name, channels, out_channels, side, kernel in PAIRS:
                x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)
                dw = torch.randn(channels, 1, kernel, kernel) * 0.2
                pw = (torch.randn(out_channels, channels, 1, 1) * channels ** -0.5).contiguous(
                    memory_format=torch.channels_last)
                dw_bias, pw_bias = torch.randn(channels) * 0.1, torch.randn(out_channels) * 0.1
                reference = plain(x, dw, dw_bias, pw, pw_bias, kernel)
                bands = [b for b in BANDS if b < side]
                calls = [lambda: plain(x, dw, dw_bias, pw, pw_bias, kernel)]
                calls += [lambda b=b: banded(x, dw, dw_bias, pw, pw_bias, kernel, b) for b in bands]
                error = max(float((banded(x, dw, dw_bias, pw, pw_bias, kernel, b) - reference).abs().max())
                            for b in bands)
                timed = measure_in_passes([(calls, args.budget)], passes=args.passes, seed=0)[0]
                best = min(range(len(bands)), key=lambda i: timed[i + 1].median_ms)
                rows.append({"pair": name, "batch": batch, "side": side, "kernel": kernel,
                             "plain_ms": timed[0].median_ms, "bands": {b: timed[i + 1].median_ms
                                                                      for i, b in enumerate(bands)},
                             "best_rows": bands[best], "best_ms": timed[best + 1].median_ms, "max_abs_diff": error})
                print(f"{name} b{batch}: plain {timed[0].median_ms:.3f} ms, best banded "
                      f"{timed[best + 1].median_ms:.3f} ms ({bands[best]} rows)", file=sys.stderr)
    cpu, flags = cpu_description()
    lines = [f"Machine: {cpu}, flags {' '.join(flags)}; torch {torch.__version__}, {args.threads} threads, fp32 "
             f"channels_last; load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}. Medians of {args.passes} interleaved passes.",
             "", "| pair (expanded -> out) | batch | side | k | plain ms | best banded ms (rows) | banded / plain | "
                 "max abs diff |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['batch']} | {r['side']} | {r['kernel']} | {r['plain_ms']:.3f} | "
                     f"{r['best_ms']:.3f} ({r['best_rows']}) | {r['best_ms'] / r['plain_ms']:.2f} | "
                     f"{r['max_abs_diff']:.1e} |")
    report = "\n".join(lines) + "\n"
    print(report)
    write_outputs({args.out: report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
