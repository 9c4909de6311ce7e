"""Was the machine quiet while it was measured? Interference detection for `effscale profile`.

A profile records the machine *as it was*: taken while other processes ran, it records a
machine 2-4x slower than the quiet one, and every plan made from it picks models far too
small. Nothing in the timings alone says so, so the profile watches three things and names
what it saw:

- **Other processes' CPU time.** `/proc/stat` counts the CPU time of every process on the
  machine and `/proc/self/stat` this process's own: the difference over the profile is what
  others used, in cores (`others_cores`; 1.0 = one core busy all the time). The hypervisor's
  steal time (a VM's neighbours) is counted separately. This is the direct measure; the load
  average (1-minute, decaying, and counting this process's own threads) is recorded beside it.
- **Spread of repeats.** The relative interquartile range of the whole-network timings: a quiet
  machine repeats a network within a few percent, a contended one does not.
- **Peaks at the start against peaks at the end** (and against the CPU's nominal peak where
  /proc/cpuinfo gives a clock): a load that came or went during the profile moves them apart.

`Watch` takes the CPU counters; `assess()` turns the readings into problems (empty when quiet);
the thresholds are module constants, chosen from what this project's 2-core machines show:
quiet, other processes use < 0.05 cores, networks repeat within 2-6 % (IQR / median), and two
peak measurements a few minutes apart agree within ~5 %.
"""
from __future__ import annotations

from pathlib import Path

# The readings themselves live one floor down, where training uses them too.
from ..cpuload import CpuReading, load_average, others_between, read_cpu, sample_others  # noqa: F401

# Above these, the profile is reported as taken under interference.
MAX_OTHERS_CORES = 0.25  # a quarter of a core used by other processes, on average over the profile
MAX_STEAL_FRACTION = 0.05  # of the wall time x CPUs, taken by the hypervisor
MAX_SPREAD = 0.15  # median over the whole networks of (p75 - p25) / median
MIN_PEAK_AGREEMENT = 0.85  # end / start peak FLOP/s (either way round)
MIN_NOMINAL_FRACTION = 0.2  # measured peak / nominal peak of the cores used


def nominal_peak_flops(cpu_flags, cores: int, mhz: float | None) -> float | None:
    """FP32 FLOP/s the cores could do at the listed clock with two FMA units per core (None: no clock).

    FLOP per cycle per core: 2 FMA units x 2 FLOP x the vector lanes (16 for AVX-512, 8 for AVX2).
    A rough ceiling (turbo clocks exceed it, one FMA unit halves it): only a measurement far below
    it is informative.
    """
    if not mhz or mhz <= 0:
        return None
    flags = set(cpu_flags)
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    return cores * mhz * 1e6 * 2 * 2 * lanes


def cpu_mhz(cpuinfo: Path = Path("/proc/cpuinfo")) -> float | None:
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "cpu MHz":
                return float(value)
    except (OSError, ValueError):
        pass
    return None


def member_spread(members: list[dict]) -> float:
    """Median over the networks of (p75 - p25) / median."""
    spreads = sorted((m["p75_ms"] - m["p25_ms"]) / m["median_ms"] for m in members if m["median_ms"] > 0)
    return spreads[len(spreads) // 2] if spreads else 0.0


def assess(conditions: dict) -> list[str]:
    """Problems the readings show, each naming what was seen against what a quiet machine shows."""
    problems = []
    others, steal = conditions.get("others_cores"), conditions.get("steal_fraction")
    if others is not None and others > MAX_OTHERS_CORES:
        problems.append(f"other processes used {others:.2f} CPU cores on average while it was measured "
                        f"(quiet: < {MAX_OTHERS_CORES:g}; load average {conditions.get('load_avg_end', 0) or 0:.2f} "
                        f"with this profile's {conditions.get('threads', '?')} thread(s))")
    if steal is not None and steal > MAX_STEAL_FRACTION:
        problems.append(f"the hypervisor took {steal:.0%} of the CPU time (steal; quiet: < {MAX_STEAL_FRACTION:.0%})")
    spread = conditions.get("member_spread")
    if spread is not None and spread > MAX_SPREAD:
        problems.append(f"whole-network timings spread by {spread:.0%} (interquartile range / median; quiet: "
                        f"< {MAX_SPREAD:.0%})")
    start, end = conditions.get("peak_flops_start"), conditions.get("peak_flops_end")
    if start and end and min(start, end) / max(start, end) < MIN_PEAK_AGREEMENT:
        problems.append(f"peak FLOP/s changed from {start / 1e9:.0f} G at the start to {end / 1e9:.0f} G at the "
                        f"end (quiet: within {1 - MIN_PEAK_AGREEMENT:.0%})")
    nominal = conditions.get("nominal_peak_flops")
    if nominal and start and start / nominal < MIN_NOMINAL_FRACTION:
        problems.append(f"peak {start / 1e9:.0f} GFLOP/s is {start / nominal:.0%} of this CPU's nominal "
                        f"{nominal / 1e9:.0f} GFLOP/s at the listed clock (quiet: > {MIN_NOMINAL_FRACTION:.0%})")
    return problems


class Watch:
    """Records the conditions of one profile run: start before measuring, `finish` after."""

    def __init__(self, threads: int):
        self.threads = threads
        self.start = read_cpu()
        self.load_avg_start = load_average()

    def finish(self, *, members: list[dict], peak_flops_start: float, peak_flops_end: float | None,
               cpu_flags, cores: int) -> dict:
        conditions = {"threads": self.threads, "load_avg_start": self.load_avg_start,
                      "load_avg_end": load_average(), **others_between(self.start, read_cpu()),
                      "member_spread": member_spread(members), "peak_flops_start": peak_flops_start,
                      "peak_flops_end": peak_flops_end,
                      "nominal_peak_flops": nominal_peak_flops(cpu_flags, cores, cpu_mhz())}
        conditions["problems"] = assess(conditions)
        return conditions
