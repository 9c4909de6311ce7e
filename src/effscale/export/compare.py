"""A trained model shipped INT8 beside its fp32 export, with what it costs and gains: the demo's
last step (`effscale demo`), usable on any run.

`int8_versus_fp32(weights, out, data)` writes `out/fp32` (`export`) and `out/int8` (`quantize`,
calibrated on `data`'s training split, top-1 measured on its held-out split against the fp32
model's), then times both on the same runtime at batch 1 and 32 in `passes` interleaved passes
(`budget_s` seconds of calls per model and batch in all; medians of the pooled repeats: on a
small model a single pass's ratio moved from 0.7x to 1.5x between runs here). Existing artifacts in `out` are reused (a resumed demo), only re-timed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .manifest import is_artifact, read_manifest

BATCHES = (1, 32)


def available_format() -> str | None:
    """"openvino" when OpenVINO + NNCF import, "onnx" when ONNX Runtime does, None without the extra."""
    import importlib.util

    if all(importlib.util.find_spec(m) for m in ("openvino", "nncf", "onnxscript")):
        return "openvino"
    if all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript")):
        return "onnx"
    return None


def int8_versus_fp32(weights, out, data: str, *, format: str = "openvino", samples: int = 300,
                     eval_samples: int = 2000, budget_s: float = 2.0, passes: int = 4) -> dict:
    from ..timing import measure_in_passes
    from .artifact import export, load_exported
    from .quantize import quantize

    out = Path(out)
    fp32_dir, int8_dir = out / "fp32", out / "int8"
    if not is_artifact(int8_dir):
        keep = None if is_artifact(fp32_dir) else fp32_dir  # quantize's own fp32 export: no second export
        quantize(weights, int8_dir, format=format, calib=data, samples=samples, eval_samples=eval_samples,
                 float_out=keep)
    if not is_artifact(fp32_dir):
        export(weights, fp32_dir, format=format)
    manifest = read_manifest(int8_dir)
    fp32, int8 = load_exported(fp32_dir), load_exported(int8_dir)
    spec = fp32.spec
    rows = []
    for batch in BATCHES:
        x = np.random.default_rng(0).standard_normal((batch, fp32.in_chans, spec.resolution, spec.resolution)) \
            .astype(np.float32)
        calls = [lambda m=fp32, x=x: m._run(x), lambda m=int8, x=x: m._run(x)]
        timed = measure_in_passes([(calls, budget_s)], passes=passes, seed=0)[0]
        rows.append({"batch": batch, "fp32_ms": timed[0].median_ms, "int8_ms": timed[1].median_ms,
                     "speedup": timed[0].median_ms / timed[1].median_ms})
    accuracy = manifest["quantization"]["accuracy"]
    return {"format": format, "runtime": int8.runtime["runtime"], "fp32_dir": str(fp32_dir), "int8_dir": str(int8_dir),
            "float_ops": manifest.get("inference_precision", "fp32"), "accuracy": accuracy, "timings": rows,
            "size_bytes": {"fp32": _size(fp32_dir, read_manifest(fp32_dir)), "int8": _size(int8_dir, manifest)}}


def _size(directory: Path, manifest: dict) -> int:
    model = Path(directory) / manifest["model_file"]
    weights = model.with_suffix(".bin")
    return model.stat().st_size + (weights.stat().st_size if weights.exists() else 0)


__all__ = ["available_format", "int8_versus_fp32"]
