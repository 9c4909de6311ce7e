"""Deploy latency on this CPU: effscale's shipped paths side by side with timm's model converted the
usual way, in one run, with the roofline bound from `cost()`.

Cases: EfficientNet-B0 at 224 px batch 1 and 32, B3 at 300 px batch 8, Lite0 at 224 px batch 1.
Rows (every one runs the same random input; weights are random, latency does not depend on them):

  effscale torch fp32 / bf16   `prepare_for_inference` (BN folded, in-place SE, channels_last);
                               bf16 only where the CPU computes it natively
  effscale ort fp32 / int8     `effscale export --format onnx` on ONNX Runtime; INT8 = the QDQ model
                               `effscale quantize` writes (per-channel int8 weights, uint8 activations)
  effscale ov fp32 / bf16      `effscale export --format openvino`, float ops in fp32 / bf16, run by
                               effscale's OpenVINO runner (static shape per batch size; a batch of
                               >= `--threads` images split over that many streams)
  effscale ov int8             NNCF static INT8 on the IR (`effscale quantize --format openvino`),
                               float ops in bf16 where native
  effscale ov int8-weights     NNCF weight-only INT8 (`--weights-only`), activations bf16 where native
  timm ov fp32 / bf16          timm's model through `openvino.convert_model(torch.export(...))`,
                               compiled as OpenVINO's documentation shows (latency hint, one request)
  timm ov bf16 streams         the same model split over `--threads` streams as effscale's runner
                               does (batch > 1): timm's best OpenVINO configuration
  timm ort fp32                timm's model through `torch.onnx.export(dynamo=True)` on ONNX Runtime

OpenVINO rows are reshaped to the case's static input shape before compiling (the best OpenVINO
can do; timm's rows get the same), `--threads` threads; ONNX Runtime rows use
`--threads` intra-op threads. The INT8 models are calibrated on random images: their speed, not
their accuracy, is measured here (accuracy: benchmarks/int8_accuracy.py). The precision each
OpenVINO row actually ran is read back from the compiled model.

Timing: every row warmed up, then one call per row per round, rows shuffled inside each round
(drift spreads over all rows), N rounds, a 50 ms pause before each call (the previous row's
runtime threads stop spinning); median and IQR. Ratios: against the fastest timm row
of any runtime and precision ("vs timm best") and against timm on OpenVINO bf16 where the CPU has
native bf16 ("vs timm ov bf16", the issue's reference), else timm on OpenVINO fp32.

Roofline: per layer max(2 MACs / peak FLOP/s, bytes / bandwidth) from `cost(spec, dtype)` with the
peaks measured here by the device profiler's micro-benchmarks (torch matmul / conv, copy / add),
fp32 peaks for fp32 rows, bf16 peaks for bf16 rows; INT8 rows use int8 bytes and the bf16
compute peak (an int8 compute peak is not measured: their bound is a memory bound plus an
estimate). "roofline %" = bound / median: the fraction of the machine's peak the path reaches.

Peak memory (`--memory`): each row of the B0 batch-32 case alone in a fresh process, three calls;
the growth of the process's high-water mark (VmHWM) over its resident size after imports.

Run (from the repository root; timm needs the shim under a CPU-only torch):
    PYTHONPATH=tests/refshim .venv/bin/python benchmarks/deploy.py --memory \
        --out benchmarks/results/deploy.md --json benchmarks/results/deploy.json
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine_info import cpu_description, usable_cpus, write_outputs  # noqa: E402

import effscale  # noqa: E402
from effscale.export.runtimes import OPENVINO_HINTS  # noqa: E402

CASES = [("efficientnet_b0", 224, 1), ("efficientnet_b0", 224, 32), ("efficientnet_b3", 300, 8),
         ("efficientnet_lite0", 224, 1)]
TIMM_NAMES = {"efficientnet_b0": "efficientnet_b0", "efficientnet_b3": "efficientnet_b3",
              "efficientnet_lite0": "tf_efficientnet_lite0"}
MEMORY_CASE = ("efficientnet_b0", 224, 32)
ROUNDS = {"full": {1: 40, "default": 10}, "quick": {1: 8, "default": 3}}
TARGET_BATCHED, TARGET_BATCH1 = 1.5, 1.0


@dataclass
class Runner:
    impl: str
    config: str
    call: Callable[[], object]
    precision: str  # what ran: read back for OpenVINO
    dtype: str  # for the roofline: fp32 / bf16 / int8
    samples_ms: list[float] = field(default_factory=list)
    first_call_s: float = 0.0


# -- building the paths -----------------------------------------------------------------------------
def native_bf16() -> bool:
    from effscale.nn.inference import native_bf16 as native

    return native()


def artifacts(name: str, resolution: int, work: Path) -> dict[str, Path]:
    """Every model file the rows run, built once per model (the batch is dynamic in all of them)."""
    import timm
    from effscale.export import export
    from effscale.export.artifact import _write_model
    from effscale.export.openvino_int8 import quantize_ir
    from effscale.export.quantize import _quantize, has_vnni
    from onnxruntime import quantization

    files = {}
    torch.manual_seed(0)  # the same random weights as the torch rows (make_runners), so outputs compare
    model = effscale.create_model(name).eval()
    export(model, work / "onnx", format="onnx")
    export(model, work / "ov", format="openvino")
    files["ort fp32"], files["ov fp32"] = work / "onnx" / "model.onnx", work / "ov" / "model.xml"
    rng = np.random.default_rng(0)
    calibration = [rng.random((8, 3, resolution, resolution), dtype=np.float32) for _ in range(4)]
    prepared = work / "prepared.onnx"
    quantization.quant_pre_process(str(files["ort fp32"]), str(prepared), skip_symbolic_shape=True)
    files["ort int8"] = work / "int8.onnx"
    _quantize(quantization, prepared, files["ort int8"], calibration, {"reduce_range": not has_vnni()}, [])
    for mode, weights_only in (("ov int8", False), ("ov int8-weights", True)):
        files[mode] = work / f"{mode.replace(' ', '_')}.xml"
        quantize_ir(files["ov fp32"], files[mode], calibration, weights_only=weights_only, vnni=has_vnni())
    reference = timm.create_model(TIMM_NAMES[name], pretrained=False).eval()
    x = torch.randn(2, 3, resolution, resolution)  # batch 2: a batch of 1 would be specialised as static
    files["timm ort fp32"], files["timm ov fp32"] = work / "timm.onnx", work / "timm.xml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _write_model("onnx", reference, x, files["timm ort fp32"], ["logits"])
        _write_model("openvino", reference, x, files["timm ov fp32"], ["logits"])
    return files


def effscale_openvino(path: Path, x: np.ndarray, precision: str, threads: int):
    """effscale's own OpenVINO runner (what `effscale predict/eval` and `load_exported` use)."""
    from effscale.export.runtimes import openvino_runner

    run, ran = openvino_runner(path, precision, streams=threads)
    run(x)  # compiles this batch size (also done by the warm-up; here so that the first call is the same as timm's)
    return (lambda: run(x)), ran["precision"]


def openvino_call(path: Path, x: np.ndarray, precision: str, threads: int, streams: int = 1):
    """OpenVINO as its documentation shows it: compile for the input shape, one infer request (or,
    with `streams` > 1, the throughput hint and the batch split over that many async requests)."""
    import openvino as ov

    if streams > 1:
        from effscale.export.openvino_runtime import OpenVINOModel

        model = OpenVINOModel(ov, path, OPENVINO_HINTS[precision], streams)
        model(x)
        return (lambda: model(x)), ("bf16" if "bf" in str(model.precision()) else "fp32")
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: list(x.shape)})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_NUM_THREADS": threads})
    ran = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    request = compiled.create_infer_request()
    return (lambda: request.infer({0: x})), ("bf16" if "bfloat16" in ran or ran == "bf16" else "fp32")


def ort_call(path: Path, x: np.ndarray, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def make_runners(name: str, x: np.ndarray, files: dict[str, Path], threads: int, only: str | None = None):
    from effscale.nn import prepare_for_inference

    bf16 = native_bf16()
    rows = []
    float_ops = "bf16" if bf16 else "fp32"

    def add(impl, config, build, dtype):
        if only is None or f"{impl} {config}" == only:
            call, precision = build()
            rows.append(Runner(impl, config, call, precision, dtype))

    def torch_path(use_bf16):
        torch.manual_seed(0)  # the weights the artifacts were exported with
        model = prepare_for_inference(effscale.create_model(name), bf16=use_bf16)
        xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)

        def call():
            with torch.inference_mode():
                return model(xt)
        return call, "bf16" if use_bf16 else "fp32"

    add("effscale", "torch fp32", lambda: torch_path(False), "fp32")
    if bf16:
        add("effscale", "torch bf16", lambda: torch_path(True), "bf16")
    add("effscale", "ort fp32", lambda: (ort_call(files["ort fp32"], x, threads), "fp32"), "fp32")
    add("effscale", "ort int8", lambda: (ort_call(files["ort int8"], x, threads), "int8"), "int8")
    add("effscale", "ov fp32", lambda: effscale_openvino(files["ov fp32"], x, "fp32", threads), "fp32")
    if bf16:
        add("effscale", "ov bf16", lambda: effscale_openvino(files["ov fp32"], x, "bf16", threads), "bf16")
    for mode in ("ov int8", "ov int8-weights"):
        def build(mode=mode):
            call, ran = effscale_openvino(files[mode], x, float_ops, threads)
            return call, f"int8+{ran}" if mode == "ov int8" else f"int8 weights, {ran} activations"
        add("effscale", mode, build, "int8" if mode == "ov int8" else float_ops)
    add("timm", "ort fp32", lambda: (ort_call(files["timm ort fp32"], x, threads), "fp32"), "fp32")
    add("timm", "ov fp32", lambda: openvino_call(files["timm ov fp32"], x, "fp32", threads), "fp32")
    if bf16:
        add("timm", "ov bf16", lambda: openvino_call(files["timm ov fp32"], x, "bf16", threads), "bf16")
    if len(x) >= threads > 1:  # timm's best OpenVINO configuration at batch > 1: the same streams as ours
        best = "bf16" if bf16 else "fp32"
        add("timm", f"ov {best} streams", lambda: openvino_call(files["timm ov fp32"], x, best, threads, threads),
            best)
    return rows


# -- timing -------------------------------------------------------------------------------------------
PAUSE_S = 0.05


def measure(runners: list[Runner], warmup: int, rounds: int, seed: int) -> None:
    """benchmarks/inference.py's interleaved timing, with a pause before every timed call: the
    runtimes' worker threads spin for a while after a call (ONNX Runtime's intra-op spinning,
    OpenMP's spin-wait, OpenVINO's TBB arena), and a row timed right after another runtime's would
    compete with them."""
    from inference import measure as interleaved

    interleaved(runners, warmup, rounds, seed, pause_s=PAUSE_S)


# -- roofline -----------------------------------------------------------------------------------------
def measure_peaks() -> dict:
    from effscale.hardware.microbench import PLANS, bandwidth, peak_flops

    plan = PLANS["full"]
    peaks = {"fp32": (peak_flops("fp32", plan), bandwidth("fp32", plan))}
    if native_bf16():
        peaks["bf16"] = (peak_flops("bf16", plan), bandwidth("bf16", plan))
    peaks["int8"] = (peaks.get("bf16", peaks["fp32"])[0], peaks["fp32"][1])
    return peaks


def roofline_ms(name: str, batch: int, dtype: str, peaks: dict) -> float:
    flops, bandwidth = peaks[dtype]
    total = 0.0
    for layer in effscale.cost(name, batch=batch, dtype=dtype).layers:
        total += max(2 * layer.macs / flops, (layer.bytes_read + layer.bytes_written) / bandwidth)
    return total * 1e3


# -- does the runtime fuse depthwise + pointwise? --------------------------------------------------------
def openvino_fusion(path: Path, resolution: int, precision: str) -> dict:
    """Convs in the IR against convolution nodes in OpenVINO's compiled (runtime) graph, and how many
    runtime nodes carry more than one of the IR's convs (a fused conv pair)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: [1, 3, resolution, resolution]})
    ir_convs = sum(op.get_type_name() in ("Convolution", "GroupConvolution") for op in model.get_ordered_ops())
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision]})
    nodes = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    convs = [info["originalLayersNames"].astype(str) for info in nodes if info["layerType"].astype(str) == "Convolution"]
    return {"precision": precision, "ir_convs": ir_convs, "runtime_conv_nodes": len(convs),
            "runtime_nodes_with_two_convs": sum(names.count("aten.convolution") > 1 for names in convs)}


def fusion_report(name: str, files: dict, resolution: int, peaks: dict) -> dict:
    from effscale.hardware.roofline import roofline

    precisions = ["fp32"] + (["bf16"] if native_bf16() else [])
    found = [openvino_fusion(files["ov fp32"], resolution, p) for p in precisions]
    bound = {}
    for batch in (1, 32):
        flops, bandwidth = peaks["fp32"]
        view = roofline(name, peak_flops=flops, bandwidth=bandwidth, batch=batch)
        bound[batch] = {"bound_ms": view["bound_ms"], "fusion_ms_saved": view["fusion_ms_saved"],
                        "pairs": len(view["fusion"]), "pair": sorted({f["pair"] for f in view["fusion"]})}
    return {"openvino": found, "roofline_fp32": bound}


# -- memory -------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def memory_of_row(row: str, work: Path, threads: int) -> dict:
    """Run in a fresh process: one row of MEMORY_CASE, three calls; the growth of the high-water mark."""
    name, resolution, batch = MEMORY_CASE
    files = {key: Path(value) for key, value in json.loads((work / "files.json").read_text()).items()}
    x = np.random.default_rng(0).random((batch, 3, resolution, resolution), dtype=np.float32)
    before = _status_kib("VmRSS")
    runners = make_runners(name, x, files, threads, only=row)
    for _ in range(3):
        runners[0].call()
    return {"row": row, "peak_growth_mib": (_status_kib("VmHWM") - before) / 1024}


def measure_memory(rows: list[str], work: Path, threads: int) -> dict[str, float]:
    result = {}
    for row in rows:
        out = subprocess.run([sys.executable, __file__, "--memory-of", row, "--work", str(work),
                              "--threads", str(threads)], capture_output=True, text=True, check=True)
        result[row] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"]
    return result


# -- machine and report -------------------------------------------------------------------------------
def machine(threads: int) -> dict:
    import onnxruntime
    import openvino
    import timm

    cpu, flags = cpu_description()
    return {"cpu": cpu, "usable_cpus": usable_cpus(), "cpu_flags": flags, "threads": threads,
            "native_bf16": native_bf16(), "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "openvino": openvino.__version__, "timm": timm.__version__,
                         "effscale": effscale.__version__},
            "loadavg_start": os.getloadavg(), "date": datetime.datetime.now().isoformat(timespec="seconds")}


def _first_output(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.float().numpy()
    if isinstance(value, (list, tuple)):
        return _first_output(value[0])
    if isinstance(value, dict) or hasattr(value, "values"):  # OpenVINO's result map
        return np.asarray(list(value.values())[0])
    return np.asarray(value)


def check_outputs(runners: list[Runner]) -> dict[str, float]:
    """Every effscale row's logits against its torch fp32 row (same weights): a path that is fast
    because it computes garbage must show. Max error relative to the largest |logit|."""
    ours = {r.config: r for r in runners if r.impl == "effscale"}
    with torch.inference_mode():
        reference = _first_output(ours["torch fp32"].call())
        return {config: float(np.abs(_first_output(r.call()) - reference).max() / np.abs(reference).max())
                for config, r in ours.items()}


def summarize(runners: list[Runner], name: str, resolution: int, batch: int, peaks: dict,
              errors: dict[str, float]) -> list[dict]:
    rows = []
    for r in runners:
        s = sorted(r.samples_ms)
        q1, _, q3 = statistics.quantiles(s, n=4) if len(s) > 1 else (s[0], s[0], s[0])
        median = statistics.median(s)
        bound = roofline_ms(name, batch, r.dtype, peaks)
        rows.append({"model": name, "resolution": resolution, "batch": batch, "impl": r.impl, "config": r.config,
                     "ran": r.precision, "median_ms": median, "q1_ms": q1, "q3_ms": q3,
                     "images_per_s": batch / median * 1e3, "roofline_ms": bound, "roofline_fraction": bound / median,
                     "rounds": len(s), "first_call_s": r.first_call_s, "samples_ms": r.samples_ms,
                     "max_rel_err_vs_torch_fp32": errors.get(r.config) if r.impl == "effscale" else None})
    timm_rows = [row for row in rows if row["impl"] == "timm"]
    best = min(timm_rows, key=lambda row: row["median_ms"])
    reference = next((row for row in timm_rows if row["config"] == "ov bf16"),
                     next(row for row in timm_rows if row["config"] == "ov fp32"))
    for row in rows:
        row["vs_timm_best"] = best["median_ms"] / row["median_ms"]
        row["vs_timm_ov"] = reference["median_ms"] / row["median_ms"]
        row["timm_best"], row["timm_ov"] = f"timm {best['config']}", f"timm {reference['config']}"
    return rows


def markdown(info: dict, rows: list[dict], peaks: dict, memory: dict, args) -> str:
    v = info["versions"]
    peak_text = "; ".join(f"{k}: {f / 1e9:.0f} GFLOP/s, {b / 1e9:.1f} GB/s" for k, (f, b) in peaks.items())
    lines = [
        f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, flags {' '.join(info['cpu_flags'])}; "
        f"torch {v['torch']}, onnxruntime {v['onnxruntime']}, openvino {v['openvino']}, timm {v['timm']}, "
        f"effscale {v['effscale']}; {info['threads']} threads; load average {info['loadavg_start'][0]:.2f} at "
        f"start, {info['loadavg_end'][0]:.2f} at end; {info['date']}; mode {'quick' if args.quick else 'full'}; "
        f"wall {info['wall_s']:.0f} s. Roofline peaks measured here: {peak_text}.",
        "",
        "Median of interleaved rounds (IQR) in ms. \"ran\": the precision the runtime reports. Ratios are "
        "speedups against the fastest timm row and against timm on OpenVINO "
        f"{'bf16' if info['native_bf16'] else 'fp32'}. Roofline %: the cost() bound over the median. \"rel err\": the row's logits against effscale's torch fp32 logits on the same input and weights, relative to the largest |logit| (INT8 rows: random weights and random calibration, so this shows a path computes the network, not its accuracy).",
        "",
        "| model | batch | impl | path | ran | median ms | IQR ms | img/s | vs timm best | vs timm ov | "
        "roofline ms | roofline % | rel err vs torch fp32 |" + (" peak MiB |" if memory else ""),
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if memory else ""),
    ]
    for row in rows:
        key = f"{row['impl']} {row['config']}"
        mem = ""
        if memory:
            here = (row["model"], row["resolution"], row["batch"]) == MEMORY_CASE and key in memory
            mem = f" {memory[key]:.0f} |" if here else " |"
        lines.append(f"| {row['model']} @{row['resolution']} | {row['batch']} | {row['impl']} | {row['config']} | "
                     f"{row['ran']} | {row['median_ms']:.1f} | {row['q1_ms']:.1f}-{row['q3_ms']:.1f} | "
                     f"{row['images_per_s']:.1f} | {row['vs_timm_best']:.2f}x | {row['vs_timm_ov']:.2f}x | "
                     f"{row['roofline_ms']:.1f} | {100 * row['roofline_fraction']:.0f} % | "
                     f"{'' if row['max_rel_err_vs_torch_fp32'] is None else format(row['max_rel_err_vs_torch_fp32'], '.1e')} |"
                     f"{mem}")
    lines += ["", f"Targets: effscale's best shipped path >= {TARGET_BATCHED}x timm's best OpenVINO row at batch > 1, "
              f">= {TARGET_BATCH1}x at batch 1.", ""]
    cases = dict.fromkeys((row["model"], row["resolution"], row["batch"]) for row in rows)
    for case in cases:
        here = [row for row in rows if (row["model"], row["resolution"], row["batch"]) == case]
        ours = min((row for row in here if row["impl"] == "effscale"), key=lambda row: row["median_ms"])
        timm_ov = min((row for row in here if row["impl"] == "timm" and row["config"].startswith("ov")),
                      key=lambda row: row["median_ms"])
        ratio = timm_ov["median_ms"] / ours["median_ms"]
        target = TARGET_BATCHED if case[2] > 1 else TARGET_BATCH1
        lines.append(f"- {case[0]} @{case[1]} batch {case[2]}: best effscale path {ours['config']} ({ours['ran']}) "
                     f"{ours['median_ms']:.1f} ms vs timm {timm_ov['config']} {timm_ov['median_ms']:.1f} ms: "
                     f"{ratio:.2f}x, {'meets' if ratio >= target else 'misses'} the {target}x target; "
                     f"{ours['vs_timm_ov']:.2f}x timm's default {ours['timm_ov']}")
    return "\n".join(lines) + "\n"


def fusion_markdown(fusion: dict) -> str:
    lines = ["", "Depthwise + pointwise fusion:"]
    for name, report in fusion.items():
        seen = "; ".join(f"{f['precision']}: {f['ir_convs']} convs in the IR -> {f['runtime_conv_nodes']} conv nodes at "
                         f"run time, {f['runtime_nodes_with_two_convs']} holding two convs" for f in report["openvino"])
        bound = "; ".join(f"batch {b}: {r['fusion_ms_saved']:.2f} of {r['bound_ms']:.2f} ms ({r['pairs']} "
                          f"{'/'.join(r['pair'])} pairs)" for b, r in report["roofline_fp32"].items())
        lines.append(f"- {name}: OpenVINO {seen}. Roofline time fused pairs would save (fp32): {bound}.")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test")
    parser.add_argument("--repeats", type=int, help="timed rounds per case (default 40 at batch 1, 10 otherwise)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", action="append", metavar="MODEL:RES:BATCH", help="only these cases")
    parser.add_argument("--memory", action="store_true", help="peak memory of each row (B0 batch 32), one process each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if args.threads < 1:
        parser.error(f"--threads={args.threads} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    if args.memory_of:
        print(json.dumps(memory_of_row(args.memory_of, args.work, args.threads)))
        return 0
    mode = "quick" if args.quick else "full"
    cases = CASES
    if args.case:
        from inference import parse_case

        cases = [parse_case(c) for c in args.case]
    info = machine(args.threads)
    start = time.perf_counter()
    peaks = measure_peaks()
    rows, memory, fusion = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="effscale-deploy-") as tmp:
        work = Path(tmp)
        built: dict[tuple[str, int], dict] = {}
        for name, resolution, batch in cases:
            key = (name, resolution)
            if key not in built:
                print(f"exporting and quantizing {name} @{resolution} ...", file=sys.stderr, flush=True)
                (work / name).mkdir(exist_ok=True)
                built[key] = artifacts(name, resolution, work / name)
                fusion[name] = fusion_report(name, built[key], resolution, peaks)
            x = np.random.default_rng(args.seed).standard_normal((batch, 3, resolution, resolution), dtype=np.float32)
            runners = make_runners(name, x, built[key], args.threads)
            rounds = args.repeats or ROUNDS[mode].get(batch, ROUNDS[mode]["default"])
            print(f"{name} @{resolution} batch {batch}: {len(runners)} rows x {rounds} rounds ...", file=sys.stderr,
                  flush=True)
            measure(runners, 2 if mode == "full" else 1, rounds, args.seed)
            rows += summarize(runners, name, resolution, batch, peaks, check_outputs(runners))
            del runners
            gc.collect()
        if args.memory:
            name, resolution, _ = MEMORY_CASE
            files = built.get((name, resolution)) or artifacts(name, resolution, work / name)
            (work / "files.json").write_text(json.dumps({k: str(v) for k, v in files.items()}))
            keys = [f"{row['impl']} {row['config']}" for row in rows if row["model"] == name]
            print(f"peak memory of {len(set(keys))} rows, one process each ...", file=sys.stderr, flush=True)
            memory = measure_memory(list(dict.fromkeys(keys)), work, args.threads)
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - start
    table = markdown(info, rows, peaks, memory, args) + fusion_markdown(fusion)
    print(table)
    write_outputs({args.out: table, args.json: json.dumps({"machine": info, "peaks": peaks, "memory_mib": memory,
                                                          "fusion": fusion, "rows": rows}, indent=1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
