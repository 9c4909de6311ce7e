"""Micro-benchmarks behind `run_profile` (being written)."""
from __future__ import annotations


def measure_profile(*, threads, precision, quick, progress, channels_last, tiny):
    raise NotImplementedError("run_profile is being written (issue 5, part A)")
