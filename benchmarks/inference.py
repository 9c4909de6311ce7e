"""CPU inference latency: effscale side by side with timm and torchvision, in one run.

Cases: EfficientNet-B0 at 224 px, batch 1 and 32; EfficientNet-B3 at 300 px, batch 8.
Every implementation runs the same input in eval mode under `torch.inference_mode()`:

  eager                fp32, NCHW: what a user gets without doing anything
  channels_last        model and input in channels_last
  channels_last+bf16   the above under torch.autocast("cpu", dtype=torch.bfloat16)

effscale also runs its recommended path, `effscale.nn.prepare_for_inference` (eval, BN folded,
in-place SE gate, channels_last), in fp32 and with `bf16=True`.

The references' best honest configuration is compiled: by default every implementation also runs
torch.compile(channels_last model, options={"freezing": True}) (Inductor freezing folds BN into the
convs, as effscale's recommended path does by hand), and effscale its recommended path compiled the
same way. The compiled bf16 rows (autocast for the references) are added where the CPU computes
bf16 natively (AVX512-BF16 / AMX), or with --compile-bf16; elsewhere bf16 is emulated and nobody
would deploy it. Each compiled row's first call (the compilation) is reported. --no-compile
drops the compiled rows (--quick drops them unless --compile is given). --keep-freed-memory
tunes glibc malloc for every row (a deployment setting, not a default; it shows how much of each
call is page faults).

Per case, every (implementation, configuration) is warmed up, then timed once per round for
N rounds; the order inside a round is shuffled so that drift (thermal, other processes) spreads
over all rows instead of biasing the ones that run last. Reported: median, IQR and min/max.
Ratios are speedups (reference median / row median) against the fastest timm/torchvision
eager row and against the fastest timm/torchvision row of any configuration.

Run (from the repository root; timm/torchvision need the shim under a CPU-only torch):
    PYTHONPATH=tests/refshim .venv/bin/python benchmarks/inference.py \
        --out benchmarks/results/inference.md --json benchmarks/results/inference.json
Weights are random (pretrained=False / weights=None): latency does not depend on them.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub; weights are random anyway

import torch  # noqa: E402
from machine_info import cpu_description, usable_cpus  # noqa: E402

import effscale  # noqa: E402
from effscale.nn import prepare_for_inference  # noqa: E402
from effscale.nn.inference import native_bf16  # noqa: E402

CASES = [("efficientnet_b0", 224, 1), ("efficientnet_b0", 224, 32), ("efficientnet_b3", 300, 8)]
REFERENCES = ("timm", "torchvision")
TARGET_VS_EAGER, TARGET_VS_BEST = 1.3, 1.0
# Timed rounds per case: batch 1 calls are short and jittery, so they get more rounds.
ROUNDS = {"full": {1: 60, "default": 12}, "quick": {1: 12, "default": 3}}
WARMUP = {"full": 3, "quick": 1}


# -- models ------------------------------------------------------------------------------------
def build(impl: str, name: str) -> torch.nn.Module:
    if impl == "effscale":
        return effscale.create_model(name)
    if impl == "timm":
        import timm
        return timm.create_model(name, pretrained=False)
    if impl == "torchvision":
        import torchvision
        return getattr(torchvision.models, name)(weights=None)
    raise ValueError(f"unknown implementation {impl!r}")


@dataclass
class Runner:
    impl: str
    config: str
    call: Callable[[], torch.Tensor]
    samples_ms: list[float] = field(default_factory=list)
    first_call_s: float = 0.0


def make_runners(name: str, x: torch.Tensor, compile_fp32: bool, compile_bf16: bool) -> list[Runner]:
    x_cl = x.contiguous(memory_format=torch.channels_last)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731

    def run(model, inp, autocast=False):
        def call():
            with bf16() if autocast else nullcontext():
                return model(inp)
        return call

    def compiled(model):
        return torch.compile(model, options={"freezing": True})

    runners = []
    for impl in ("effscale",) + REFERENCES:
        base = build(impl, name).eval()
        cl = lambda: copy.deepcopy(base).to(memory_format=torch.channels_last)  # noqa: E731
        runners += [Runner(impl, "eager", run(copy.deepcopy(base), x)),
                    Runner(impl, "channels_last", run(cl(), x_cl)),
                    Runner(impl, "channels_last+bf16", run(cl(), x_cl, autocast=True))]
        if impl == "effscale":
            runners += [Runner(impl, "recommended", run(prepare_for_inference(copy.deepcopy(base)), x_cl)),
                        Runner(impl, "recommended+bf16",
                               run(prepare_for_inference(copy.deepcopy(base), bf16=True), x_cl))]
            if compile_fp32:
                runners.append(Runner(impl, "recommended+compile",
                                      run(compiled(prepare_for_inference(copy.deepcopy(base))), x_cl)))
            if compile_bf16:
                runners.append(Runner(impl, "recommended+bf16+compile",
                                      run(compiled(prepare_for_inference(copy.deepcopy(base), bf16=True)), x_cl)))
        else:
            if compile_fp32:
                runners.append(Runner(impl, "channels_last+compile", run(compiled(cl()), x_cl)))
            if compile_bf16:
                runners.append(Runner(impl, "channels_last+bf16+compile", run(compiled(cl()), x_cl, autocast=True)))
    return runners


# -- measuring ---------------------------------------------------------------------------------
def check_outputs(runners: list[Runner]) -> dict:
    """effscale's faster paths against its own eager fp32 logits (same weights)."""
    ours = {r.config: r for r in runners if r.impl == "effscale"}
    with torch.inference_mode():
        reference = ours["eager"].call().float()
        checks = {}
        for config, runner in ours.items():
            if config == "eager":
                continue
            out = runner.call().float()
            checks[config] = {
                "max_rel_err": float((out - reference).abs().max() / reference.abs().max()),
                "top1_agreement": float((out.argmax(1) == reference.argmax(1)).float().mean()),
            }
    return checks


def measure(runners: list[Runner], warmup: int, rounds: int, seed: int, pause_s: float = 0.0) -> None:
    """`pause_s` before every timed call (benchmarks/deploy.py: lets other runtimes' threads stop spinning)."""
    with torch.inference_mode():
        for runner in runners:  # first call separately: it includes compilation where there is one
            start = time.perf_counter()
            runner.call()
            runner.first_call_s = time.perf_counter() - start
            for _ in range(warmup):
                runner.call()
        order = list(runners)
        shuffle = random.Random(seed).shuffle
        gc.collect()
        gc.disable()
        try:
            for _ in range(rounds):
                shuffle(order)
                for runner in order:
                    if pause_s:
                        time.sleep(pause_s)
                    start = time.perf_counter()
                    runner.call()
                    runner.samples_ms.append((time.perf_counter() - start) * 1e3)
        finally:
            gc.enable()


def summarize(runners: list[Runner], name: str, resolution: int, batch: int) -> list[dict]:
    rows = []
    for r in runners:
        s = sorted(r.samples_ms)
        q1, _, q3 = statistics.quantiles(s, n=4) if len(s) > 1 else (s[0], s[0], s[0])
        median = statistics.median(s)
        rows.append({"model": name, "resolution": resolution, "batch": batch, "impl": r.impl,
                     "config": r.config, "median_ms": median, "q1_ms": q1, "q3_ms": q3, "min_ms": s[0],
                     "max_ms": s[-1], "images_per_s": batch / median * 1e3, "rounds": len(s),
                     "first_call_s": r.first_call_s, "samples_ms": r.samples_ms})
    refs = [row for row in rows if row["impl"] in REFERENCES]
    ref_eager = min((row for row in refs if row["config"] == "eager"), key=lambda row: row["median_ms"])
    ref_best = min(refs, key=lambda row: row["median_ms"])
    precision = lambda row: "bf16" if "bf16" in row["config"] else "fp32"  # noqa: E731
    for row in rows:
        ref_same = min((r for r in refs if precision(r) == precision(row)), key=lambda r: r["median_ms"])
        row["precision"] = precision(row)
        row["vs_ref_eager"] = ref_eager["median_ms"] / row["median_ms"]
        row["vs_ref_best"] = ref_best["median_ms"] / row["median_ms"]
        row["vs_ref_best_same_precision"] = ref_same["median_ms"] / row["median_ms"]
        row["ref_eager"] = f"{ref_eager['impl']} {ref_eager['config']}"
        row["ref_best"] = f"{ref_best['impl']} {ref_best['config']}"
        row["ref_best_same_precision"] = f"{ref_same['impl']} {ref_same['config']}"
    return rows


# -- machine -----------------------------------------------------------------------------------
def machine(threads: int) -> dict:
    cpu, flags = cpu_description()
    versions = {"torch": torch.__version__, "effscale": effscale.__version__}
    for module in REFERENCES:
        try:
            versions[module] = __import__(module).__version__
        except ImportError as error:  # reported, and the run stops in main()
            versions[module] = f"unavailable ({error})"
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cpu_flags": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "loadavg_start": os.getloadavg(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


# -- reporting ---------------------------------------------------------------------------------
def markdown(info: dict, rows: list[dict], checks: dict, args: argparse.Namespace) -> str:
    v = info["versions"]
    lines = [
        f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, flags {' '.join(info['cpu_flags'])}; "
        f"torch {v['torch']} (capability {info['torch_cpu_capability']}), timm {v['timm']}, "
        f"torchvision {v['torchvision']}, effscale {v['effscale']}; {info['threads']} threads; "
        f"malloc {info['malloc']}; "
        f"load average {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end; "
        f"{info['date']}; mode {'quick' if args.quick else 'full'}; wall {info['wall_s']:.0f} s.",
        "",
        "Median of interleaved rounds, IQR and min-max in ms. Ratios are speedups against the fastest "
        "timm/torchvision eager fp32 row (\"vs ref eager\") and the fastest timm/torchvision row of any "
        "configuration (\"vs ref best\"), compiled ones included; \"vs ref fp32/bf16\": against the fastest "
        "reference row of the row's own precision. First call: seconds, the compilation for compiled rows. "
        f"Compiled rows: fp32 {'yes' if info['compiled_rows']['fp32'] else 'no'}, bf16 "
        f"{'yes' if info['compiled_rows']['bf16'] else 'no'}"
        + ("" if info["mkldnn_bf16_supported"] else " (this CPU has no native bf16: bf16 rows are emulated)") + ".",
        "",
        "| model | batch | impl | config | median ms | IQR ms | min-max ms | img/s | vs ref eager | vs ref best "
        "| vs ref same precision | first call s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} @{row['resolution']} | {row['batch']} | {row['impl']} | {row['config']} | "
            f"{row['median_ms']:.1f} | {row['q1_ms']:.1f}-{row['q3_ms']:.1f} | "
            f"{row['min_ms']:.1f}-{row['max_ms']:.1f} | {row['images_per_s']:.1f} | "
            f"{row['vs_ref_eager']:.2f}x | {row['vs_ref_best']:.2f}x | {row['vs_ref_best_same_precision']:.2f}x | "
            f"{row['first_call_s']:.1f} |")
    lines += ["", f"Targets (effscale recommended path): >= {TARGET_VS_EAGER}x vs ref eager, "
              f">= {TARGET_VS_BEST}x vs ref best.", ""]
    for (name, resolution, batch), case_checks in checks.items():
        case_rows = [r for r in rows if (r["model"], r["resolution"], r["batch"]) == (name, resolution, batch)]
        ref = case_rows[0]
        lines.append(f"- {name} @{resolution} batch {batch} (ref eager: {ref['ref_eager']}, "
                     f"ref best: {ref['ref_best']}):")
        for row in case_rows:
            if row["impl"] != "effscale" or not row["config"].startswith("recommended"):
                continue
            verdict = {(True, True): "meets both targets", (True, False): "misses the ref-best target",
                       (False, True): "misses the ref-eager target", (False, False): "misses both targets"}[
                (row["vs_ref_eager"] >= TARGET_VS_EAGER, row["vs_ref_best"] >= TARGET_VS_BEST)]
            check = case_checks[row["config"]]
            lines.append(f"  - {row['config']}: {row['vs_ref_eager']:.2f}x / {row['vs_ref_best']:.2f}x, "
                         f"{verdict} ({row['vs_ref_best_same_precision']:.2f}x vs the best {row['precision']} "
                         f"ref, {row['ref_best_same_precision']}); logits vs effscale eager: max rel err "
                         f"{check['max_rel_err']:.1e}, top-1 agreement {check['top1_agreement']:.0%}"
                         + (f"; first call {row['first_call_s']:.1f} s" if "compile" in row["config"] else ""))
    return "\n".join(lines) + "\n"


def keep_freed_memory() -> None:
    """glibc: never mmap, never trim, so freed activations are reused instead of page-faulted in again.

    Every large tensor (above glibc's 128 KiB-32 MiB mmap threshold) is otherwise a fresh mmap whose
    pages fault in on first write; in a VM that dominated batch-32 calls. Process-wide, so it applies
    to every row alike; same effect as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 in the
    environment (or, roughly, THP_MEM_ALLOC_ENABLE=1, or jemalloc/tcmalloc preloaded).
    """
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    if not (libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1)):
        raise SystemExit("--keep-freed-memory: mallopt failed (needs glibc)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test (~1 min)")
    parser.add_argument("--repeats", type=int, help="timed rounds per case (default: 60 at batch 1, 12 otherwise; "
                        "--quick: 12 and 3)")
    parser.add_argument("--warmup", type=int, help="untimed calls per row after the first (default 3, --quick 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--case", action="append", metavar="MODEL:RES:BATCH",
                        help="run only these cases (repeatable), e.g. efficientnet_b0:224:1")
    parser.add_argument("--no-compile", action="store_true",
                        help="drop the torch.compile(freezing) rows (the default compiles every implementation: "
                             "several minutes of compiling)")
    parser.add_argument("--compile", action="store_true", help="with --quick: keep the compiled rows")
    parser.add_argument("--compile-bf16", action="store_true",
                        help="compiled bf16 rows even where the CPU has no native bf16")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="tune glibc malloc to reuse freed memory (no mmap/trim) for every row: shows how "
                             "much of the time is page faults; not the default a user gets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the markdown table here (always printed)")
    parser.add_argument("--json", type=Path, help="write all results, samples included, as JSON here")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if args.threads < 1:
        parser.error(f"--threads={args.threads} must be >= 1")
    return args


def parse_case(text: str) -> tuple[str, int, int]:
    try:
        name, resolution, batch = text.split(":")
        return name, int(resolution), int(batch)
    except ValueError:
        raise SystemExit(f"--case {text!r}: expected MODEL:RES:BATCH, e.g. efficientnet_b0:224:1") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    info = machine(args.threads)
    info["malloc"] = "no mmap, no trim (--keep-freed-memory)" if args.keep_freed_memory else "default"
    missing = [m for m in REFERENCES if info["versions"][m].startswith("unavailable")]
    if missing:
        print(f"cannot import {', '.join(missing)}: under a CPU-only torch run with "
              "PYTHONPATH=tests/refshim (see Makefile `bench`)", file=sys.stderr)
        return 2
    cases = [parse_case(c) for c in args.case] if args.case else CASES
    compile_fp32 = not args.no_compile and (args.compile or not args.quick)
    compile_bf16 = compile_fp32 and (args.compile_bf16 or info["mkldnn_bf16_supported"] and native_bf16())
    info["compiled_rows"] = {"fp32": compile_fp32, "bf16": compile_bf16}
    start = time.perf_counter()
    rows, checks = [], {}
    for name, resolution, batch in cases:
        torch.manual_seed(args.seed)
        x = torch.randn(batch, 3, resolution, resolution)
        runners = make_runners(name, x, compile_fp32, compile_bf16)
        rounds = args.repeats or ROUNDS[mode].get(batch, ROUNDS[mode]["default"])
        warmup = WARMUP[mode] if args.warmup is None else args.warmup
        print(f"{name} @{resolution} batch {batch}: {len(runners)} rows x {rounds} rounds ...",
              file=sys.stderr, flush=True)
        measure(runners, warmup, rounds, args.seed)
        checks[(name, resolution, batch)] = check_outputs(runners)
        rows += summarize(runners, name, resolution, batch)
        del runners
        gc.collect()
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - start
    table = markdown(info, rows, checks, args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": info, "mode": mode, "targets": {"vs_ref_eager": TARGET_VS_EAGER,
                                                              "vs_ref_best": TARGET_VS_BEST},
                   "rows": rows, "checks": [{"model": n, "resolution": r, "batch": b, "configs": c}
                                            for (n, r, b), c in checks.items()]}
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
