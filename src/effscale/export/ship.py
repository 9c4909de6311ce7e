"""`plan --export DIR`: the planned architecture as an artifact for the profile's runtime and
precision, parity-checked and measured there.

A plan comes before training, so the artifact holds the spec's random initial weights: it is
the shipped graph (same ops, shapes, INT8 recipe, hence the same latency), built to check that
the planned model meets the budget *as shipped*. INT8 is calibrated on synthetic images (latency
does not depend on the ranges); the manifest says so. After training, ship the trained weights
with `effscale quantize RUN --format FORMAT --out DIR` (INT8) or `effscale export RUN` (float).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .manifest import read_manifest, write_manifest
from .timed import RUNTIME_FORMAT, TimedModel, cached_timing_artifact, check_runtime_precision


def ship_spec(spec, out, *, runtime: str, precision: str, batch: int = 1, threads: int | None = None,
              budget_s: float = 1.0) -> dict:
    """Write `spec` (random weights) to the artifact directory `out` for `runtime` at `precision`
    and time it there on `batch` images; returns {"manifest", "measured_ms", "p25_ms", "p75_ms",
    "retrain": the commands that ship trained weights}."""
    from ..timing import time_call
    from .artifact import _check_out, _permissions_as_umask

    check_runtime_precision(runtime, precision)
    out = _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        # the build a plan's verification just timed, when there is one (cached_timing_artifact)
        built = cached_timing_artifact(spec, runtime, precision)
        artifact = work / "artifact"
        shutil.copytree(Path(built["path"]).parent, artifact)
        built = {**built, "path": artifact / Path(built["path"]).name}
        manifest = read_manifest(built["directory"] / "fp32")
        manifest["source"] = f"{spec.name} (random initial weights: planned, not trained)"
        if precision == "int8":
            shutil.copy2(built["directory"] / "fp32" / "model.safetensors", artifact / "model.safetensors")
            manifest.update(precision="int8", quantization={
                "library": "nncf (OpenVINO IR)" if runtime == "openvino" else "onnxruntime QDQ",
                "calibration": "synthetic images: latency only; quantize the trained weights with your data",
                "accuracy": None})
        timed = TimedModel(built, runtime, threads=threads or _cores(), batch=batch, in_chans=manifest["in_chans"],
                           resolution=spec.resolution)
        measured = time_call(timed, budget_s=budget_s)
        manifest["inference_precision"] = timed.float_precision  # what ran, after any fp32 fallback
        manifest["measured"] = {"batch": batch, "threads": threads or _cores(), "median_ms": measured.median_ms,
                                "runtime": timed.ran}
        write_manifest(artifact, manifest)
        _permissions_as_umask(artifact)
        if out.exists():
            out.rmdir()
        os.replace(artifact, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fmt = RUNTIME_FORMAT[runtime]
    retrain = (f"effscale quantize RUN --format {fmt} --out {out}-trained" if precision == "int8" else
               f"effscale export RUN --format {fmt} --out {out}-trained")
    return {"manifest": read_manifest(out), "measured_ms": measured.median_ms, "p25_ms": measured.p25_ms,
            "p75_ms": measured.p75_ms, "retrain": retrain}


def _cores() -> int:
    from .openvino_runtime import usable_cpus

    return usable_cpus()


__all__ = ["ship_spec"]
