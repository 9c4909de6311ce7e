"""Parity of an exported model with the PyTorch model it came from, on a fixed batch.

Errors are measured against the scale of the reference output (max |reference|), so that a
model with small logits is held to the same standard as one with large ones. Top-1 agreement is
counted for classifiers; a disagreement only fails the check where the reference's margin
between its two best classes is larger than the measured error (a near tie may flip under any
change of summation order, a real difference may not).

Some networks are ill-conditioned in fp32 itself: with small batch-norm variances and ReLU6, a
random Lite0's logits move by 4e-3 of their scale between PyTorch fp32 and PyTorch fp64, and any
other fp32 implementation moves as much. So the allowed error is the larger of `tolerance` x
scale and NOISE_FACTOR x PyTorch's own fp32 error against an fp64 run of the same model: the
exported model must be about as exact as PyTorch is, never more exact than fp32 allows.
"""
from __future__ import annotations

import numpy as np

from ..errors import EffscaleError

FP32_TOLERANCE = 1e-3  # max |exported - torch| / max |torch|, over all outputs
NOISE_FACTOR = 4.0  # x PyTorch's own fp32 error against fp64: the most an exported fp32 model may add
PARITY_BATCH = 2


class ParityError(EffscaleError):
    """The exported model computes something else than the PyTorch model."""


def example_batch(in_chans: int, resolution: int, batch: int = PARITY_BATCH, seed: int = 0) -> np.ndarray:
    """The fixed parity batch: standard-normal inputs (what a normalised image looks like), seeded."""
    return np.random.default_rng(seed).standard_normal((batch, in_chans, resolution, resolution)).astype(np.float32)


def compare(reference: list[np.ndarray], exported: list[np.ndarray], *, classifier: bool,
            tolerance: float = FP32_TOLERANCE, float64: list[np.ndarray] | None = None) -> dict:
    """{"max_abs", "max_rel", "top1_agreement" (None for features), "passed", "tolerance",
    "torch_fp32_rel" (PyTorch fp32 against `float64`, the same model in fp64, when given), "problems"}."""
    problems = []
    if len(reference) != len(exported):
        problems.append(f"{len(exported)} outputs instead of {len(reference)}")
    max_abs, scale = 0.0, 0.0
    for index, (ref, out) in enumerate(zip(reference, exported)):
        if ref.shape != out.shape:
            problems.append(f"output {index} has shape {tuple(out.shape)} instead of {tuple(ref.shape)}")
            continue
        if not np.isfinite(ref).all():
            problems.append(f"the PyTorch model itself gives non-finite values in output {index} on the parity batch")
            continue
        if not np.isfinite(out).all():
            problems.append(f"output {index} has non-finite values where the PyTorch model's are finite "
                            f"(largest |value| {float(np.abs(ref).max()):.3g})")
            continue
        max_abs = max(max_abs, float(np.abs(out.astype(np.float64) - ref).max(initial=0.0)))
        scale = max(scale, float(np.abs(ref).max(initial=0.0)))
    max_rel = max_abs / scale if scale > 0 else max_abs
    own = None
    if float64 is not None and len(float64) == len(reference):
        own = max((float(np.abs(r.astype(np.float64) - r64).max(initial=0.0)) for r, r64 in zip(reference, float64)
                   if r.shape == r64.shape and np.isfinite(r64).all()), default=0.0)
        own = own / scale if scale > 0 else own
    allowed = max(tolerance, NOISE_FACTOR * own) if own is not None else tolerance
    if max_rel > allowed:
        problems.append(f"max relative error {max_rel:.2e} > {allowed:.2e}" + (
            f" ({NOISE_FACTOR:g} x PyTorch's own fp32 error {own:.1e})" if allowed > tolerance else ""))
    agreement = None
    if classifier and len(reference) == len(exported) == 1 and reference[0].shape == exported[0].shape:
        ref, out = reference[0], exported[0]
        agree = ref.argmax(1) == out.argmax(1)
        agreement = float(agree.mean())
        ordered = np.sort(ref, axis=1)
        margins = ordered[:, -1] - ordered[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
        clear = margins > 2 * max_abs
        if (~agree & clear).any():
            problems.append(f"top-1 differs on {int((~agree & clear).sum())} of {len(ref)} inputs where the "
                            "reference is not a near tie")
    return {"batch": int(reference[0].shape[0]) if reference else 0, "max_abs": max_abs, "max_rel": max_rel,
            "top1_agreement": agreement, "passed": not problems, "tolerance": allowed, "torch_fp32_rel": own,
            "problems": problems}


def require_parity(result: dict, what: str) -> dict:
    if not result["passed"]:
        raise ParityError(f"{what} does not match the PyTorch model: {'; '.join(result['problems'])} "
                          f"(max abs error {result['max_abs']:.3g}); nothing was written")
    return result


__all__ = ["FP32_TOLERANCE", "ParityError", "compare", "example_batch", "require_parity"]
