"""The measurements behind `run_profile`: peaks, per-layer units, whole networks.

1. Peaks: FLOP/s of a large matmul and a dense 3x3 conv, bytes/s of a large copy and add
   (the best of each pair; the roofline's two slopes).
2. Units (latency.py): every unit of B0 scaled over a grid of widths and resolutions, which
   brackets the family from scaled-down (phi ~ -2) to B4 size and beyond. Depth adds no new
   shapes (repeated blocks are identical), so the grid has no depth axis. Units are timed
   *in context*: each grid network runs prepared, as a prediction assumes, with forward
   hooks reading the clock around every unit (`InContextTimer`). A layer timed alone finds
   its weights and input hot in cache and the allocator warmed up for its sizes; inside the
   network neither holds, so layers timed alone sum to less than the network's measured
   latency, by a factor that differs between kinds. Timed in place, the units add up to the
   network.
   A hook costs ~1 us, small against the 10 us-10 ms units.
3. Members: whole networks (scaled-down, B0, B1, B2, B3; B4 in the full profile), timed as
   `measure_latency` times them, without hooks, to fit the affine model and the lookup
   table's calibration.

Timings are medians of repeats after warm-up. Grid networks and members are measured in
`passes` interleaved, shuffled passes whose samples are pooled, so that a burst of load from
another process inflates a few samples of many things instead of every sample of a few.
"""
from __future__ import annotations

import datetime
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..cost import cost
from ..errors import EffscaleError
from ..progress import ProgressBar
from .latency import LayerTable, Unit, fit_affine, fit_calibration, network_units
from .profile import PRECISIONS, DeviceProfile, ProfileInterferenceWarning, machine_description
from ..timing import LatencyMeasurement, measure_in_passes, time_call
from .runtime import example_input, prepare, torch_threads


@dataclass(frozen=True)
class Plan:
    """How much to measure: the unit grid, the calibration networks, and the time per item."""

    widths: tuple[float, ...]
    resolutions: tuple[int, ...]
    members: tuple[tuple[str, float, float, int], ...]  # (name, width, depth, resolution) scaling B0
    grid_budget_s: float  # seconds of timed calls per grid network
    member_budget_s: float  # ... per member
    peak_budget_s: float  # ... per peak micro-benchmark
    passes: int
    matmul_size: int
    conv_size: tuple[int, int]  # channels, side
    bandwidth_mib: int
    min_repeats: int = 5


_MEMBERS = (("b0-phi-2", 0.83, 0.69, 168), ("b0-phi-1", 0.91, 0.83, 192), ("efficientnet_b0", 1.0, 1.0, 224),
            ("efficientnet_b1", 1.0, 1.1, 240), ("efficientnet_b2", 1.1, 1.2, 260),
            ("efficientnet_b3", 1.2, 1.4, 300), ("efficientnet_b4", 1.4, 1.8, 380))
PLANS = {
    "full": Plan(widths=(0.5, 0.65, 0.8, 1.0, 1.25, 1.6, 2.0), resolutions=(128, 160, 192, 224, 272, 320, 384, 448),
                 members=_MEMBERS, grid_budget_s=3.5, member_budget_s=8.0, peak_budget_s=0.5, passes=4, matmul_size=2048,
                 conv_size=(256, 56), bandwidth_mib=256),
    "quick": Plan(widths=(0.5, 0.75, 1.0, 1.4, 2.0), resolutions=(128, 176, 224, 320, 448),
                  members=_MEMBERS[:-1], grid_budget_s=1.5, member_budget_s=3.5, peak_budget_s=0.3, passes=3, matmul_size=1024,
                  conv_size=(128, 56), bandwidth_mib=64),
    # For tests: test-sized shapes, seconds in all; the result is a valid but meaningless profile.
    "tiny": Plan(widths=(0.25,), resolutions=(32, 48), members=(("tiny-a", 0.25, 0.5, 32), ("tiny-b", 0.25, 0.5, 48)),
                 grid_budget_s=0.005, member_budget_s=0.005, peak_budget_s=0.003, passes=1, matmul_size=64, conv_size=(8, 8),
                 bandwidth_mib=1, min_repeats=2),
}


def _dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


# -- peaks ---------------------------------------------------------------------------------------
def peak_flops(precision: str, plan: Plan) -> float:
    """FLOP/s: the best of a square matmul and a dense 3x3 conv (channels_last), medians of repeats."""
    dtype, n = _dtype(precision), plan.matmul_size
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    budget = dict(budget_s=plan.peak_budget_s, min_repeats=plan.min_repeats)
    with torch.inference_mode():
        matmul = 2 * n ** 3 / (time_call(lambda: a @ b, **budget).median_ms / 1e3)
        channels, side = plan.conv_size
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dtype=dtype,
                                                                          memory_format=torch.channels_last)
        x = torch.randn(1, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
        conv_flops = 2 * channels * channels * 9 * side * side / (time_call(lambda: conv(x), **budget).median_ms / 1e3)
    return max(matmul, conv_flops)


def bandwidth(precision: str, plan: Plan) -> float:
    """bytes/s: the best of a large copy (read + write) and add (two reads + a write)."""
    elements = plan.bandwidth_mib * 2 ** 20 // _dtype(precision).itemsize
    a, b, out = (torch.ones(elements, dtype=_dtype(precision)) for _ in range(3))
    size = a.element_size() * elements
    budget = dict(budget_s=plan.peak_budget_s, min_repeats=plan.min_repeats)
    with torch.inference_mode():
        copy = 2 * size / (time_call(lambda: out.copy_(a), **budget).median_ms / 1e3)
        add = 3 * size / (time_call(lambda: torch.add(a, b, out=out), **budget).median_ms / 1e3)
    return max(copy, add)


# -- units ---------------------------------------------------------------------------------------
def grid_specs(plan: Plan):
    """B0 at every (width, resolution) of the plan's grid."""
    from ..scaling import Coefficients, scale
    from ..spec import EFFICIENTNET_B0

    return [scale(EFFICIENTNET_B0, Coefficients(width=width), resolution=resolution,
                  name=f"grid-w{width:g}-r{resolution}")
            for width in plan.widths for resolution in plan.resolutions]


def grid_units(plan: Plan, precision: str) -> list[Unit]:
    """The distinct units of the plan's grid networks."""
    seen: dict[tuple, Unit] = {}
    for spec in grid_specs(plan):
        for unit in network_units(spec, precision=precision):
            seen.setdefault(shape_key(unit), unit)
    return list(seen.values())


def shape_key(unit: Unit) -> tuple:
    return unit.kind, unit.in_channels, unit.out_channels, unit.hw, unit.batch, unit.kernel, unit.stride


def _unit_parts(model: nn.Module) -> list[tuple[list[nn.Module], list[nn.Module]]]:
    """Per unit of `network_units`, in the same order: (modules whose times add, ... subtract).

    The residual add is not a module call: it is the block's time minus its children's, which
    also charges the block's own Python to it, as the network pays it.
    """
    from ..nn.blocks import MBConv

    parts = [([model.stem], [])]
    for stage in model.stages:
        for block in stage:
            if type(block) is not MBConv:
                raise EffscaleError(f"in-context timing handles MBConv blocks only, got {type(block).__name__}")
            children = [getattr(block, name) for name in block.layer_names]
            parts += [([child], []) for child in children]
            if block.has_residual:
                parts.append(([block], children))
    parts += [([model.head], []), ([model.pool, model.classifier], [])]  # dropout between: an eval no-op
    return parts


class InContextTimer:
    """A prepared network whose every call also times each of its units (forward hooks).

    Call it to run the network once; `commit()` keeps that call's unit times as one sample each
    (warm-up calls are simply not committed). `samples[i]` are the ms of `units[i]`.
    """

    def __init__(self, spec, settings):
        self.units = network_units(spec, precision=settings.precision)
        self.model = prepare(spec, settings)
        self.x = example_input(settings, 3, spec.resolution)
        self.parts = _unit_parts(self.model)
        if len(self.parts) != len(self.units):
            raise EffscaleError(f"{spec.name}: {len(self.parts)} timed parts for {len(self.units)} units")
        self.samples: list[list[float]] = [[] for _ in self.units]
        self._start: dict[int, float] = {}
        self._elapsed: dict[int, float] = {}
        for module in {m for add, subtract in self.parts for m in add + subtract}:
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._exit)

    def _enter(self, module, args) -> None:
        self._start[id(module)] = time.perf_counter()

    def _exit(self, module, args, output) -> None:
        self._elapsed[id(module)] = time.perf_counter() - self._start[id(module)]

    def __call__(self):
        return self.model(self.x)

    def commit(self) -> None:
        elapsed = self._elapsed
        for samples, (add, subtract) in zip(self.samples, self.parts):
            seconds = sum(elapsed[id(m)] for m in add) - sum(elapsed[id(m)] for m in subtract)
            samples.append(max(seconds, 1e-7) * 1e3)


def pool_units(timers: list[InContextTimer]) -> list[tuple[Unit, LatencyMeasurement]]:
    """One measurement per distinct unit shape, pooling the samples of every occurrence."""
    pooled: dict[tuple, tuple[Unit, list[float]]] = {}
    for timer in timers:
        for unit, samples in zip(timer.units, timer.samples):
            pooled.setdefault(shape_key(unit), (unit, []))[1].extend(samples)
    return [(unit, LatencyMeasurement.from_samples(samples)) for unit, samples in pooled.values()]


# -- orchestration -------------------------------------------------------------------------------
def member_specs(plan: Plan):
    from ..scaling import Coefficients, scale
    from ..spec import EFFICIENTNET_B0

    return [scale(EFFICIENTNET_B0, Coefficients(depth=depth, width=width), name=name, resolution=resolution)
            for name, width, depth, resolution in plan.members]


def _busy_before_start(threads: int, strict: bool) -> None:
    """Half a second of listening before any measuring: is something else already running?"""
    from .conditions import MAX_OTHERS_CORES, sample_others

    seen = sample_others(0.5)
    if seen["others_cores"] is None or seen["others_cores"] <= MAX_OTHERS_CORES:
        return
    message = (f"other processes are using {seen['others_cores']:.2f} CPU cores right now (quiet: < "
               f"{MAX_OTHERS_CORES:g}); a profile taken now records this machine slower than it is")
    if strict:
        raise EffscaleError(f"{message}; nothing was measured (stop them and profile again, or drop --strict)")
    warnings.warn(message, ProfileInterferenceWarning, stacklevel=3)


def measure_profile(*, threads: int | None, precision: str, quick: bool, progress: bool, channels_last: bool,
                    tiny: bool, strict: bool = False):
    from .conditions import Watch

    if precision not in PRECISIONS:
        extra = " (int8 is a deploy runtime's: --runtime openvino or onnxruntime)" if precision == "int8" else ""
        raise EffscaleError(f"precision={precision!r} is not one the torch profile measures; allowed: "
                            f"{', '.join(PRECISIONS)}{extra}")
    threads = torch.get_num_threads() if threads is None else threads
    plan = PLANS["tiny" if tiny else "quick" if quick else "full"]
    specs = member_specs(plan)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _busy_before_start(threads, strict)
    watch = Watch(threads)
    with torch_threads(threads), ProgressBar(progress) as bar:
        advance = bar.task(f"peaks ({precision}, {threads} threads)", 2).advance
        flops = peak_flops(precision, plan)
        advance()
        bytes_per_s = bandwidth(precision, plan)
        advance()

        settings = _Settings(threads, precision, channels_last)
        grid = grid_specs(plan)
        advance = bar.task("building networks", len(grid) + len(specs)).advance
        timers, member_calls = [], []
        for spec in grid:
            timers.append(InContextTimer(spec, settings))
            advance()
        for spec in specs:
            model, x = prepare(spec, settings), example_input(settings, 3, spec.resolution)
            member_calls.append(lambda model=model, x=x: model(x))
            advance()
        advance = bar.task("layers and networks", (len(timers) + len(specs)) * plan.passes).advance
        with torch.inference_mode():
            member_times = measure_in_passes(
                [(timers, plan.grid_budget_s), (member_calls, plan.member_budget_s)], passes=plan.passes,
                seed=0, min_repeats=plan.min_repeats, advance=advance)[1]
        units = pool_units(timers)
        del timers, member_calls
        # A load that came or went moves the two apart (test-sized peaks are too noisy to compare).
        flops_end = None if tiny else peak_flops(precision, plan)

    layers = [{**unit.to_dict(), **_times(m)} for unit, m in units]
    members = [{"name": s.name, "spec": s.to_text(), "batch": 1, "macs": cost(s).macs, **_times(m)}
               for s, m in zip(specs, member_times)]
    return assemble_profile(watch, machine_description(), layers, members, threads=threads, precision=precision,
                            channels_last=channels_last, peaks=(flops, flops_end, bytes_per_s), quick=quick,
                            created=created, strict=strict)


def assemble_profile(watch, machine: dict, layers: list[dict], members: list[dict], *, threads: int, precision: str,
                     channels_last: bool, peaks: tuple, quick: bool, created: str, strict: bool,
                     runtime: str = "torch", judge_peaks: bool = True) -> DeviceProfile:
    """The profile from its measurements: conditions judged (warned, or refused with `strict`),
    the lookup table, affine model and calibration fitted. `peaks`: (FLOP/s at the start, at the
    end or None, bytes/s); `judge_peaks=False` leaves them out of the conditions (test-sized)."""
    flops, flops_end, bytes_per_s = peaks
    conditions = watch.finish(members=members, peak_flops_start=flops if judge_peaks else None,
                              peak_flops_end=flops_end if judge_peaks else None,
                              cpu_flags=machine["cpu_flags"], cores=min(threads, machine["usable_cpus"]))
    if conditions["problems"]:
        message = ("the machine was busy while it was profiled: " + "; ".join(conditions["problems"])
                   + "; the profile records it slower than it is")
        if strict:
            raise EffscaleError(message + " (not saved; profile again on a quiet machine, or drop --strict)")
        warnings.warn(message + " (recorded in the profile's `conditions`)", ProfileInterferenceWarning, stacklevel=4)
    table = LayerTable.fit(layers)
    return DeviceProfile(
        machine=machine, threads=threads, precision=precision, channels_last=channels_last,
        peak_flops=max(flops, flops_end or 0.0), bandwidth=bytes_per_s, layers=layers, members=members,
        affine=fit_affine(members), calibration=fit_calibration(table, members, precision), quick=quick,
        created=created, conditions=conditions, runtime=runtime)


@dataclass(frozen=True)
class _Settings:
    """The three profile settings `prepare` and `example_input` read, before the profile exists."""

    threads: int
    precision: str
    channels_last: bool


def _times(measurement: LatencyMeasurement) -> dict:
    return {"median_ms": measurement.median_ms, "p25_ms": measurement.p25_ms, "p75_ms": measurement.p75_ms,
            "repeats": len(measurement.samples)}
