"""Data behind `effscale models` and `effscale info`, as plain dicts (the CLI only formats them)."""
from __future__ import annotations

from .cost import cost
from .errors import EffscaleError
from .scaling import Coefficients, ScalingRule, compound, scale
from .spec import MAX_RESOLUTION, MIN_RESOLUTION, NetworkSpec
from .zoo import get_spec, list_models, resolve_spec


def model_table() -> list[dict]:
    """One row per named model: name, resolution, params, MACs, activations (batch 1, native resolution)."""
    rows = []
    for name in list_models():
        c = cost(get_spec(name))
        rows.append({"name": name, "resolution": c.resolution, "params": c.params, "macs": c.macs,
                     "activations": c.activations})
    return rows


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
        if not isinstance(image_size, int) or not MIN_RESOLUTION <= image_size <= MAX_RESOLUTION:
            raise EffscaleError(f"image size {image_size!r} must be an integer >= {MIN_RESOLUTION} px and "
                                f"<= {MAX_RESOLUTION} px")
        spec = spec.replace(resolution=image_size)
    return spec


def describe(spec, *, layers: bool = False, batch: int = 1) -> dict:
    """The spec's text form with its analytic cost totals (and per-layer rows when asked).

    `spec` is any model reference `zoo.resolve_spec` takes (a name, spec, spec file, weights
    file or built model); a built model's own classes and input channels are counted."""
    c = cost(spec, batch=batch)
    spec = resolve_spec(spec)
    info = {"name": spec.name, "spec": spec.to_text(), "resolution": spec.resolution,
            "params": c.params, "macs": c.macs, "activations": c.activations,
            "peak_activation_bytes": c.peak_activation_bytes, "bytes_read": c.bytes_read,
            "bytes_written": c.bytes_written, "intensity": c.intensity}
    if layers:
        info["layers"] = c.to_dict(layers=True)["layers"]
    return info


__all__ = ["describe", "model_table", "scaled_spec"]
