"""What both benchmarks record about the machine they ran on."""
from __future__ import annotations

import os
import platform
from pathlib import Path

INTERESTING_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}


def cpu_description() -> tuple[str, list[str]]:
    """(CPU model name, the vector / matrix ISA flags that decide fp32 vs bf16 speed)."""
    cpu, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu is None:
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux
        pass
    return cpu or platform.processor() or "unknown", sorted(flags & INTERESTING_FLAGS)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def write_outputs(files: dict) -> None:
    """Write each {path: text} whose path was given (None: the option was not used)."""
    for path, text in files.items():
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
