"""The manifest that makes an exported artifact describe itself (`effscale-export.json`).

An artifact is a directory: the runtime's model file(s), `model.safetensors` (the same weights
for the torch runtime and for re-checking parity) and this manifest, version 1:

    format           "effscale-export"
    version          1
    runtime_format   "onnx" | "openvino"
    model_file       the file the runtime loads ("model.onnx", "model.xml")
    spec             the spec's text form (NetworkSpec.to_text())
    num_classes, in_chans, features_only
    classes          class names (null when unknown; ImageNet's are implied for 1000 classes)
    preprocessing    {"resolution", "crop_pct", "mean", "std", "layout": "NCHW", "scale", "resize"}:
                     what to do to an RGB / grey image before the model
    inputs           [{"name", "shape" (None = dynamic), "dtype"}]
    outputs          [{"name", "dtype"}]: logits, or one feature map per level (features_only)
    precision        "fp32", or "int8" for `effscale quantize` (which adds "quantization")
    opset            ONNX opset (onnx only)
    source           what was exported (weights file, model name)
    parity           {"batch", "max_abs", "max_rel", "top1_agreement", "passed", "tolerance",
                     "torch_fp32_rel", "problems", "runtime": {"runtime", "version", "precision"}}
    inference_precision  (optional) what OpenVINO runs float ops in: "fp32" | "bf16"
    measured         (optional, `plan --export`) {"batch", "threads", "median_ms", "runtime"}: its latency here
    effscale, torch  the versions that wrote it
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import EffscaleError

MANIFEST_NAME = "effscale-export.json"
FORMAT_NAME = "effscale-export"
FORMAT_VERSION = 1
FORMATS = ("onnx", "openvino")
REQUIRED = ("runtime_format", "model_file", "spec", "num_classes", "in_chans", "features_only", "preprocessing",
            "inputs", "outputs", "parity")


def is_artifact(path: str | os.PathLike) -> bool:
    """True for a directory holding an effscale export manifest (never raises)."""
    try:
        return Path(path).is_dir() and (Path(path) / MANIFEST_NAME).is_file()
    except (OSError, TypeError, ValueError):
        return False


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of an exported artifact, checked; EffscaleError naming what is wrong."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise EffscaleError(f"{str(directory)!r} is not an effscale export (no {MANIFEST_NAME}); "
                            "make one with `effscale export`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise EffscaleError(f"{str(path)!r} is not readable JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise EffscaleError(f"{str(path)!r} is not an effscale export manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EffscaleError(f"{str(path)!r} has export format version {version!r}; this effscale reads up to "
                            f"{FORMAT_VERSION} (upgrade effscale)")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise EffscaleError(f"{str(path)!r} lacks {', '.join(missing)}")
    if manifest["runtime_format"] not in FORMATS:
        raise EffscaleError(f"{str(path)!r}: runtime_format {manifest['runtime_format']!r} is unknown; "
                            f"allowed: {', '.join(FORMATS)}")
    if not (Path(directory) / manifest["model_file"]).is_file():
        raise EffscaleError(f"{str(directory)!r}: the manifest names {manifest['model_file']!r}, which is missing")
    return manifest


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, **manifest}, indent=2) + "\n")
    return path


__all__ = ["FORMATS", "MANIFEST_NAME", "is_artifact", "read_manifest", "write_manifest"]
