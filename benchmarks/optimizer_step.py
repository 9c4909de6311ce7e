"""Optimizer step time for B0's parameters: the for-loop, foreach and fused implementations, side by side.

Random gradients on every parameter of effscale's EfficientNet-B0 (5.3 M parameters in ~200
tensors); each configuration steps `--repeats` times after 2 untimed steps, interleaved round by
round so drift spreads over all of them. Prints the median per configuration, in ms.

    .venv/bin/python benchmarks/optimizer_step.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import effscale

CONFIGS = {"SGD loop": ("SGD", {"foreach": False}), "SGD foreach": ("SGD", {"foreach": True}),
           "SGD fused": ("SGD", {"fused": True}), "AdamW loop": ("AdamW", {"foreach": False}),
           "AdamW foreach": ("AdamW", {"foreach": True}), "AdamW fused": ("AdamW", {"fused": True})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} at start; torch {torch.__version__}; {args.threads} threads")
    optimizers = {}
    for name, (kind, options) in CONFIGS.items():
        model = effscale.create_model("efficientnet_b0")
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        extra = {"momentum": 0.9, "nesterov": True} if kind == "SGD" else {}
        optimizers[name] = getattr(torch.optim, kind)(model.parameters(), lr=1e-3, weight_decay=1e-5,
                                                      **extra, **options)
        for _ in range(2):
            optimizers[name].step()
    times = {name: [] for name in optimizers}
    for _ in range(args.repeats):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    for name, samples in times.items():
        print(f"{name:14s} {statistics.median(samples) * 1e3:6.1f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
