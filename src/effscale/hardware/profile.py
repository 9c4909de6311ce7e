"""A device profile: what one machine measured, saved as versioned JSON, and the predictors on it.

`run_profile()` (microbench.py) measures this machine and fits the latency models (latency.py);
`load_profile()` reads a profile back, validating every field against the schema below, and
warns (`ProfileMismatchWarning`) when the profile was measured elsewhere or under another
thread count or precision than the caller's.

The JSON (version 1), one object:

    version        1
    machine        {"cpu", "physical_cores", "logical_cores", "usable_cpus", "torch", "platform", "cpu_flags"}
    threads        torch intra-op threads every measurement used
    precision      "fp32" | "bf16" (bf16: weights and activations in bfloat16, prepare_for_inference(bf16=True));
                   a runtime profile also "int8" (the shipped INT8 recipe, export/timing.py)
    channels_last  model and inputs in channels_last (torch profiles; a runtime picks its own layout)
    peak_flops     FLOP/s, best of the matmul / dense-conv micro-benchmarks
    bandwidth      bytes/s, best of the copy / add micro-benchmarks
    layers         one row per distinct layer unit, timed inside the running grid networks
                   (latency.py, microbench.py): kind, in_channels, out_channels, hw (input side),
                   batch, kernel, stride, analytic macs and bytes, median_ms, p25_ms, p75_ms, repeats
    members        whole networks timed for calibration (scaled-down B0 .. B3, B4 in the full profile):
                   name, spec text, batch, macs, median_ms, p25_ms, p75_ms, repeats
    affine         {"base_macs", "slope_ms", "intercept_ms"}: L = slope * macs / base_macs + intercept
    calibration    {"scale", "overhead_ms"}: network latency = scale * (sum of layer units) + overhead
    quick          True for a `--quick` profile (fewer shapes and repeats)
    created        ISO 8601 time of the measurement
    runtime        (optional, default "torch") what ran the networks: "torch" (eager, `prepare`), or a deploy
                   runtime, "openvino" | "onnxruntime" (runtime_profile.py: artifacts as shipped, units from
                   the runtime's node counters); machine then also has "runtime_version" and "float_ops"
    conditions     (optional) how quiet the machine was (conditions.py): others_cores, steal_fraction,
                   load_avg_start / _end, member_spread, peak_flops_start / _end, nominal_peak_flops,
                   and `problems`, one line per sign of interference (empty when quiet)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..cpuload import cpu_info
from ..errors import EffscaleError
from ..export.timed import RUNTIME_PRECISIONS as DEPLOY_PRECISIONS

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "bf16")  # torch's; the deploy runtimes' are export.timed's
RUNTIME_PRECISIONS = {"torch": PRECISIONS, **DEPLOY_PRECISIONS}
RUNTIMES = tuple(RUNTIME_PRECISIONS)
LATENCY_METHODS = ("lut", "affine", "roofline")


class ProfileMismatchWarning(UserWarning):
    """The profile was measured on another machine, thread count or precision than this run's."""


class ProfileInterferenceWarning(UserWarning):
    """The machine was busy (other processes, steal, unstable timings) while it was profiled."""


# -- the machine -------------------------------------------------------------------------------
_INTERESTING_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}


def usable_cpus() -> int:
    """CPUs this process may run on (affinity / cgroup cpusets), not all the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_description() -> dict:
    """What decides whether a profile still applies: CPU, cores, torch and platform."""
    import torch

    model, flags, physical = cpu_info()
    return {
        "cpu": model,
        "physical_cores": physical or os.cpu_count() or 1,
        "logical_cores": os.cpu_count() or 1,
        "usable_cpus": usable_cpus(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_flags": sorted(flags & _INTERESTING_FLAGS),
    }


# -- the profile -------------------------------------------------------------------------------
@dataclass
class DeviceProfile:
    """One machine's measurements and the latency models fitted to them (see the module docstring)."""

    machine: dict
    threads: int
    precision: str
    channels_last: bool
    peak_flops: float
    bandwidth: float
    layers: list[dict]
    members: list[dict]
    affine: dict
    calibration: dict
    quick: bool = False
    created: str = ""
    conditions: dict | None = None
    runtime: str = "torch"
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _validate(self.to_dict(), "profile")
        # Set by `reanchor()`: the run-time level correction (anchor.py); never saved.
        self.anchor = None

    # -- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if data["conditions"] is None:  # profiles from before interference detection have none
            del data["conditions"]
        if data["runtime"] == "torch":  # torch profiles read as they did before runtimes existed
            del data["runtime"]
        return {"version": data.pop("version"), **data}

    def save(self, path) -> Path:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        except OSError as error:
            raise EffscaleError(f"cannot write the profile to {path}: {error.strerror or error}") from None
        return path

    # -- prediction ------------------------------------------------------------------------
    @cached_property
    def layer_table(self):
        """The lookup table fitted to `layers` (latency.LayerTable), built on first use."""
        from .latency import LayerTable
        return LayerTable.fit(self.layers)

    def predict_latency(self, spec, batch: int = 1, method: str | None = None) -> float:
        """Predicted milliseconds of one call of `prepare(spec, self)` on `batch` images under
        `torch.inference_mode()`, at this profile's threads, precision and memory format.

        `method`: "lut" (per-layer lookup table, calibrated on whole networks), "affine"
        (c1 * MACs / MACs(B0) + c2) or "roofline" (a lower bound from peak FLOP/s and bandwidth);
        None is the most accurate one in benchmarks/latency.py (`latency.DEFAULT_METHOD`).
        """
        from . import latency

        return latency.predict(self, spec, batch=batch, method=method)

    def reanchor(self, **options) -> "DeviceProfile":
        """A copy whose `lut` / `affine` predictions are scaled to this machine as it is now.

        Re-times one or two of the profile's own networks (a second or two; `anchor.measure_anchor`,
        whose keyword arguments `options` are) and keeps measured / profiled as `anchor.factor`.
        """
        from .anchor import measure_anchor

        copy = dataclasses.replace(self)
        copy.__dict__["layer_table"] = self.layer_table  # the fit does not change: share it
        copy.anchor = measure_anchor(self, **options)
        return copy

    def member_fits(self) -> list[dict]:
        """Each calibration network: MACs, measured median and every method's (in-sample) prediction."""
        from ..spec import NetworkSpec

        rows = []
        for member in self.members:
            spec = NetworkSpec.from_text(member["spec"])
            rows.append({"name": member["name"], "resolution": spec.resolution, "macs": member["macs"],
                         "measured_ms": member["median_ms"],
                         "predicted_ms": {m: self.predict_latency(spec, batch=member["batch"], method=m)
                                          for m in LATENCY_METHODS}})
        return rows

    def compatibility(self) -> list[str]:
        """How this machine differs from the one measured (CPU, usable CPUs for the threads, torch)."""
        here = machine_description()
        there = self.machine
        problems = []
        if there["cpu"] != here["cpu"]:
            problems.append(f"profile was measured on {there['cpu']!r}, this machine is {here['cpu']!r}")
        if self.threads > here["usable_cpus"]:
            problems.append(f"profile was measured with {self.threads} threads, this machine has only "
                            f"{here['usable_cpus']} usable CPUs")
        if there["torch"] != here["torch"]:
            problems.append(f"profile was measured with torch {there['torch']}, this run has torch {here['torch']}")
        if self.runtime != "torch" and there.get("runtime_version"):
            installed = _installed_version(self.runtime)
            if installed != there["runtime_version"]:
                problems.append(f"profile was measured with {self.runtime} {there['runtime_version']}, this machine "
                                f"has {installed or 'none installed'}")
        return problems


def _installed_version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


# -- schema ------------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _positive(value) -> bool:
    return _is_number(value) and value > 0


def _non_negative(value) -> bool:
    return _is_number(value) and value >= 0


# field -> (check, what was expected); checks see the raw JSON value.
_MACHINE_FIELDS = {
    "cpu": (lambda v: isinstance(v, str), "a string"),
    "physical_cores": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "logical_cores": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "usable_cpus": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "torch": (lambda v: isinstance(v, str), "a string"),
    "platform": (lambda v: isinstance(v, str), "a string"),
    "cpu_flags": (lambda v: isinstance(v, list) and all(isinstance(f, str) for f in v), "a list of strings"),
}
# The unit kinds latency.network_units produces; a row of any other kind would never be looked up.
_KIND = re.compile(r"(conv|depthwise)_k[1-9][0-9]?_s[1-9]|pointwise|pointwise_act|se|residual|classifier")
_KIND_TEXT = "a unit kind: conv_kK_sS, depthwise_kK_sS, pointwise, pointwise_act, se, residual or classifier"
_LAYER_FIELDS = {
    "kind": (lambda v: isinstance(v, str) and _KIND.fullmatch(v) is not None, _KIND_TEXT),
    "in_channels": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "out_channels": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "hw": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (input side in pixels)"),
    "batch": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "macs": (_non_negative, "a number >= 0"),
    "bytes": (_non_negative, "a number >= 0"),
    "median_ms": (_positive, "a number > 0"),
}
_MEMBER_FIELDS = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "spec": (lambda v: isinstance(v, str) and v.startswith("network "), "a spec text ('network NAME ...')"),
    "batch": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "macs": (_positive, "a number > 0"),
    "median_ms": (_positive, "a number > 0"),
    "p25_ms": (_positive, "a number > 0"),
    "p75_ms": (_positive, "a number > 0"),
}
_AFFINE_FIELDS = {
    "base_macs": (_positive, "a number > 0"),
    "slope_ms": (_is_number, "a finite number"),
    "intercept_ms": (_is_number, "a finite number"),
}
_CALIBRATION_FIELDS = {
    "scale": (_positive, "a number > 0"),
    "overhead_ms": (_is_number, "a finite number"),
}
_FIELDS = {
    "version": (lambda v: v == SCHEMA_VERSION, f"{SCHEMA_VERSION} (this effscale reads profile version "
                                                f"{SCHEMA_VERSION}; re-run `effscale profile`)"),
    "machine": (lambda v: isinstance(v, dict), "an object", _MACHINE_FIELDS),
    "threads": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "precision": (lambda v: v in ("fp32", "bf16", "int8"), "one of fp32, bf16, int8 (int8: runtime profiles)"),
    "channels_last": (lambda v: isinstance(v, bool), "true or false"),
    "peak_flops": (_positive, "a number > 0 (FLOP/s)"),
    "bandwidth": (_positive, "a number > 0 (bytes/s)"),
    "layers": (lambda v: isinstance(v, list) and bool(v), "a non-empty list of layer rows", _LAYER_FIELDS),
    "members": (lambda v: isinstance(v, list) and bool(v), "a non-empty list of measured networks",
                _MEMBER_FIELDS),
    "affine": (lambda v: isinstance(v, dict), "an object", _AFFINE_FIELDS),
    "calibration": (lambda v: isinstance(v, dict), "an object", _CALIBRATION_FIELDS),
    "quick": (lambda v: isinstance(v, bool), "true or false"),
    "created": (lambda v: isinstance(v, str), "a string (ISO 8601 time)"),
}
# Fields a profile may lack (older profiles): checked when present.
_CONDITIONS_FIELDS = {
    "problems": (lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v), "a list of strings"),
}
_OPTIONAL_FIELDS = {
    "conditions": (lambda v: isinstance(v, dict), "an object", _CONDITIONS_FIELDS),
    "runtime": (lambda v: v in RUNTIMES, f"one of {', '.join(RUNTIMES)}"),
}


def _check_fields(data: dict, fields: dict, where: str) -> None:
    for name, (check, expected, *nested) in fields.items():
        if name not in data:
            raise EffscaleError(f"{where}: field {name!r} is missing (expected {expected})")
        value = data[name]
        if not check(value):
            raise EffscaleError(f"{where}: field {name!r} must be {expected}, got {_short(value)}")
        if nested:
            rows = value if isinstance(value, list) else [value]
            for index, row in enumerate(rows):
                label = f"{where}: {name}[{index}]" if isinstance(value, list) else f"{where}: {name}"
                if not isinstance(row, dict):
                    raise EffscaleError(f"{label} must be an object, got {_short(row)}")
                _check_fields(row, nested[0], label)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validate(data, where: str) -> None:
    if not isinstance(data, dict):
        raise EffscaleError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if "version" in data and data["version"] != SCHEMA_VERSION:
        raise EffscaleError(f"{where}: profile version {_short(data['version'])} is not supported (this effscale "
                            f"reads version {SCHEMA_VERSION}); re-run `effscale profile`")
    _check_fields(data, _FIELDS, where)
    _check_fields({k: v for k, v in data.items() if k in _OPTIONAL_FIELDS and v is not None},
                  {k: f for k, f in _OPTIONAL_FIELDS.items() if data.get(k) is not None}, where)
    runtime = data.get("runtime") or "torch"
    if data["precision"] not in RUNTIME_PRECISIONS[runtime]:
        raise EffscaleError(f"{where}: precision {data['precision']!r} is not one a {runtime} profile measures "
                            f"(allowed: {', '.join(RUNTIME_PRECISIONS[runtime])})")
    unknown = sorted(set(data) - set(_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise EffscaleError(f"{where}: unknown field {unknown[0]!r} "
                            f"(allowed: {', '.join([*_FIELDS, *_OPTIONAL_FIELDS])})")


def load_profile(path, *, precision: str | None = None, threads: int | None = None) -> DeviceProfile:
    """Read and validate a profile; warn (ProfileMismatchWarning) about every difference from
    this machine (`DeviceProfile.compatibility`) and from the requested precision / threads."""
    path = Path(path)
    if precision is not None and precision not in ("fp32", "bf16", "int8"):
        raise EffscaleError(f"precision={precision!r} is unknown; allowed: fp32, bf16, int8")
    if threads is not None and (not _is_int(threads) or threads < 1):
        raise EffscaleError(f"threads={threads!r} must be an integer >= 1")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise EffscaleError(f"profile {path} does not exist (create one with `effscale profile --out {path}`)") \
            from None
    except (OSError, UnicodeDecodeError) as error:
        raise EffscaleError(f"cannot read profile {path}: {getattr(error, 'strerror', None) or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        problem = "is empty" if not text.strip() else \
            f"is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}; truncated or corrupt?)"
        raise EffscaleError(f"profile {path} {problem}; re-run `effscale profile`") from None
    _validate(data, f"profile {path}")
    profile = DeviceProfile(**data)
    mismatches = profile.compatibility()
    if precision is not None and precision != profile.precision:
        mismatches.append(f"profile was measured in {profile.precision}, this run uses {precision}")
    if threads is not None and threads != profile.threads:
        mismatches.append(f"profile was measured with {profile.threads} threads, this run uses {threads}")
    for message in mismatches:
        warnings.warn(f"{path}: {message}; predictions may be off (re-run `effscale profile` here)",
                      ProfileMismatchWarning, stacklevel=2)
    problems = (profile.conditions or {}).get("problems") or []
    if problems:
        warnings.warn(f"{path} was measured on a busy machine ({'; '.join(problems)}); it may record this "
                      "machine slower than it is (re-run `effscale profile` on a quiet machine)",
                      ProfileInterferenceWarning, stacklevel=2)
    return profile
