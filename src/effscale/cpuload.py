"""How busy are the CPUs this process may run on, and with what? (Linux /proc; None elsewhere.)

`/proc/stat` counts the CPU time of every process, per CPU; `os.times()` counts this process's
own. Their difference over an interval is what *other* processes used, in cores (1.0 = one core
busy all the time). Only the CPUs in this process's affinity set are counted: in a container
pinned to 2 of a host's 64 CPUs, the other 62 are none of its business. A CPU quota (cgroup
cpu.max) without pinning is not seen; neither is time the hypervisor gives other VMs, which is
counted apart as steal.

Used by `effscale profile` (was the machine quiet while it was measured?, hardware/conditions.py)
and by training (how many threads can run without waiting on a descheduled peer?, train/threads.py).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100


def usable_cpus() -> set[int] | None:
    """The CPU numbers this process may run on (None where the OS does not say)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class CpuReading:
    """One snapshot: wall clock, all processes' busy and steal CPU seconds, this process's."""

    wall_s: float
    busy_s: float | None  # None off Linux (no /proc/stat)
    steal_s: float | None
    own_s: float
    cpus: int


def read_cpu(stat: Path = Path("/proc/stat"), cpus: set[int] | None = None) -> CpuReading:
    """Busy and steal seconds summed over `cpus` (default: this process's affinity set)."""
    cpus = usable_cpus() if cpus is None else cpus
    busy = steal = None
    try:
        lines = stat.read_text().splitlines()
        per_cpu = {int(f[0][3:]): f[1:] for f in (line.split() for line in lines)
                   if f and f[0].startswith("cpu") and f[0][3:].isdigit()}
        chosen = [per_cpu[c] for c in cpus if c in per_cpu] if cpus else []
        if not chosen:  # no affinity information, or no per-CPU lines: the machine's total
            chosen = [line.split()[1:] for line in lines[:1] if line.split()[:1] == ["cpu"]]
        if chosen:
            busy = steal = 0.0
            for fields in chosen:
                ticks = [int(v) for v in fields]
                # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
                user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]
                busy += (user + nice + system + irq + softirq) / _clock_ticks()
                steal += (ticks[7] if len(ticks) > 7 else 0) / _clock_ticks()
    except (OSError, ValueError, IndexError):
        busy = steal = None
    times = os.times()
    return CpuReading(wall_s=time.monotonic(), busy_s=busy, steal_s=steal, own_s=times.user + times.system,
                      cpus=len(cpus) if cpus else (os.cpu_count() or 1))


def others_between(before: CpuReading, after: CpuReading) -> dict:
    """CPU use by everything but this process between two readings, in cores (and steal fraction)."""
    wall = max(after.wall_s - before.wall_s, 1e-9)
    if before.busy_s is None or after.busy_s is None:
        return {"wall_s": wall, "others_cores": None, "steal_fraction": None}
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    steal = (after.steal_s - before.steal_s) / (wall * after.cpus)
    # Tick accounting makes tiny negative values possible on a quiet machine.
    return {"wall_s": wall, "others_cores": max(others / wall, 0.0), "steal_fraction": max(steal, 0.0)}


def sample_others(seconds: float = 0.5) -> dict:
    """Other processes' CPU use over the next `seconds` (this process sleeping meanwhile)."""
    before = read_cpu()
    time.sleep(seconds)
    return others_between(before, read_cpu())


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_info() -> tuple[str, set[str], int | None]:
    """(CPU model, ISA flags, physical cores) from /proc/cpuinfo; fallbacks off Linux. The flags
    decide the fast paths (bf16, VNNI for INT8) and are recorded with every profile."""
    model, flags, cores = None, set(), set()
    physical_id = core_id = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and model is None:
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "physical id":
                physical_id = value
            elif key == "core id":
                core_id = value
                cores.add((physical_id, core_id))
    except OSError:  # not Linux
        pass
    return model or platform.processor() or "unknown", flags, len(cores) or None
