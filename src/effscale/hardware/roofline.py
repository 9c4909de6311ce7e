"""Roofline view of a network on a device: each layer's arithmetic intensity against the device's
ridge point (peak FLOP/s over bandwidth), whether it is memory- or compute-bound there, its bound
time, and the bytes a fused depthwise + pointwise pair would not move.

Inputs are `cost(spec, batch, dtype)` rows (bytes: each row reads its inputs and weights once and
writes its output once; see cost.py) and the device's peaks: a device profile's
(`effscale profile`) or measured on the spot with the profiler's micro-benchmarks.

Fusion (seed 001): in an inverted-residual block the depthwise conv's output is written to memory
and read back by the next op. Without squeeze-excite (Lite, Fused-free MobileNet-style blocks) the
next op is the projecting 1x1 conv: a tiled fused dw + pw kernel keeps each tile of the depthwise
output in cache, saving its write and its read (2x its bytes). With SE the whole depthwise output
must exist before the gate (a global pool) is known, so that write stays; what fusion can save
there is the gated copy: folding the gate into the projection (scaling its input channels) saves
the `se_scale` row's write and the projection's read of it (2x its output bytes). Savings are
reported in bytes and in bound time (bytes / bandwidth), i.e. what the roofline would gain.
"""
from __future__ import annotations

from ..cost import cost
from ..errors import EffscaleError


def roofline(spec, *, peak_flops: float, bandwidth: float, batch: int = 1, dtype: str = "fp32") -> dict:
    """Per-layer roofline rows, totals and fusion candidates for `spec` (any model reference)."""
    for name, value in (("peak_flops", peak_flops), ("bandwidth", bandwidth)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise EffscaleError(f"{name}={value!r} must be a positive number")
    c = cost(spec, batch=batch, dtype=dtype)
    ridge = peak_flops / bandwidth  # FLOP per byte where compute time equals traffic time
    rows, total_ms, memory_ms = [], 0.0, 0.0
    for layer in c.layers:
        moved = layer.bytes_read + layer.bytes_written
        compute_ms, traffic_ms = 2 * layer.macs / peak_flops * 1e3, moved / bandwidth * 1e3
        bound = "memory" if traffic_ms >= compute_ms else "compute"
        ms = max(compute_ms, traffic_ms)
        total_ms += ms
        memory_ms += ms if bound == "memory" else 0.0
        rows.append({"name": layer.name, "kind": layer.kind, "macs": layer.macs, "bytes": moved,
                     "intensity": layer.intensity, "bound": bound, "ms": ms})
    for row in rows:
        row["share"] = row["ms"] / total_ms if total_ms else 0.0
    fusion = fusion_candidates(c.layers, bandwidth)
    saved = sum(f["bytes_saved"] for f in fusion)
    return {"name": c.name, "batch": batch, "dtype": dtype, "peak_flops": peak_flops, "bandwidth": bandwidth,
            "ridge_flop_per_byte": ridge, "bound_ms": total_ms, "memory_bound_share": memory_ms / total_ms if total_ms
            else 0.0, "bytes": c.bytes_read + c.bytes_written, "layers": rows, "fusion": fusion,
            "fusion_bytes_saved": saved, "fusion_ms_saved": saved / bandwidth * 1e3}


def fusion_candidates(layers, bandwidth: float) -> list[dict]:
    """One entry per block whose depthwise output (or its gated copy) feeds a 1x1 projection."""
    found = []
    for i, layer in enumerate(layers):
        if layer.kind != "depthwise":
            continue
        block = layer.name.rsplit(".", 2)[0]  # stages.S.B
        following = [row for row in layers[i + 1:] if row.name.startswith(block + ".")]
        project = next((row for row in following if row.kind == "pointwise"), None)
        if project is None:
            continue
        scale = next((row for row in following if row.kind == "se_scale"), None)
        carrier = scale or layer  # the tensor the projection reads
        saved = 2 * carrier.bytes_written
        found.append({"block": block, "pair": "se_scale+project" if scale else "depthwise+project",
                      "bytes_saved": saved, "ms_saved": saved / bandwidth * 1e3})
    return found


def device_peaks(profile=None, precision: str = "fp32") -> tuple[float, float, str]:
    """(peak FLOP/s, bandwidth bytes/s, where they come from): the profile's, or measured now."""
    if profile is not None:
        return profile.peak_flops, profile.bandwidth, f"device profile ({profile.precision})"
    from .microbench import PLANS, bandwidth, peak_flops

    plan = PLANS["quick"]
    return peak_flops(precision, plan), bandwidth(precision, plan), f"measured now ({precision}, quick micro-benchmarks)"


__all__ = ["device_peaks", "fusion_candidates", "roofline"]
