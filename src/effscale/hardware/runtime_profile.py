"""Profiling a deploy runtime (OpenVINO, ONNX Runtime) at the precision a model will ship in.

A torch profile times eager PyTorch; a model shipped as an OpenVINO INT8 artifact runs 2-4x
faster than that, with another balance between layer kinds (INT8 speeds up the dense convs far
more than the memory-bound depthwise and SE units). So a plan for the runtime must be fitted to
the runtime. `run_profile(runtime="openvino", precision="int8")` measures the same two things a
torch profile does, the same way, and produces the same `DeviceProfile` (with `runtime` set), so
every predictor, the planner and the anchor work unchanged:

- layer units in context: every network is built as it ships (export/timed.py: exported,
  parity-checked, INT8-quantized with the shipped recipe) and run with the runtime's own per-node
  counters (OpenVINO's PERF_COUNT, ONNX Runtime's profiler), mapped onto effscale's units by
  their compute ops (deployed.py);
- whole networks: the scaled-down B0 .. B3 members, timed through the runtime's runner (no
  counters) in interleaved passes; they fit the affine model and the table's calibration, which
  also absorbs the runtime's per-call overhead the node counters do not see.

Peaks (the roofline method's) are torch micro-benchmarks at fp32 (bf16 for a bf16 profile): no
INT8 peak is measured, so the roofline of an INT8 profile is a loose bound.
"""
from __future__ import annotations

import datetime
import warnings
from dataclasses import dataclass

import torch

from ..cost import cost
from ..errors import EffscaleError
from ..progress import ProgressBar
from ..timing import LatencyMeasurement, measure_in_passes
from .deployed import RuntimeNetwork
from .latency import Unit
from .microbench import (PLANS, _busy_before_start, _times, assemble_profile, bandwidth, measure_profile, member_specs,
                         peak_flops, shape_key)
from .profile import DeviceProfile, _installed_version, machine_description
from .runtime import torch_threads


@dataclass(frozen=True)
class RuntimePlan:
    """What a runtime profile measures: extra grid networks (scaled B0 at width x resolution),
    the calibration members (microbench's), counted calls per network and budgets."""

    grid: tuple[tuple[float, int], ...]
    members: int  # how many of microbench._MEMBERS
    counted_calls: int  # calls with node counters per network
    member_budget_s: float
    passes: int
    tiny: bool = False


RUNTIME_PLANS = {
    "full": RuntimePlan(grid=((0.5, 128), (0.5, 320), (0.8, 224), (1.25, 224), (2.0, 128), (2.0, 320)), members=7,
                        counted_calls=20, member_budget_s=6.0, passes=3),
    "quick": RuntimePlan(grid=((0.5, 128), (2.0, 320)), members=6, counted_calls=10, member_budget_s=2.5, passes=2),
    "tiny": RuntimePlan(grid=(), members=2, counted_calls=2, member_budget_s=0.01, passes=1, tiny=True),
}

def measure_runtime_profile(*, runtime: str, threads: int | None, precision: str, quick: bool, progress: bool,
                            tiny: bool, strict: bool = False) -> DeviceProfile:
    """`run_profile(runtime=...)`: see the module docstring."""
    from ..export.runtimes import require_module
    from ..export.timed import check_runtime_precision
    from .conditions import Watch

    check_runtime_precision(runtime, precision)
    # the export extra, before any measuring (not after the peaks and the first export)
    require_module("onnxscript" if runtime == "onnxruntime" else "openvino", f"profiling {runtime}")
    require_module(runtime, f"profiling {runtime}")
    if precision == "int8":
        require_module("nncf" if runtime == "openvino" else "onnxruntime.quantization", "INT8 profiles")
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EffscaleError(f"threads={threads!r} must be an integer >= 1")
    plan = RUNTIME_PLANS["tiny" if tiny else "quick" if quick else "full"]
    peak_plan = PLANS["tiny" if tiny else "quick"]
    members = member_specs(PLANS["tiny"]) if tiny else member_specs(PLANS["full"])[:plan.members]
    grid = [_grid_spec(width, resolution) for width, resolution in plan.grid]
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _busy_before_start(threads, strict)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="nncf")
        with ProgressBar(progress) as bar:
            # Peaks first: torch's OpenMP threads spin for a while after its last op and would slow
            # the runtime's first timed calls.
            float_peaks = "bf16" if precision == "bf16" else "fp32"
            with torch_threads(threads):
                flops, bytes_per_s = peak_flops(float_peaks, peak_plan), bandwidth(float_peaks, peak_plan)
            advance = bar.task(f"building {runtime} {precision} networks", len(members) + len(grid)).advance
            networks = []
            for spec in [*members, *grid]:
                networks.append(RuntimeNetwork(spec, runtime, precision, threads))
                advance()
            watch = Watch(threads)
            advance = bar.task("whole networks", len(members) * plan.passes).advance
            member_times = measure_in_passes([(networks[:len(members)], plan.member_budget_s)], passes=plan.passes,
                                             seed=0, min_repeats=2 if tiny else 5, advance=advance)[0]
            advance = bar.task("layer units (runtime counters)", len(networks)).advance
            pooled: dict[tuple, tuple[Unit, list[float]]] = {}
            for network in networks:
                for unit, samples in zip(network.units, network.unit_samples(plan.counted_calls)):
                    pooled.setdefault(shape_key(unit), (unit, []))[1].extend(samples)
                advance()
            ran = sorted({n.float_precision for n in networks})
            del networks
    layers = [{**unit.to_dict(), **_times(LatencyMeasurement.from_samples(samples))}
              for unit, samples in pooled.values()]
    member_rows = [{"name": s.name, "spec": s.to_text(), "batch": 1, "macs": cost(s).macs, **_times(m)}
                   for s, m in zip(members, member_times)]
    machine = {**machine_description(), "runtime_version": _installed_version(runtime) or "?",
               "float_ops": ",".join(ran)}
    return assemble_profile(watch, machine, layers, member_rows, threads=threads, precision=precision,
                            channels_last=False, peaks=(flops, None, bytes_per_s), quick=quick, created=created,
                            strict=strict, runtime=runtime, judge_peaks=not tiny)  # tiny peaks: test-sized noise


def run_profile(*, threads: int | None = None, precision: str = "fp32", quick: bool = False,
                progress: bool = True, channels_last: bool = True, strict: bool = False,
                runtime: str = "torch", _tiny: bool = False) -> DeviceProfile:
    """Measure this machine: micro-benchmarks, per-layer units, whole networks; fit the models.

    `threads`: torch intra-op threads for every measurement (default: torch's current setting).
    `quick`: fewer shapes, members and repeats (< 3 minutes on 2 cores). `_tiny` is for tests:
    test-sized shapes, seconds in all; its profile is valid but predicts nothing useful.

    Interference (conditions.py: other processes' CPU time, steal, the spread of repeats, peaks
    moving during the run) is recorded in `conditions` and warned about
    (`ProfileInterferenceWarning`); `strict=True` raises EffscaleError instead, before any
    measuring when the machine is already busy.

    `runtime`: "torch" (eager PyTorch, fp32 / bf16), or "openvino" (fp32 / bf16 / int8) or
    "onnxruntime" (fp32 / int8): profile the deploy runtime with the model as it ships
    (runtime_profile.py; needs the export extra; the quick one takes ~3-6 minutes).
    """
    if runtime != "torch":  # a deploy runtime: the same measurements through its artifacts
        return measure_runtime_profile(runtime=runtime, threads=threads, precision=precision, quick=quick,
                                       progress=progress, tiny=_tiny, strict=strict)
    return measure_profile(threads=threads, precision=precision, quick=quick, progress=progress,
                           channels_last=channels_last, tiny=_tiny, strict=strict)


def _grid_spec(width: float, resolution: int):
    from ..scaling import Coefficients, scale
    from ..spec import EFFICIENTNET_B0

    return scale(EFFICIENTNET_B0, Coefficients(width=width), resolution=resolution,
                 name=f"grid-w{width:g}-r{resolution}")


__all__ = ["RUNTIME_PLANS", "measure_runtime_profile", "run_profile"]
