"""Data behind `effscale models` and `effscale info`, as plain dicts (the CLI only formats them)."""
from __future__ import annotations

import os
from pathlib import Path

from .cost import cost
from .errors import EffscaleError
from .scaling import Coefficients, ScalingRule, compound, scale
from .spec import MIN_RESOLUTION, NetworkSpec
from .zoo import get_spec, list_models


def model_table() -> list[dict]:
    """One row per named model: name, resolution, params, MACs, activations (batch 1, native resolution)."""
    rows = []
    for name in list_models():
        c = cost(get_spec(name))
        rows.append({"name": name, "resolution": c.resolution, "params": c.params, "macs": c.macs,
                     "activations": c.activations})
    return rows


def load_spec(name_or_path: str | os.PathLike) -> NetworkSpec:
    """A named model, a spec text file (`NetworkSpec.to_text()`), or an effscale weights file."""
    path = Path(name_or_path)
    if str(name_or_path) in list_models():
        return get_spec(str(name_or_path))
    if not path.exists():
        if path.suffix or len(path.parts) > 1:  # looks like a path, not a model name
            raise EffscaleError(f"spec file {str(path)!r} does not exist")
        return get_spec(str(name_or_path))
    if path.suffix == ".safetensors":
        from .weights import read_metadata
        return NetworkSpec.from_text(read_metadata(path)["spec"])
    try:
        return NetworkSpec.from_text(path.read_text())
    except UnicodeDecodeError:
        raise EffscaleError(f"{path} is neither a spec text file nor an effscale .safetensors file") from None


def scaled_spec(base: NetworkSpec, *, phi: float | None = None, rule: ScalingRule | None = None,
                coefficients: Coefficients | None = None, image_size: int | None = None) -> NetworkSpec:
    """`base` scaled by compound scaling (phi, rule) or by explicit coefficients, never both."""
    if phi is not None and coefficients is not None:
        raise EffscaleError("give either phi (compound scaling) or explicit width/depth/resolution "
                            "multipliers, not both")
    if rule is not None and phi is None:
        raise EffscaleError("alpha/beta/gamma define the rule for phi; give phi too")
    if phi is not None:
        spec = compound(base, phi, rule)
    elif coefficients is not None:
        spec = scale(base, coefficients, name=f"{base.name}-w{coefficients.width:g}-d{coefficients.depth:g}"
                                              f"-r{coefficients.resolution:g}")
    else:
        spec = base
    if image_size is not None:
        if not isinstance(image_size, int) or image_size < MIN_RESOLUTION:
            raise EffscaleError(f"image size {image_size!r} must be an integer >= {MIN_RESOLUTION} px")
        spec = spec.replace(resolution=image_size)
    return spec


def describe(spec: NetworkSpec, *, layers: bool = False, batch: int = 1) -> dict:
    """The spec's text form with its analytic cost totals (and per-layer rows when asked)."""
    c = cost(spec, batch=batch)
    info = {"name": spec.name, "spec": spec.to_text(), "resolution": spec.resolution,
            "params": c.params, "macs": c.macs, "activations": c.activations,
            "peak_activation_bytes": c.peak_activation_bytes, "bytes_read": c.bytes_read,
            "bytes_written": c.bytes_written, "intensity": c.intensity}
    if layers:
        info["layers"] = c.to_dict(layers=True)["layers"]
    return info


__all__ = ["describe", "load_spec", "model_table", "scaled_spec"]
