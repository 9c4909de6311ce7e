"""Training threads that follow the cores other processes leave free.

PyTorch's CPU kernels split each operator over `torch.get_num_threads()` OpenMP threads and wait
for all of them at the end. When another process keeps one of the cores busy, one of those
threads is descheduled at every operator and the others wait for it: on a 2-core machine with
one core taken by a busy loop, a B0 training step (64 px, batch 32) took 3.7x as long with 2
threads as on the quiet machine, while with 1 thread it took what 1 thread takes anyway
(benchmarks/train.py --contend, BENCHMARKS.md). OMP_WAIT_POLICY=PASSIVE halves the loss but
has to be set before torch starts and costs the quiet case.

So training watches what other processes use (`effscale.cpuload`, the CPUs of this process's
affinity set) every `interval_s` seconds, between steps, and runs on the cores they leave:
a core counts as taken once others use more than BUSY_CORE of one on average. When they stop,
the threads come back. Each change is reported (never a silent slowdown) and kept in
metrics.jsonl. Fixed thread counts (`threads=N`, `--threads N`) switch this off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..cpuload import CpuReading, others_between, read_cpu

DEFAULT_INTERVAL_S = 5.0
BUSY_CORE = 0.2  # others' average use of a core above which it is taken (tick noise stays below)


def threads_for(others_cores: float, cpus: int, max_threads: int) -> int:
    """Threads that leave the cores other processes use to them: at least 1, at most max_threads."""
    taken = math.ceil(max(others_cores - BUSY_CORE, 0.0))
    return max(1, min(max_threads, cpus - taken))


@dataclass
class ThreadGovernor:
    """Call `poll()` between steps; it re-reads the CPUs at most every `interval_s` seconds and
    returns the new thread count when it changed (else None)."""

    max_threads: int
    interval_s: float = DEFAULT_INTERVAL_S
    reader: Callable[[], CpuReading] = read_cpu
    set_threads: Callable[[int], None] = torch.set_num_threads
    threads: int = field(init=False)
    others_cores: float | None = field(init=False, default=None)

    def __post_init__(self):
        if isinstance(self.max_threads, bool) or not isinstance(self.max_threads, int) or self.max_threads < 1:
            raise ValueError(f"max_threads={self.max_threads!r} must be an integer >= 1")
        self.threads = self.max_threads
        self._last = self.reader()

    def poll(self) -> int | None:
        now = self.reader()
        if now.wall_s - self._last.wall_s < self.interval_s:
            return None
        seen = others_between(self._last, now)["others_cores"]
        self._last = now
        if seen is None:  # no /proc/stat: nothing to follow
            return None
        self.others_cores = seen
        wanted = threads_for(seen, now.cpus, self.max_threads)
        if wanted == self.threads:
            return None
        self.threads = wanted
        self.set_threads(wanted)
        return wanted
