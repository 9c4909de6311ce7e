"""CPU training throughput and peak memory: effscale side by side with timm, in one run.

Cases: EfficientNet-B0 at 224 px batch 32 and at 64 px batch 64, each in fp32 and under
torch.autocast("cpu", dtype=torch.bfloat16), model and input in channels_last. Rows:

  timm              timm.create_model("efficientnet_b0", pretrained=False)
  effscale          effscale.create_model("efficientnet_b0"): memory-efficient BN+activation and
                    SE gate (effscale/nn/memory.py), on by default while training
  effscale+ckpt     the same with model.set_grad_checkpointing() (per-stage checkpointing)
  timm+ckpt         timm with its own set_grad_checkpointing() (compare with effscale+ckpt)
  (opt-in) effscale-plain   effscale with memory_efficient_ops(False): the plain modules
  (opt-in) effscale+compile torch.compile(model) of effscale with the plain modules (the
                            memory-efficient autograd Functions would break the graph); its
                            warm-up steps include the compilation, reported as `warmup s`
  (opt-in) timm+compile     torch.compile(model) of timm
  (--contend) effscale@busy         effscale at --threads while another process keeps one core busy
                                    (a Python busy loop the parent starts beside the worker)
  (--contend) effscale@busy+auto    the same with effscale's thread governor (train/threads.py, the
                                    `effscale train` default): threads follow the cores left free

Both get the B0 recipe's regularisation (dropout 0.2, drop-path 0.2; timm's defaults are 0) so
they do the same work. One training step: zero_grad, forward, cross-entropy on random labels,
backward, SGD step (momentum 0.9). Weights and data are random; nothing is downloaded.

Every (case, precision, row) runs in a fresh worker process (`--worker`), so peak memory is
that configuration's own: the worker reports ru_maxrss (the process's peak resident set,
nothing subtracted) and, for reference, its resident set after model, optimiser and batch were
created (baseline). Every worker imports torch, timm and effscale, so baselines are level.
Throughput: warm-up steps, then the median of N timed steps. Jobs run in `--rounds` rounds
with the order shuffled each round (drift spreads over all rows); per row the timed steps of
all rounds are pooled and the peak is the median over rounds.

Run from the repository root (timm needs the shim under the CPU-only torch):
    PYTHONPATH=tests/refshim .venv/bin/python benchmarks/train.py \\
        --out benchmarks/results/train.md --json benchmarks/results/train.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub; weights are random anyway

CASES = [(224, 32), (64, 64)]
PRECISIONS = ("fp32", "bf16")
IMPLS = ("timm", "effscale", "effscale+ckpt", "timm+ckpt")
CONTEND_IMPLS = ("effscale@busy", "effscale@busy+auto")
ALL_IMPLS = IMPLS + ("effscale-plain", "effscale+compile", "timm+compile") + CONTEND_IMPLS
TARGET_THROUGHPUT, TARGET_MEMORY, TARGET_CASE = 1.5, 0.8, (224, 32)  # issue 9: >= 1.5x timm, <= 0.8x its peak
STEPS = {"full": {224: (2, 8), 64: (3, 20)}, "quick": {224: (1, 3), 64: (2, 5)}}  # (warm-up, timed) by resolution


# -- worker: one configuration in its own process --------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(job: dict) -> dict:
    import torch
    import timm

    import effscale
    from effscale.nn import memory

    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    impl, resolution, batch = job["impl"], job["resolution"], job["batch"]
    regularisation = dict(drop_rate=job["dropout"], drop_path_rate=job["drop_path"])
    if impl.startswith("timm"):
        model = timm.create_model("efficientnet_b0", pretrained=False, **regularisation)
    else:
        model = effscale.create_model("efficientnet_b0", dropout=job["dropout"], drop_path_rate=job["drop_path"])
    if impl.endswith("+ckpt"):
        model.set_grad_checkpointing(True)
    model = model.to(memory_format=torch.channels_last).train()
    forward = torch.compile(model) if impl.endswith("+compile") else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    x = torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if job["precision"] == "bf16" else nullcontext
    ops = memory.memory_efficient_ops(impl not in ("effscale-plain", "effscale+compile"))
    governor = None
    if impl.endswith("+auto"):
        from effscale.train.threads import ThreadGovernor
        governor = ThreadGovernor(max_threads=job["threads"], interval_s=1.0)
    baseline = rss_bytes()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
        loss.backward()
        optimizer.step()
        if governor is not None:
            governor.poll()
        return float(loss)

    times, losses = [], []
    with ops:
        warmup_start = time.perf_counter()
        for _ in range(job["warmup"]):
            losses.append(step())
        warmup_s = time.perf_counter() - warmup_start
        for _ in range(job["steps"]):
            start = time.perf_counter()
            losses.append(step())
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"step_s": times, "warmup_s": warmup_s, "baseline_rss": baseline, "peak_rss": peak, "losses": losses,
            "finite": all(l == l and abs(l) != float("inf") for l in losses), "loadavg_end": os.getloadavg()[0],
            "threads_end": torch.get_num_threads()}


def run_job(job: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(job)]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if "@busy" in job["impl"] else None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if done.returncode != 0:
        raise SystemExit(f"worker {job} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- parent: schedule, aggregate, report ---------------------------------------------------------------
def machine(threads: int) -> dict:
    import torch
    import timm

    import effscale
    from machine_info import cpu_description, usable_cpus

    cpu, flags = cpu_description()
    return {
        "cpu": cpu,
        "usable_cpus": usable_cpus(),
        "cpu_flags": flags,
        "threads": threads,
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "effscale": effscale.__version__},
        "loadavg_start": os.getloadavg(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def summarize(results: dict, cases, precisions, impls) -> list[dict]:
    rows = []
    for resolution, batch in cases:
        for precision in precisions:
            group = []
            for impl in impls:
                runs = results[(resolution, batch, precision, impl)]
                steps = sorted(s for run in runs for s in run["step_s"])
                q1, _, q3 = statistics.quantiles(steps, n=4) if len(steps) > 1 else (steps[0],) * 3
                median = statistics.median(steps)
                group.append({
                    "resolution": resolution, "batch": batch, "precision": precision, "impl": impl,
                    "median_step_s": median, "q1_step_s": q1, "q3_step_s": q3, "min_step_s": steps[0],
                    "images_per_s": batch / median, "steps": len(steps),
                    "peak_rss": statistics.median(run["peak_rss"] for run in runs),
                    "peak_rss_runs": [run["peak_rss"] for run in runs],
                    "baseline_rss": statistics.median(run["baseline_rss"] for run in runs),
                    "warmup_s": statistics.median(run.get("warmup_s", 0.0) for run in runs),
                    "threads_end": [run.get("threads_end") for run in runs],
                    "finite": all(run["finite"] for run in runs), "runs": runs})
            timm_row = next((r for r in group if r["impl"] == "timm"), None)
            for row in group:
                row["throughput_vs_timm"] = row["images_per_s"] / timm_row["images_per_s"] if timm_row else None
                row["memory_vs_timm"] = row["peak_rss"] / timm_row["peak_rss"] if timm_row else None
            rows += group
    return rows


def markdown(info: dict, rows: list[dict], args) -> str:
    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    v = info["versions"]
    lines = [
        f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, flags {' '.join(info['cpu_flags'])}; "
        f"torch {v['torch']}, timm {v['timm']}, effscale {v['effscale']}; {info['threads']} thread(s); "
        f"load average {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end; "
        f"{info['date']}; {info['rounds']} round(s), {info['mode']} mode; wall {info['wall_s']:.0f} s.",
        "",
        "channels_last, SGD step, random data. Step time: median (IQR, min) over the timed steps of all rounds; "
        "img/s and 'vs timm' from the median. "
        "Peak RSS: ru_maxrss of the worker process (median over rounds), nothing subtracted; baseline: "
        "its RSS after model, optimiser and batch were created. Ratios against the timm row of the same case "
        "and precision.",
        "",
        "| case | precision | impl | step ms | IQR ms | min ms | img/s | vs timm | baseline MiB | peak MiB "
        "| peak vs timm | warmup s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = lambda x: f"{x:.2f}x" if x is not None else "-"  # noqa: E731
        lines.append(
            f"| B0 @{r['resolution']} batch {r['batch']} | {r['precision']} | {r['impl']} | "
            f"{r['median_step_s'] * 1e3:.0f} | {r['q1_step_s'] * 1e3:.0f}-{r['q3_step_s'] * 1e3:.0f} | "
            f"{r['min_step_s'] * 1e3:.0f} | {r['images_per_s']:.1f} | {ratio(r['throughput_vs_timm'])} | "
            f"{mib(r['baseline_rss'])} | {mib(r['peak_rss'])} | {ratio(r['memory_vs_timm'])} | {r['warmup_s']:.0f} |"
            + ("" if r["finite"] else " non-finite loss!"))
    quiet = {(r["resolution"], r["batch"], r["precision"]): r for r in rows if r["impl"] == "effscale"}
    busy_lines = [f"- B0 @{r['resolution']} batch {r['batch']} {r['precision']} {r['impl']}: "
                  f"{r['median_step_s'] / quiet[(r['resolution'], r['batch'], r['precision'])]['median_step_s']:.2f}x "
                  f"the quiet effscale step time, on {'/'.join(map(str, r['threads_end']))} thread(s) at the end"
                  for r in rows if "@busy" in r["impl"] and (r["resolution"], r["batch"], r["precision"]) in quiet]
    if busy_lines:
        lines += ["", "With one core kept busy by another process:", *busy_lines]
    lines += ["", f"Targets: throughput >= {TARGET_THROUGHPUT}x timm; peak memory <= {TARGET_MEMORY}x timm "
              f"at {TARGET_CASE[0]} px batch {TARGET_CASE[1]}.", ""]
    for r in rows:
        if r["impl"].startswith("timm") or r["throughput_vs_timm"] is None:
            continue
        speed = "meets" if r["throughput_vs_timm"] >= TARGET_THROUGHPUT else "misses"
        text = f"- B0 @{r['resolution']} batch {r['batch']} {r['precision']} {r['impl']}: throughput " \
               f"{r['throughput_vs_timm']:.2f}x ({speed})"
        if (r["resolution"], r["batch"]) == TARGET_CASE:
            memory_verdict = "meets" if r["memory_vs_timm"] <= TARGET_MEMORY else "misses"
            text += f", peak memory {r['memory_vs_timm']:.2f}x ({memory_verdict})"
        else:
            text += f", peak memory {r['memory_vs_timm']:.2f}x"
        lines.append(text)
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="few steps, one round: a smoke test")
    parser.add_argument("--rounds", type=int, help="rounds of all jobs, shuffled each round (default 2, --quick 1)")
    parser.add_argument("--steps", type=int, help="timed steps per job (default 8 at 224 px, 20 at 64 px)")
    parser.add_argument("--warmup", type=int, help="untimed steps per job first (default 2 at 224 px, 3 at 64 px)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--case", action="append", metavar="RES:BATCH", help="only these cases (repeatable)")
    parser.add_argument("--precision", action="append", choices=PRECISIONS, help="only these (repeatable)")
    parser.add_argument("--impl", action="append", choices=ALL_IMPLS,
                        help=f"rows (repeatable; default {', '.join(IMPLS)}); ratios need timm")
    parser.add_argument("--contend", action="store_true",
                        help="add effscale rows with another process keeping one core busy (fixed and auto threads)")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--drop-path", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the markdown table here (always printed)")
    parser.add_argument("--json", type=Path, help="write all results, per-step times included, as JSON here")
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be >= 1")
    return args


def parse_case(text: str) -> tuple[int, int]:
    try:
        resolution, batch = text.split(":")
        return int(resolution), int(batch)
    except ValueError:
        raise SystemExit(f"--case {text!r}: expected RES:BATCH, e.g. 224:32") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    try:
        info = machine(args.threads)
    except ImportError as error:
        print(f"cannot import {error.name}: under a CPU-only torch run with PYTHONPATH=tests/refshim",
              file=sys.stderr)
        return 2
    mode = "quick" if args.quick else "full"
    info["mode"] = mode
    cases = [parse_case(c) for c in args.case] if args.case else CASES
    precisions = tuple(args.precision or PRECISIONS)
    impls = tuple(dict.fromkeys((args.impl or list(IMPLS)) + (list(CONTEND_IMPLS) if args.contend else [])))
    rounds = info["rounds"] = args.rounds or (1 if args.quick else 2)
    jobs = []
    for resolution, batch in cases:
        warmup, steps = STEPS[mode][224 if resolution >= 160 else 64]
        for precision in precisions:
            for impl in impls:
                jobs.append({"impl": impl, "resolution": resolution, "batch": batch, "precision": precision,
                             "warmup": warmup if args.warmup is None else args.warmup,
                             "steps": args.steps or steps, "threads": args.threads, "seed": args.seed,
                             "dropout": args.dropout, "drop_path": args.drop_path})
    results: dict = {}
    start = time.perf_counter()
    shuffle = random.Random(args.seed).shuffle
    for round_index in range(rounds):
        order = list(jobs)
        shuffle(order)
        for number, job in enumerate(order, 1):
            print(f"round {round_index + 1}/{rounds} job {number}/{len(order)}: {job['impl']} "
                  f"@{job['resolution']} batch {job['batch']} {job['precision']} ...", file=sys.stderr, flush=True)
            key = (job["resolution"], job["batch"], job["precision"], job["impl"])
            results.setdefault(key, []).append(run_job(job))
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - start
    rows = summarize(results, cases, precisions, impls)
    table = markdown(info, rows, args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "rows": rows, "targets": {
            "throughput_vs_timm": TARGET_THROUGHPUT, "memory_vs_timm": TARGET_MEMORY,
            "case": list(TARGET_CASE)}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
