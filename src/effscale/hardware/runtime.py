"""Running a model the way a profile measured it, and timing it.

Every latency effscale predicts is for `prepare(spec, profile)` called under
`torch.inference_mode()` with `profile.threads` intra-op threads and (when the profile says so)
a channels_last input; `measure_latency` does exactly that, so predictions and measurements
compare like with like.
"""
from __future__ import annotations

import gc
import random
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import EffscaleError


@dataclass(frozen=True)
class LatencyMeasurement:
    """Milliseconds per call: median and quartiles of `samples` (each one timed call)."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    samples: tuple[float, ...]

    @classmethod
    def from_samples(cls, samples_ms) -> "LatencyMeasurement":
        samples = tuple(float(s) for s in samples_ms)
        if not samples:
            raise EffscaleError("no timing samples to summarise")
        if len(samples) == 1:
            return cls(samples[0], samples[0], samples[0], samples)
        p25, median, p75 = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(median, p25, p75, samples)

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p25_ms": self.p25_ms, "p75_ms": self.p75_ms,
                "samples": list(self.samples)}


@contextmanager
def torch_threads(threads: int):
    """Run the block with `threads` intra-op threads, restoring the caller's setting after."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EffscaleError(f"threads={threads!r} must be an integer >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_call(call, *, warmup: int = 2, repeats: int | None = None, budget_s: float = 1.0,
              min_repeats: int = 5, max_repeats: int = 200, collect: bool = True,
              on_sample=None) -> LatencyMeasurement:
    """Time `call()` after `warmup` calls: `repeats` times, or adaptively by time budget.

    Adaptive (repeats=None): at least `min_repeats` samples, then more until `budget_s` of timed
    calls or `max_repeats`, so a 0.1 ms layer gets many samples and a 300 ms network a few. The
    garbage collector is paused while timing (a collection inside a call is noise, not latency);
    `collect` runs one first (~0.1 s with torch loaded: callers timing many things collect once).
    `on_sample()`, if given, runs after each timed call (outside the timing).
    """
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        raise EffscaleError(f"repeats={repeats!r} must be an integer >= 1 (or None: adaptive)")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise EffscaleError(f"warmup={warmup!r} must be an integer >= 0")
    for _ in range(warmup):
        call()
    samples: list[float] = []
    if collect:
        gc.collect()
    gc.disable()
    try:
        spent = 0.0
        while True:
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            samples.append(elapsed * 1e3)
            spent += elapsed
            if on_sample is not None:
                on_sample()
            if repeats is not None:
                if len(samples) >= repeats:
                    break
            elif len(samples) >= max_repeats or (len(samples) >= min_repeats and spent >= budget_s):
                break
    finally:
        gc.enable()
    return LatencyMeasurement.from_samples(samples)


def prepare(spec, profile, *, batch: int = 1, num_classes: int = 1000) -> torch.nn.Module:
    """The model exactly as `profile` runs it: built from `spec` (a NetworkSpec or model name),
    eval mode, batch norm folded, in-place squeeze-excite, and the profile's memory format and
    precision (`nn.prepare_for_inference`). Call it under `torch.inference_mode()`.

    `batch` is accepted for symmetry with `measure_latency` and checked; the module itself
    does not depend on it.
    """
    from ..model import create_model
    from ..nn import prepare_for_inference

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EffscaleError(f"batch={batch!r} must be an integer >= 1")
    model = create_model(spec, num_classes=num_classes)
    return prepare_for_inference(model, channels_last=profile.channels_last, bf16=profile.precision == "bf16")


def example_input(profile, channels: int, resolution: int, batch: int = 1) -> torch.Tensor:
    """A random float32 image batch in the profile's memory format (bf16 models cast it themselves)."""
    x = torch.randn(batch, channels, resolution, resolution)
    return x.contiguous(memory_format=torch.channels_last) if profile.channels_last else x


def measure_latency(spec_or_model, profile, *, batch: int = 1, repeats: int | None = None, warmup: int = 2,
                    resolution: int | None = None, budget_s: float = 1.0) -> LatencyMeasurement:
    """Time one call on `batch` images as the profile measures: `profile.threads` threads (the
    caller's setting is restored after), `torch.inference_mode()`, channels_last input when the
    profile says so.

    `spec_or_model`: a NetworkSpec or model name (built with `prepare`), or a module to time as
    given (prepare it yourself to compare with predictions). `resolution`: input side in pixels
    (default: the spec's). `repeats=None` is adaptive: at least 5 calls, more until `budget_s`
    seconds of calls (at most 200), after `warmup` untimed calls.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EffscaleError(f"batch={batch!r} must be an integer >= 1")
    if isinstance(spec_or_model, torch.nn.Module):
        model = spec_or_model
        spec = getattr(model, "spec", None)
    else:
        from ..zoo import resolve_image_spec

        spec = resolve_image_spec(spec_or_model)
        model = prepare(spec, profile, batch=batch)
    if resolution is None:
        if spec is None:
            raise EffscaleError("measure_latency needs resolution= for a module without a .spec")
        resolution = spec.resolution
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise EffscaleError(f"resolution={resolution!r} must be an integer >= 1")
    x = example_input(profile, getattr(model, "in_chans", 3), resolution, batch)
    with torch_threads(profile.threads), torch.inference_mode():
        return time_call(lambda: model(x), warmup=warmup, repeats=repeats, budget_s=budget_s)


def measure_in_passes(groups: list[tuple[list, float]], *, passes: int, seed: int, min_repeats: int = 5,
                      advance=None) -> list[list[LatencyMeasurement]]:
    """Time groups of no-argument calls, each given with its budget in seconds per call.

    A call with a `commit()` method (InContextTimer) has it called after each timed call.

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
                call = calls[index]
                measured = time_call(call, warmup=2 if pass_index == 0 else 1, budget_s=budget_s / passes,
                                     min_repeats=min_repeats, collect=False, on_sample=getattr(call, "commit", None))
                group_samples[index].extend(measured.samples)
                if advance:
                    advance()
    return [[LatencyMeasurement.from_samples(s) for s in group_samples] for group_samples in samples]
