"""Budgets other than latency: peak inference memory, energy per inference, training carbon.

Every estimate is derived from the spec's analytic cost (`effscale.cost`) at the profile's
precision, and every one says how it was obtained, so that a plan can show its working.

Peak inference memory (`predict_peak_memory`)
---------------------------------------------
    weights   params x bytes per element of the profile's precision (bf16 profiles store
              bf16 weights: `prepare_for_inference(bf16=True)`)
  + activations  EAGER_ACTIVATION_FACTOR x `cost().peak_activation_bytes`. The cost model's
              liveness peak assumes a runtime that frees each tensor after its last use; eager
              PyTorch also keeps every module call's arguments alive until it returns (the image,
              the running stage's and block's inputs), which cost.py's docstring measures at 1.5x
              for B0 (9.0 MB vs 6.0 MB). Measured RSS growth of first calls agrees: 1.4-1.6x at
              batch 4-32 (benchmarks/results/memory.md).
  + runtime   RUNTIME_ALLOWANCE_BYTES: what the first call allocates besides tensors (oneDNN
              kernels and scratch, thread-pool and allocator state). Measured 9-10 MB for
              channels_last and ~15 MB for NCHW on this project's x86 machine, independent of
              the model's size; it is a per-process cost paid once. Most of it is code pages
              (oneDNN, ATen kernels) mapped by the first call (`inference_file_bytes`: 11 of
              14 MB at batch 8 on an AVX2-only machine), which is why it varies between
              machines and kernels while the activation term does not.
  + build     BUILD_ALLOWANCE_BYTES: what building the model leaves in RSS besides its weights.
              Mostly library code: the first use of each torch operator (initialisers, BN
              folding) maps libtorch's code pages, which RSS counts (`model_file_bytes`); the
              rest is small freed chunks glibc keeps in its heap. The code part depends on the
              kernel (fault-around, large folios for file pages), not on the model: measured
              9-15 MB from a 32 px B0 to B4 on the machine it was fitted on, 7 MB (of which
              7.6 MB code) on an AVX2-only machine, 17 MB on a CI machine. It is a per-process
              cost, shared with other torch processes.
The Python interpreter and the torch library themselves (~250 MB of RSS) are not counted:
the figure is what the model adds to a process that already imports torch.

`measure_peak_memory` checks that figure: in a fresh subprocess it builds the model with
`prepare`, resets the kernel's peak-RSS counter (/proc/self/clear_refs), runs one inference and
reads the peak (VmHWM). The RSS the built model added is the weights + build terms; growth of
that first call is the activations + runtime terms. benchmarks/memory.py compares them.

Energy per inference (`energy_per_inference`)
---------------------------------------------
"analytic": MACs x (multiply + add energy) + bytes moved x DRAM energy per byte, with
Horowitz's 45 nm figures ("Computing's energy problem", ISSCC 2014). bf16 uses the fp16
row (the table has no bf16; a bf16 multiplier is smaller still, so this is an upper value).
Bytes moved are `cost()`'s (each layer reads its inputs and weights and writes its output
once, no cache reuse), all priced as DRAM reads: 640 pJ per 32 bits = 160 pJ per byte. It is
chip-level arithmetic and memory traffic only (no static power, no host), so it is a lower
bound of the energy a wall socket sees and is meant for comparing models, not for bills.
"rapl": the CPU package energy counters (/sys/class/powercap/intel-rapl:N/energy_uj) read
around repeated calls; this is the whole package's energy, other processes included.
"auto" uses RAPL where the counters are readable, else the analytic estimate.

Training carbon (`training_carbon`)
-----------------------------------
energy = forward energy per sample x TRAIN_FACTOR (forward + backward ~ 3 forward passes: the
backward pass computes gradients for both activations and weights, ~2x the forward MACs)
x samples x epochs, x PUE, then x grid intensity. Defaults and their sources are in the
returned dict; every one can be overridden.
"""
from __future__ import annotations

import dataclasses

import json
import math
import pickle
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cost import DTYPE_BYTES, Cost, cost
from ..errors import EffscaleError
from ..spec import NetworkSpec

MB = 1e6  # budgets are in SI megabytes and millijoules, like the rest of effscale's figures

PRECISION_DTYPE = {"fp32": "fp32", "bf16": "bf16", "int8": "int8"}  # int8: runtime profiles
EAGER_ACTIVATION_FACTOR = 1.5
RUNTIME_ALLOWANCE_BYTES = {True: 10 * MB, False: 15 * MB}  # keyed by channels_last
BUILD_ALLOWANCE_BYTES = 10 * MB

# Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm, picojoules.
OP_ENERGY_PJ = {
    "fp32": {"mult": 3.7, "add": 0.9},
    "bf16": {"mult": 1.1, "add": 0.4},  # the fp16 row: no bf16 figure in the table
    "int8": {"mult": 0.2, "add": 0.03},  # 8-bit integer (INT8 runtime profiles)
}
DRAM_PJ_PER_BYTE = 640 / 4  # 32-bit DRAM read
SRAM_PJ_PER_BYTE = 5 / 4  # 32-bit read from an 8 KB SRAM
ENERGY_METHODS = ("auto", "analytic", "rapl")
RAPL_ROOT = Path("/sys/class/powercap")
RAPL_MIN_SECONDS = 2.0  # the counters update every ~1 ms: seconds of calls average that away

TRAIN_FACTOR = 3.0
DEFAULT_PUE = 1.55
PUE_SOURCE = ("Uptime Institute global data-centre survey average (1.55-1.59 in 2020-2023); "
              "use 1.0 for a machine outside a data centre")
DEFAULT_GRID_G_PER_KWH = 475.0
GRID_SOURCE = ("IEA global average carbon intensity of electricity generation, 2019 "
               "(Global Energy & CO2 Status Report); use your grid's figure")


def _precision(profile, precision: str | None) -> str:
    precision = precision or getattr(profile, "precision", None) or "fp32"
    if precision not in PRECISION_DTYPE:
        raise EffscaleError(f"precision={precision!r} is unknown; allowed: {', '.join(PRECISION_DTYPE)}")
    return precision


def _positive(name: str, value, *, integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (integer and not isinstance(value, int)):
        kind = "an integer >= 1" if integer else "a finite number > 0"
        raise EffscaleError(f"{name}={value!r} must be {kind}")
    return value


# -- memory ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory one inference adds to a process that imports torch (bytes)."""

    weights_bytes: int
    activation_bytes: int
    runtime_bytes: int
    build_bytes: int
    precision: str
    batch: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.runtime_bytes + self.build_bytes

    @property
    def total_mb(self) -> float:
        return self.total_bytes / MB

    def to_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes, "total_mb": self.total_mb}


def predict_peak_memory(spec: NetworkSpec, profile=None, *, batch: int = 1, precision: str | None = None,
                        num_classes: int = 1000) -> MemoryEstimate:
    """Weights + eager activations + runtime allowance (module docstring) at the profile's precision."""
    precision = _precision(profile, precision)
    _positive("batch", batch, integer=True)
    analytic = cost(spec, batch=batch, dtype=PRECISION_DTYPE[precision], num_classes=num_classes)
    return memory_from_cost(analytic, channels_last=bool(getattr(profile, "channels_last", True)))


def memory_from_cost(analytic: Cost, *, channels_last: bool = True) -> MemoryEstimate:
    """`predict_peak_memory` from a `cost()` already computed at the profile's precision."""
    return MemoryEstimate(
        weights_bytes=analytic.params * DTYPE_BYTES[analytic.dtype],
        activation_bytes=int(EAGER_ACTIVATION_FACTOR * analytic.peak_activation_bytes),
        runtime_bytes=int(RUNTIME_ALLOWANCE_BYTES[channels_last]), build_bytes=int(BUILD_ALLOWANCE_BYTES),
        precision=analytic.dtype, batch=analytic.batch)


@dataclass(frozen=True)
class MemoryMeasurement:
    """RSS of a fresh process: after importing torch, what building the model added, and the
    peak growth of its first inference (bytes)."""

    baseline_bytes: int
    model_bytes: int
    inference_growth_bytes: int
    batch: int
    # Of model_bytes, the file-backed part (library code pages mapped while building; shared,
    # kernel-dependent); the rest is anonymous memory: the weights and the heap. None: not read.
    model_file_bytes: int | None = None
    # Of inference_growth_bytes, the file-backed pages the first call mapped (oneDNN and ATen code).
    inference_file_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.inference_growth_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes, "total_mb": self.total_bytes / MB}


# Runs in a fresh interpreter: its allocator and libraries start cold, as a deployed model's do.
_MEASURE_SCRIPT = r"""
import gc, json, pickle, sys
def rss(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no " + key + " in /proc/self/status")
spec, profile, batch, num_classes = pickle.load(sys.stdin.buffer)
import torch
torch.set_num_threads(profile.threads)
from effscale.hardware.runtime import example_input, prepare
gc.collect()
baseline, baseline_file = rss("VmRSS"), rss("RssFile")
model = prepare(spec, profile, batch=batch, num_classes=num_classes)
gc.collect()
before, before_file = rss("VmRSS"), rss("RssFile")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # reset VmHWM to the current RSS
with torch.inference_mode():
    output = model(example_input(profile, 3, spec.resolution, batch))
peak, after_file = rss("VmHWM"), rss("RssFile")
print(json.dumps({"baseline": baseline, "model": before - baseline, "growth": peak - before,
                  "model_file": before_file - baseline_file, "growth_file": after_file - before_file}))
"""


def measure_peak_memory(spec: NetworkSpec, profile, batch: int = 1, *, num_classes: int = 1000,
                        timeout_s: float = 600) -> MemoryMeasurement:
    """Peak RSS growth of one inference of `prepare(spec, profile)` in a fresh subprocess (Linux)."""
    _positive("batch", batch, integer=True)
    if not Path("/proc/self/clear_refs").exists():
        raise EffscaleError("measuring peak memory needs Linux's /proc/self/clear_refs (peak RSS reset)")
    payload = pickle.dumps((spec, profile, batch, num_classes))
    try:
        done = subprocess.run([sys.executable, "-c", _MEASURE_SCRIPT], input=payload, capture_output=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise EffscaleError(f"memory measurement of {spec.name} (batch {batch}) took over {timeout_s:g} s") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise EffscaleError(f"memory measurement of {spec.name} (batch {batch}) failed: {tail[0]}")
    values = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return MemoryMeasurement(baseline_bytes=values["baseline"], model_bytes=values["model"],
                             inference_growth_bytes=values["growth"], batch=batch,
                             model_file_bytes=values["model_file"], inference_file_bytes=values["growth_file"])


# -- energy ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnergyEstimate:
    """Energy of one call on `batch` images, millijoules, and how it was obtained."""

    total_mj: float
    method: str  # "analytic" or "rapl"
    batch: int
    compute_mj: float | None = None  # analytic only
    memory_mj: float | None = None
    note: str = ""

    @property
    def per_sample_mj(self) -> float:
        return self.total_mj / self.batch

    def to_dict(self) -> dict:
        return {**asdict(self), "per_sample_mj": self.per_sample_mj}


def analytic_energy(spec: NetworkSpec, profile=None, *, batch: int = 1, precision: str | None = None,
                    memory: str = "dram", num_classes: int = 1000) -> EnergyEstimate:
    """MACs x (mult + add) + bytes moved x per-byte energy (DRAM by default, "sram" for a floor)."""
    precision = _precision(profile, precision)
    analytic = cost(spec, batch=batch, dtype=PRECISION_DTYPE[precision], num_classes=num_classes)
    return energy_from_cost(analytic, memory=memory)


def energy_from_cost(analytic: Cost, *, memory: str = "dram") -> EnergyEstimate:
    """`analytic_energy` from a `cost()` already computed at the profile's precision."""
    per_byte = {"dram": DRAM_PJ_PER_BYTE, "sram": SRAM_PJ_PER_BYTE}.get(memory)
    if per_byte is None:
        raise EffscaleError(f"memory={memory!r} is unknown; allowed: dram, sram")
    precision, batch = analytic.dtype, analytic.batch
    op = OP_ENERGY_PJ[precision]
    compute_mj = analytic.macs * (op["mult"] + op["add"]) * 1e-9
    memory_mj = (analytic.bytes_read + analytic.bytes_written) * per_byte * 1e-9
    note = (f"Horowitz 45 nm: {op['mult']} + {op['add']} pJ per {precision} MAC, {per_byte:g} pJ per byte "
            f"({memory.upper()}); chip arithmetic and memory traffic only")
    return EnergyEstimate(total_mj=compute_mj + memory_mj, method="analytic", batch=batch,
                          compute_mj=compute_mj, memory_mj=memory_mj, note=note)


class RaplCounter:
    """Sum of the CPU package energy counters under `root` (the top-level intel-rapl:N domains;
    their sub-domains, intel-rapl:N:M, are parts of the package and would count twice)."""

    def __init__(self, root: Path | str = RAPL_ROOT):
        self.domains = []
        for domain in sorted(Path(root).glob("intel-rapl:*")):
            if domain.name.count(":") != 1:
                continue
            try:
                int((domain / "energy_uj").read_text())
                limit = int((domain / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue  # unreadable (usually root-only since 2020) or not a counter
            self.domains.append((domain / "energy_uj", limit))

    @property
    def available(self) -> bool:
        return bool(self.domains)

    def read(self) -> list[int]:
        return [int(path.read_text()) for path, _ in self.domains]

    def joules_between(self, before: list[int], after: list[int]) -> float:
        """Energy between two reads; a counter that wrapped past its range is unwrapped once."""
        total = 0
        for (_, limit), start, end in zip(self.domains, before, after):
            total += end - start if end >= start else end + limit + 1 - start
        return total * 1e-6


def rapl_energy(call, counter: RaplCounter, *, min_seconds: float | None = None,
                min_calls: int = 5) -> tuple[float, int]:
    """(joules per call, calls) of `call()` repeated for at least `min_seconds` (default
    RAPL_MIN_SECONDS) and `min_calls`."""
    min_seconds = RAPL_MIN_SECONDS if min_seconds is None else min_seconds
    if not counter.available:
        raise EffscaleError("no readable RAPL energy counter (/sys/class/powercap/intel-rapl:N/energy_uj)")
    before, start, calls = counter.read(), time.perf_counter(), 0
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        call()
        calls += 1
    joules = counter.joules_between(before, counter.read())
    if joules <= 0:  # a counter that did not move measured nothing (frozen, or virtualised to a constant)
        raise EffscaleError(f"the RAPL energy counters did not advance over {calls} calls "
                            f"({time.perf_counter() - start:.2f} s): they measure nothing here")
    return joules / calls, calls


def energy_per_inference(spec: NetworkSpec, profile, *, batch: int = 1, method: str = "auto",
                         rapl_root: Path | str | None = None, num_classes: int = 1000) -> EnergyEstimate:
    """Energy of one call of `prepare(spec, profile)` on `batch` images; `method` in ENERGY_METHODS.
    `rapl_root` defaults to RAPL_ROOT (/sys/class/powercap)."""
    if method not in ENERGY_METHODS:
        raise EffscaleError(f"energy method={method!r} is unknown; allowed: {', '.join(ENERGY_METHODS)}")
    rapl_root = RAPL_ROOT if rapl_root is None else rapl_root
    counter = RaplCounter(rapl_root) if method != "analytic" else None
    if method == "rapl" and not counter.available:
        raise EffscaleError(f"energy method 'rapl' needs readable counters under {rapl_root} "
                            "(intel-rapl:N/energy_uj; usually root-only); use 'analytic'")
    if counter is None or not counter.available:
        return analytic_energy(spec, profile, batch=batch, num_classes=num_classes)
    import torch

    from .runtime import example_input, prepare, torch_threads

    model = prepare(spec, profile, batch=batch, num_classes=num_classes)
    x = example_input(profile, 3, spec.resolution, batch)
    with torch_threads(profile.threads), torch.inference_mode():
        model(x)  # warm-up: first-call allocations are not steady-state energy
        try:
            joules, calls = rapl_energy(lambda: model(x), counter)
        except EffscaleError as error:
            if method == "rapl":
                raise
            estimate = analytic_energy(spec, profile, batch=batch, num_classes=num_classes)
            return dataclasses.replace(estimate, note=f"{error}; analytic estimate instead")
    return EnergyEstimate(total_mj=joules * 1e3, method="rapl", batch=batch,
                          note=f"CPU package energy over {calls} calls; includes everything else running")


# -- carbon ---------------------------------------------------------------------------------------
def training_carbon(spec: NetworkSpec, profile=None, *, samples: int, epochs: float = 1,
                    forward_energy_mj: float | None = None, power_w: float | None = None, batch: int = 32,
                    train_factor: float = TRAIN_FACTOR, pue: float = DEFAULT_PUE,
                    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH, precision: str | None = None) -> dict:
    """Carbon of training `spec` on `samples` images for `epochs`, with every assumption returned.

    Forward energy per sample, first that applies: `forward_energy_mj` (yours, e.g. measured);
    `power_w` x the profile's predicted latency at `batch` / batch (device power times time);
    else the analytic estimate (a lower bound, see the module docstring).
    """
    _positive("samples", samples, integer=True)
    for name, value in (("epochs", epochs), ("train_factor", train_factor), ("pue", pue),
                        ("grid_g_per_kwh", grid_g_per_kwh)):
        _positive(name, value)
    if pue < 1:
        raise EffscaleError(f"pue={pue!r} must be >= 1 (facility energy over IT energy)")
    if forward_energy_mj is not None:
        per_sample_mj = _positive("forward_energy_mj", forward_energy_mj)
        method = "given"
    elif power_w is not None:
        if profile is None:
            raise EffscaleError("power_w needs a profile to predict the forward time")
        per_sample_mj = _positive("power_w", power_w) * profile.predict_latency(spec, batch=batch) / batch
        method = f"{power_w:g} W x predicted forward time at batch {batch}"
    else:
        per_sample_mj = analytic_energy(spec, profile, batch=batch, precision=precision).per_sample_mj
        method = "analytic (Horowitz 45 nm; a lower bound of wall-socket energy)"
    device_kwh = per_sample_mj * 1e-3 * train_factor * samples * epochs / 3.6e6
    facility_kwh = device_kwh * pue
    return {
        "model": spec.name, "samples": samples, "epochs": epochs,
        "forward_energy_mj_per_sample": per_sample_mj, "forward_energy_method": method,
        "train_factor": train_factor, "train_factor_note": "forward + backward ~ 3 forward passes",
        "device_kwh": device_kwh, "pue": pue, "pue_source": PUE_SOURCE, "facility_kwh": facility_kwh,
        "grid_g_per_kwh": grid_g_per_kwh, "grid_source": GRID_SOURCE,
        "co2e_kg": facility_kwh * grid_g_per_kwh / 1000,
    }
