"""Timing calls: medians and quartiles of repeated calls, adaptive by time budget, and
interleaved passes over groups of calls. No torch: the eager-torch profile (hardware/), the
deploy runtimes (export/) and the lab (search/) all time through these.
"""
from __future__ import annotations

import gc
import random
import statistics
import time
from dataclasses import dataclass

from .errors import EffscaleError


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


__all__ = ["LatencyMeasurement", "measure_in_passes", "time_call"]
