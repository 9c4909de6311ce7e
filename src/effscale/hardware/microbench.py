"""The measurements behind `run_profile`: peaks, per-layer units, whole networks.

1. Peaks: FLOP/s of a large matmul and a dense 3x3 conv, bytes/s of a large copy and add
   (the best of each pair; the roofline's two slopes).
2. Units (latency.py): every distinct unit of B0 scaled over a grid of widths and
   resolutions, which brackets the family from scaled-down (phi ~ -2) to B4 size and beyond.
   Depth adds no new shapes (repeated blocks are identical), so the grid has no depth axis.
   Each unit is built from the very modules the network uses (`ConvNormAct`, `SqueezeExcite`),
   prepared as `prepare_for_inference` prepares them, and timed under inference_mode.
3. Members: whole networks (scaled-down, B0, B1, B2, and B3 in the full profile), timed with
   `measure_latency`, to fit the affine model and the lookup table's calibration.

Timings are medians of repeats after warm-up. Each list of things to time is measured in
`passes` shuffled passes whose samples are pooled, so that a burst of load from another
process inflates a few samples of many things instead of every sample of a few.
"""
from __future__ import annotations

import datetime
import gc
import random
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EffscaleError
from .latency import LayerTable, Unit, fit_affine, fit_calibration, network_units
from .runtime import LatencyMeasurement, example_input, prepare, time_call, torch_threads


@dataclass(frozen=True)
class Plan:
    """How much to measure: the unit grid, the calibration networks, and the time per item."""

    widths: tuple[float, ...]
    resolutions: tuple[int, ...]
    members: tuple[tuple[str, float, float, int], ...]  # (name, width, depth, resolution) scaling B0
    unit_budget_s: float
    member_budget_s: float
    passes: int
    matmul_size: int
    conv_size: tuple[int, int]  # channels, side
    bandwidth_mib: int
    min_repeats: int = 5


PLANS = {
    "full": Plan(widths=(0.5, 0.7, 1.0, 1.4, 2.0), resolutions=(128, 176, 240, 320, 448),
                 members=(("b0-phi-2", 0.83, 0.69, 168), ("b0-phi-1", 0.91, 0.83, 192),
                          ("efficientnet_b0", 1.0, 1.0, 224), ("efficientnet_b1", 1.0, 1.1, 240),
                          ("efficientnet_b2", 1.1, 1.2, 260), ("efficientnet_b3", 1.2, 1.4, 300)),
                 unit_budget_s=0.15, member_budget_s=6.0, passes=4, matmul_size=2048, conv_size=(256, 56),
                 bandwidth_mib=256),
    "quick": Plan(widths=(0.5, 1.0, 2.0), resolutions=(128, 224, 448),
                  members=(("b0-phi-2", 0.83, 0.69, 168), ("b0-phi-1", 0.91, 0.83, 192),
                           ("efficientnet_b0", 1.0, 1.0, 224), ("efficientnet_b1", 1.0, 1.1, 240),
                           ("efficientnet_b2", 1.1, 1.2, 260)),
                  unit_budget_s=0.06, member_budget_s=3.0, passes=3, matmul_size=1024, conv_size=(128, 56),
                  bandwidth_mib=64),
    # For tests: test-sized shapes, seconds in all; the result is a valid but meaningless profile.
    "tiny": Plan(widths=(0.25,), resolutions=(32,),
                 members=(("tiny-a", 0.25, 0.5, 32), ("tiny-b", 0.25, 0.5, 48)),
                 unit_budget_s=0.001, member_budget_s=0.005, passes=1, matmul_size=64, conv_size=(8, 8),
                 bandwidth_mib=1, min_repeats=2),
}


def _dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


# -- peaks ---------------------------------------------------------------------------------------
def peak_flops(precision: str, plan: Plan) -> float:
    """FLOP/s: the best of a square matmul and a dense 3x3 conv (channels_last), medians of repeats."""
    dtype, n = _dtype(precision), plan.matmul_size
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    budget = dict(budget_s=plan.unit_budget_s * 3, min_repeats=plan.min_repeats)
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
    budget = dict(budget_s=plan.unit_budget_s * 3, min_repeats=plan.min_repeats)
    with torch.inference_mode():
        copy = 2 * size / (time_call(lambda: out.copy_(a), **budget).median_ms / 1e3)
        add = 3 * size / (time_call(lambda: torch.add(a, b, out=out), **budget).median_ms / 1e3)
    return max(copy, add)


# -- units ---------------------------------------------------------------------------------------
def grid_units(plan: Plan, precision: str) -> list[Unit]:
    """The distinct units of B0 scaled to every (width, resolution) of the plan."""
    from ..scaling import Coefficients, scale
    from ..spec import EFFICIENTNET_B0

    seen: dict[tuple, Unit] = {}
    for width in plan.widths:
        for resolution in plan.resolutions:
            spec = scale(EFFICIENTNET_B0, Coefficients(width=width), resolution=resolution)
            for unit in network_units(spec, precision=precision):
                seen.setdefault(_shape_key(unit), unit)
    return list(seen.values())


def _shape_key(unit: Unit) -> tuple:
    return unit.kind, unit.in_channels, unit.out_channels, unit.hw, unit.batch


def _unit_module(unit: Unit, activation: str) -> nn.Module:
    from ..nn.layers import ConvNormAct, SqueezeExcite

    base = unit.kind.split("_k")[0]
    if base in ("conv", "depthwise", "pointwise", "pointwise_act"):
        return ConvNormAct(unit.in_channels, unit.out_channels, unit.kernel, unit.stride,
                           groups=unit.in_channels if base == "depthwise" else 1,
                           activation=None if base == "pointwise" else activation)
    if base == "se":
        module = SqueezeExcite(unit.in_channels, unit.out_channels, activation)
        # The prepared SE scales its input in place, and the timing loop feeds the same input
        # every call: a gate of exactly 1 keeps it from decaying into (slow) denormals.
        nn.init.constant_(module.expand.bias, 30.0)
        nn.init.zeros_(module.expand.weight)
        return module
    if base == "classifier":
        layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        return nn.Sequential(*layers, nn.Linear(unit.in_channels, unit.out_channels)) if unit.out_channels \
            else nn.Sequential(*layers)
    if base == "residual":
        return _Add()
    raise EffscaleError(f"no module for layer kind {unit.kind!r}")


class _Add(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def unit_call(unit: Unit, *, precision: str, channels_last: bool, activation: str = "swish"):
    """A no-argument callable running `unit` as the prepared network runs it."""
    from ..nn.inference import prepare_for_inference

    # bf16 weights without prepare_for_inference's cast hooks: inside a network, activations
    # are bf16 already, so a unit's input is created in bf16 instead.
    module = prepare_for_inference(_unit_module(unit, activation), channels_last=channels_last)
    module = module.to(_dtype(precision))
    x = torch.randn(unit.batch, unit.in_channels, unit.hw, unit.hw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(_dtype(precision))
    if unit.kind == "residual":
        y = x.clone()
        return lambda: module(x, y)
    return lambda: module(x)


# -- orchestration -------------------------------------------------------------------------------
def measure_in_passes(groups: list[tuple[list, float]], *, passes: int, seed: int, min_repeats: int = 5,
                      advance=None) -> list[list[LatencyMeasurement]]:
    """Time groups of no-argument calls, each given with its budget in seconds per call.

    Every pass times each group in turn, its calls in a fresh random order, for `budget / passes`
    each; a call's samples are pooled over the passes. Interleaving spreads every measurement
    over the whole run, so that a change of load from other processes moves all of them alike
    (which the calibration on whole networks then absorbs) instead of skewing one group.
    """
    samples = [[[] for _ in calls] for calls, _ in groups]
    rng = random.Random(seed)
    for pass_index in range(passes):
        for (calls, budget_s), group_samples in zip(groups, samples):
            order = list(range(len(calls)))
            rng.shuffle(order)
            gc.collect()
            for index in order:
                measured = time_call(calls[index], warmup=2 if pass_index == 0 else 1, budget_s=budget_s / passes,
                                     min_repeats=min_repeats, collect=False)
                group_samples[index].extend(measured.samples)
                if advance:
                    advance()
    return [[LatencyMeasurement.from_samples(s) for s in group_samples] for group_samples in samples]


def member_specs(plan: Plan):
    from ..scaling import Coefficients, scale
    from ..spec import EFFICIENTNET_B0

    return [scale(EFFICIENTNET_B0, Coefficients(depth=depth, width=width), name=name, resolution=resolution)
            for name, width, depth, resolution in plan.members]


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=False)

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def task(self, description: str, total: int):
        if not self.bar:
            return lambda: None
        task = self.bar.add_task(description, total=total)
        return lambda: self.bar.advance(task)


def measure_profile(*, threads: int | None, precision: str, quick: bool, progress: bool, channels_last: bool,
                    tiny: bool):
    from .profile import PRECISIONS, DeviceProfile, machine_description

    if precision not in PRECISIONS:
        raise EffscaleError(f"precision={precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    threads = torch.get_num_threads() if threads is None else threads
    plan = PLANS["tiny" if tiny else "quick" if quick else "full"]
    units = grid_units(plan, precision)
    specs = member_specs(plan)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with torch_threads(threads), _Progress(progress) as bar:
        advance = bar.task(f"peaks ({precision}, {threads} thr)", 4)
        flops = peak_flops(precision, plan)
        advance(), advance()
        bytes_per_s = bandwidth(precision, plan)
        advance(), advance()

        settings = _Settings(threads, precision, channels_last)
        unit_calls = [unit_call(u, precision=precision, channels_last=channels_last) for u in units]
        member_calls = []
        for spec in specs:
            model = prepare(spec, settings)
            x = example_input(settings, 3, spec.resolution)
            member_calls.append(lambda model=model, x=x: model(x))
        advance = bar.task("layers and networks", (len(units) + len(specs)) * plan.passes)
        with torch.inference_mode():
            unit_times, member_times = measure_in_passes(
                [(unit_calls, plan.unit_budget_s), (member_calls, plan.member_budget_s)], passes=plan.passes,
                seed=0, min_repeats=plan.min_repeats, advance=advance)
        del unit_calls, member_calls

    layers = [{**u.to_dict(), **_times(m)} for u, m in zip(units, unit_times)]
    from ..cost import cost

    members = [{"name": s.name, "spec": s.to_text(), "batch": 1, "macs": cost(s).macs, **_times(m)}
               for s, m in zip(specs, member_times)]
    table = LayerTable.fit(layers)
    return DeviceProfile(
        machine=machine_description(), threads=threads, precision=precision, channels_last=channels_last,
        peak_flops=flops, bandwidth=bytes_per_s, layers=layers, members=members, affine=fit_affine(members),
        calibration=fit_calibration(table, members, precision), quick=quick, created=created)


@dataclass(frozen=True)
class _Settings:
    """The three profile settings `prepare` and `example_input` read, before the profile exists."""

    threads: int
    precision: str
    channels_last: bool


def _times(measurement: LatencyMeasurement) -> dict:
    return {"median_ms": measurement.median_ms, "p25_ms": measurement.p25_ms, "p75_ms": measurement.p75_ms,
            "repeats": len(measurement.samples)}
