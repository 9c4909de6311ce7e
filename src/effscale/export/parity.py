"""Parity of an exported model with the PyTorch model it came from, on a fixed batch.

Errors are measured against the scale of the reference output (max |reference|), so that a
model with small logits is held to the same standard as one with large ones. Top-1 agreement is
counted for classifiers; a disagreement only fails the check where the reference's margin
between its two best classes is larger than the measured error (a near tie may flip under any
change of summation order, a real difference may not).
"""
from __future__ import annotations

import numpy as np

from ..errors import EffscaleError

FP32_TOLERANCE = 1e-3  # max |exported - torch| / max |torch|, over all outputs
PARITY_BATCH = 2


class ParityError(EffscaleError):
    """The exported model computes something else than the PyTorch model."""


def example_batch(in_chans: int, resolution: int, batch: int = PARITY_BATCH, seed: int = 0) -> np.ndarray:
    """The fixed parity batch: standard-normal inputs (what a normalised image looks like), seeded."""
    return np.random.default_rng(seed).standard_normal((batch, in_chans, resolution, resolution)).astype(np.float32)


def compare(reference: list[np.ndarray], exported: list[np.ndarray], *, classifier: bool,
            tolerance: float = FP32_TOLERANCE) -> dict:
    """{"max_abs", "max_rel", "top1_agreement" (None for features), "passed", "tolerance", "problems"}."""
    problems = []
    if len(reference) != len(exported):
        problems.append(f"{len(exported)} outputs instead of {len(reference)}")
    max_abs, scale = 0.0, 0.0
    for index, (ref, out) in enumerate(zip(reference, exported)):
        if ref.shape != out.shape:
            problems.append(f"output {index} has shape {tuple(out.shape)} instead of {tuple(ref.shape)}")
            continue
        if not np.isfinite(out).all():
            problems.append(f"output {index} has non-finite values")
            continue
        max_abs = max(max_abs, float(np.abs(out.astype(np.float64) - ref).max(initial=0.0)))
        scale = max(scale, float(np.abs(ref).max(initial=0.0)))
    max_rel = max_abs / scale if scale > 0 else max_abs
    if max_rel > tolerance:
        problems.append(f"max relative error {max_rel:.2e} > {tolerance:.0e}")
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
            "top1_agreement": agreement, "passed": not problems, "tolerance": tolerance, "problems": problems}


def require_parity(result: dict, what: str) -> dict:
    if not result["passed"]:
        raise ParityError(f"{what} does not match the PyTorch model: {'; '.join(result['problems'])} "
                          f"(max abs error {result['max_abs']:.3g}); nothing was written")
    return result


__all__ = ["FP32_TOLERANCE", "ParityError", "compare", "example_batch", "require_parity"]
