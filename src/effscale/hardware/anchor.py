"""Re-anchoring a profile to the machine as it is now.

A profile's level drifts: the same quiet VM ran its own calibration networks 8 % slower an hour
after profiling (BENCHMARKS.md), and every prediction was off by that much in the same
direction, while the *shape* of the predictions (which spec is how much slower than which) held
to ~2 %. So the level is part of the model: before predicting, re-time one or two of the
profile's own whole networks exactly as `measure_latency` times any model (a second or two),
and scale the fitted predictors by measured / profiled. That also absorbs the small systematic
difference between timing a network inside the profile's interleaved passes and timing it on
its own, as a plan's verification does.

`measure_anchor(profile)` returns the `Anchor`; `DeviceProfile.reanchor()` returns a copy of the
profile whose `lut` and `affine` predictions carry its factor (`roofline` is a hardware bound and
stays as it is). Results that used one record it (`Anchor.to_dict()`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..errors import EffscaleError

# Two networks: the smallest member and the one nearest B0's size, so that the factor is not
# read off a single size. Interleaved passes, as the profile timed them.
ANCHOR_MEMBERS = 2
ANCHOR_BUDGET_S = 0.6  # seconds of timed calls per network
ANCHOR_PASSES = 2
DISAGREEMENT = 0.10  # the two networks' ratios differing by more than this is reported


@dataclass(frozen=True)
class Anchor:
    """measured / profiled time of the profile's own networks, now; `factor` is their geometric mean."""

    factor: float
    members: tuple[dict, ...]  # name, profiled_ms, measured_ms, ratio
    seconds: float  # wall time the anchoring took

    @property
    def disagreement(self) -> float:
        ratios = [m["ratio"] for m in self.members]
        return max(ratios) / min(ratios) - 1 if ratios else 0.0

    def to_dict(self) -> dict:
        return {"factor": self.factor, "members": [dict(m) for m in self.members], "seconds": self.seconds,
                "disagreement": self.disagreement}

    def describe(self) -> str:
        timed = ", ".join(f"{m['name']} {m['measured_ms']:.3g} ms vs {m['profiled_ms']:.3g} ms profiled"
                          for m in self.members)
        return f"re-anchored x{self.factor:.3f} ({timed}; {self.seconds:.1f} s)"


def anchor_members(profile, count: int = ANCHOR_MEMBERS) -> list[dict]:
    """The smallest member and the one nearest B0 in MACs (or fewer, in a one-member profile)."""
    from .latency import base_macs

    members = sorted(profile.members, key=lambda m: m["macs"])
    chosen = [members[0]]
    if count > 1 and len(members) > 1:
        rest = members[1:]
        reference = base_macs()
        chosen.append(min(rest, key=lambda m: abs(math.log(m["macs"] / reference))))
    return chosen


def measure_anchor(profile, *, count: int = ANCHOR_MEMBERS, budget_s: float = ANCHOR_BUDGET_S,
                   passes: int = ANCHOR_PASSES) -> Anchor:
    """Re-time `count` of the profile's networks now (prepare + inference_mode, its threads)."""
    import torch

    from ..spec import NetworkSpec
    from ..timing import measure_in_passes
    from .runtime import example_input, prepare, torch_threads

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise EffscaleError(f"count={count!r} must be an integer >= 1")
    start = time.perf_counter()
    members = anchor_members(profile, count)
    calls = []
    if getattr(profile, "runtime", "torch") != "torch":  # built as the runtime profile built them
        from .deployed import RuntimeNetwork

        calls = [RuntimeNetwork(NetworkSpec.from_text(m["spec"]), profile.runtime, profile.precision, profile.threads,
                                batch=m["batch"], counted=False) for m in members]
    for member in [] if calls else members:
        spec = NetworkSpec.from_text(member["spec"])
        model, x = prepare(spec, profile), example_input(profile, 3, spec.resolution, member["batch"])
        calls.append(lambda model=model, x=x: model(x))
    with torch_threads(profile.threads), torch.inference_mode():
        measured = measure_in_passes([(calls, budget_s)], passes=passes, seed=1)[0]
    rows = tuple({"name": m["name"], "profiled_ms": m["median_ms"], "measured_ms": now.median_ms,
                  "ratio": now.median_ms / m["median_ms"]} for m, now in zip(members, measured))
    factor = math.exp(sum(math.log(r["ratio"]) for r in rows) / len(rows))
    return Anchor(factor=factor, members=rows, seconds=time.perf_counter() - start)
