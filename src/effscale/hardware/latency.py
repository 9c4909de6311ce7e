"""Latency predictors on a device profile: per-layer lookup table, affine in MACs, roofline.

All three predict one call of `prepare(spec, profile)` under `torch.inference_mode()`.

**Units.** The lookup table works on *units*, the pieces the prepared model runs one module
call each: a conv with its folded BN and activation (`conv_k3_s2` for the stem,
`pointwise_act` for expand and head, `pointwise` for the project conv, which has no
activation, `depthwise_k{k}_s{s}`), a whole squeeze-excite (`se`: pool, reduce, act, expand,
sigmoid, in-place scale), the residual add (`residual`, timed as its block minus the block's
children, so it carries the block's own Python too) and the head's pool + linear
(`classifier`). `network_units(spec)` groups `cost(spec).layers` into units, so the units of
a spec and its analytic cost cannot drift apart; the profile times them inside the running
network (microbench.InContextTimer).

**(b) "lut".** Per kind, a non-negative linear model t = c0 + c1 * MACs + c2 * bytes fitted to
the measured units (relative error; fixed call overhead, compute and memory traffic), times a
correction interpolated from the measured shapes nearest the query in log space (log2 of
input channels, output channels, pixels and batch; inverse-distance weights over the 8
nearest; a factor of 2 in every dimension is a distance of 1): on a measured shape the table
returns the measurement, between shapes it interpolates the measured/model ratio (Once-for-All
looks up exact block shapes, nn-Meter fits a per-kernel model; this does both), and far from
every measured shape (distance > ~3) it falls back to the per-kind model. The network's
latency is `calibration.scale * sum(units) + calibration.overhead_ms`, the two fitted on the
profile's whole-network measurements (non-negative, relative error). Units timed in place add
up to their network, so the scale comes out near 1 (it absorbs the hooks' own cost and any
drift between the grid and the members); the overhead is what runs outside every unit: the
stage containers, the blocks without a residual, the input cast of a bf16 model.

**(a) "affine".** L = slope * x + intercept with x = MACs(spec, batch) / MACs(B0 at 224 px,
batch 1). For a compound-scaled B0, x = d * w^2 * r^2 up to rounding; for any other spec
(free widths, another base, another batch) x is its *effective* d * w^2 * r^2 relative to B0,
which is the only reading that is defined for every spec. Fitted on the profile's whole
networks (non-negative, relative error).

**(c) "roofline".** sum over `cost(spec, dtype=precision).layers` of
max(2 * MACs / peak_flops, bytes moved / bandwidth): what the machine could do at its
micro-benchmarked peaks, a lower bound that ignores per-call overhead and low efficiency of
small or oddly shaped layers; it shows how far a model is from the hardware's limits.

`DEFAULT_METHOD` is the most accurate one in benchmarks/latency.py (BENCHMARKS.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import EffscaleError, closest
from ..zoo import resolve_image_spec

METHODS = ("lut", "affine", "roofline")
DEFAULT_METHOD = "lut"
NEIGHBOURS = 8
# Distance (log2 units) at which the measured/model correction has faded to exp(-1/2) of itself.
CORRECTION_REACH = 3.0


@dataclass(frozen=True)
class Unit:
    """One module call of the prepared network; see the module docstring for the kinds."""

    kind: str
    in_channels: int
    out_channels: int
    hw: int  # input side in pixels
    batch: int
    kernel: int
    stride: int
    macs: int
    bytes: int  # read + written, at the precision's element size

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def coordinates(self) -> tuple[float, float, float, float]:
        """Where the unit sits in shape space: log2 of in/out channels, input pixels, batch."""
        return (math.log2(self.in_channels), math.log2(max(self.out_channels, 1)), 2 * math.log2(self.hw),
                math.log2(self.batch))

    @property
    def features(self) -> tuple[float, float, float]:
        return (1.0, float(self.macs), float(self.bytes))


def _unit_kind(row) -> str:
    if row.kind == "depthwise":
        return f"depthwise_k{row.kernel}_s{row.stride}"
    if row.kind == "conv":
        return f"conv_k{row.kernel}_s{row.stride}"
    if row.kind == "pointwise":  # only the project conv runs without an activation
        return "pointwise" if row.name.endswith("project.conv") else "pointwise_act"
    return row.kind  # residual


def _group_key(name: str) -> str:
    if ".se." in name:
        return name.rsplit(".", 1)[0]
    return "classifier" if name in ("pool", "classifier") else name


def network_units(spec, *, batch: int = 1, precision: str = "fp32", num_classes: int = 1000,
                  resolution: int | None = None) -> list[Unit]:
    """The units of one inference pass of `spec`, in execution order (from `cost()`'s rows)."""
    from ..cost import cost

    rows = cost(resolve_image_spec(spec), resolution=resolution, batch=batch, dtype=precision,
                num_classes=num_classes).layers
    groups: list[list] = []
    for row in rows:
        if groups and _group_key(groups[-1][0].name) == _group_key(row.name):
            groups[-1].append(row)
        else:
            groups.append([row])
    units = []
    for group in groups:
        first = group[0]
        key = _group_key(first.name)
        if key == "classifier":
            kind, out_channels = "classifier", (group[1].out_channels if len(group) > 1 else 0)
        elif key.endswith(".se"):
            kind, out_channels = "se", group[1].out_channels  # the squeeze width
        else:
            kind, out_channels = _unit_kind(first), first.out_channels
        units.append(Unit(kind=kind, in_channels=first.in_channels, out_channels=out_channels,
                          hw=first.in_hw[0], batch=batch, kernel=first.kernel, stride=first.stride,
                          macs=sum(r.macs for r in group),
                          bytes=sum(r.bytes_read + r.bytes_written for r in group)))
    return units


def fit_nonnegative(features, targets) -> np.ndarray:
    """Coefficients >= 0 minimising the *relative* squared error of features @ coef vs targets.

    Exact non-negative least squares for the few unknowns used here: the optimum is the
    unconstrained fit on some subset of the columns, so every subset is tried.
    """
    a = np.asarray(features, dtype=float)
    t = np.asarray(targets, dtype=float)
    if a.ndim != 2 or len(a) != len(t) or len(t) == 0:
        raise EffscaleError("fit needs one row of features per target and at least one target")
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    weighted = a / scale / t[:, None]  # rows divided by the target: relative residuals
    ones = np.ones(len(t))
    best, best_error = np.zeros(a.shape[1]), math.inf
    for mask in range(1, 2 ** a.shape[1]):
        columns = [j for j in range(a.shape[1]) if mask >> j & 1]
        solution = np.linalg.lstsq(weighted[:, columns], ones, rcond=None)[0]
        if (solution < 0).any():
            continue
        coef = np.zeros(a.shape[1])
        coef[columns] = solution
        error = float(np.sum((weighted @ coef - ones) ** 2))
        if error < best_error:
            best, best_error = coef, error
    return best / scale


class LayerTable:
    """The per-kind models and measured points of a profile's `layers` rows (see module docstring)."""

    def __init__(self, kinds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
        # kind -> (model coefficients, measured coordinates, log(measured / model))
        self.kinds = kinds

    @classmethod
    def fit(cls, rows: list[dict]) -> "LayerTable":
        by_kind: dict[str, list[dict]] = {}
        for row in rows:
            by_kind.setdefault(row["kind"], []).append(row)
        kinds = {}
        for kind, group in by_kind.items():
            units = [_row_unit(row) for row in group]
            times = np.array([row["median_ms"] for row in group], dtype=float)
            features = np.array([u.features for u in units])
            coef = fit_nonnegative(features, times)
            model = np.maximum(features @ coef, 1e-9)
            kinds[kind] = (coef, np.array([u.coordinates for u in units]), np.log(times / model))
        return cls(kinds)

    def _model_for(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if kind in self.kinds:
            return self.kinds[kind]
        # An unmeasured variant (a 7x7 depthwise, a fused conv at stride 1): the family it
        # belongs to, else any MAC-doing kind, by the mean of their per-kind models.
        base = kind.split("_k")[0]
        similar = [k for k in self.kinds if k.split("_k")[0] == base] or \
                  [k for k in self.kinds if k not in ("se", "residual", "classifier")] or list(self.kinds)
        coef = np.mean([self.kinds[k][0] for k in similar], axis=0)
        return coef, np.zeros((0, 4)), np.zeros(0)

    def predict_unit(self, unit: Unit) -> float:
        return float(self._predict_kind(unit.kind, [unit])[0])

    def predict_units(self, units: list[Unit]) -> float:
        """Sum of the predicted unit times (ms), each kind's units predicted in one batch."""
        by_kind: dict[str, list[Unit]] = {}
        for unit in units:
            by_kind.setdefault(unit.kind, []).append(unit)
        return float(sum(self._predict_kind(kind, group).sum() for kind, group in by_kind.items()))

    def _predict_kind(self, kind: str, units: list[Unit]) -> np.ndarray:
        coef, coordinates, log_ratios = self._model_for(kind)
        model = np.maximum(np.array([u.features for u in units]) @ coef, 1e-9)
        if not len(log_ratios):
            return model
        query = np.array([u.coordinates for u in units])
        distances = np.linalg.norm(query[:, None, :] - coordinates[None, :, :], axis=2)  # units x measured
        nearest = np.argsort(distances, axis=1, kind="stable")[:, :NEIGHBOURS]
        near = np.take_along_axis(distances, nearest, axis=1)
        exact = distances < 1e-9
        weights = 1.0 / np.maximum(near, 1e-9) ** 2
        correction = (weights * log_ratios[nearest]).sum(axis=1) / weights.sum(axis=1)
        correction *= np.exp(-0.5 * (near[:, 0] / CORRECTION_REACH) ** 2)
        # On a measured shape: the measurement(s) there, not a blend with the neighbours.
        on_grid = exact.any(axis=1)
        if on_grid.any():
            correction[on_grid] = (exact[on_grid] * log_ratios).sum(axis=1) / exact[on_grid].sum(axis=1)
        return model * np.exp(correction)


def _row_unit(row: dict) -> Unit:
    return Unit(kind=row["kind"], in_channels=row["in_channels"], out_channels=row["out_channels"],
                hw=row["hw"], batch=row["batch"], kernel=row.get("kernel", 1), stride=row.get("stride", 1),
                macs=row["macs"], bytes=row["bytes"])


def base_macs() -> int:
    """MACs of EfficientNet-B0 at 224 px, batch 1: the affine model's unit of size."""
    from ..cost import cost
    from ..spec import EFFICIENTNET_B0

    return cost(EFFICIENTNET_B0).macs


def fit_affine(members: list[dict]) -> dict:
    """slope and intercept (ms, both >= 0) of L = slope * MACs / MACs(B0) + intercept."""
    unit = base_macs()
    x = np.array([[1.0, m["macs"] / unit] for m in members])
    intercept, slope = fit_nonnegative(x, [m["median_ms"] for m in members])
    return {"base_macs": unit, "slope_ms": float(slope), "intercept_ms": float(intercept)}


def fit_calibration(table: LayerTable, members: list[dict], precision: str) -> dict:
    """scale and overhead of network latency = scale * sum(units) + overhead, on whole networks."""
    from ..spec import NetworkSpec

    sums = [table.predict_units(network_units(NetworkSpec.from_text(m["spec"]), batch=m["batch"],
                                              precision=precision)) for m in members]
    times = [m["median_ms"] for m in members]
    overhead, scale = fit_nonnegative(np.array([[1.0, s] for s in sums]), times)
    if scale <= 0:  # the units explain nothing (tiny test profiles): a pure ratio fit
        scale, overhead = float(np.median(np.array(times) / np.array(sums))), 0.0
    return {"scale": float(scale), "overhead_ms": float(overhead)}


def roofline_ms(spec, profile, *, batch: int = 1) -> float:
    """Lower bound: per layer, the larger of compute time at peak FLOP/s and traffic at peak bandwidth."""
    from ..cost import cost

    total = 0.0
    for row in cost(spec, batch=batch, dtype=profile.precision).layers:
        total += max(2 * row.macs / profile.peak_flops, (row.bytes_read + row.bytes_written) / profile.bandwidth)
    return total * 1e3


def predict(profile, spec, *, batch: int = 1, method: str | None = None) -> float:
    """Milliseconds per call predicted by `method` (see `DeviceProfile.predict_latency`)."""
    from ..cost import cost

    method = DEFAULT_METHOD if method is None else method
    if method not in METHODS:
        raise EffscaleError(f"latency method {method!r} is unknown{closest(str(method), METHODS)} "
                            f"(allowed: {', '.join(METHODS)})")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EffscaleError(f"batch={batch!r} must be an integer >= 1")
    spec = resolve_image_spec(spec)
    if method == "roofline":  # a bound from the hardware's peaks, not a fit to timings: no anchor
        return roofline_ms(spec, profile, batch=batch)
    # A re-anchored profile (anchor.py) carries today's level: measured / profiled of its own networks.
    anchor = getattr(profile, "anchor", None)
    level = anchor.factor if anchor is not None else 1.0
    if method == "affine":
        affine = profile.affine
        return level * (affine["slope_ms"] * cost(spec, batch=batch).macs / affine["base_macs"]
                        + affine["intercept_ms"])
    units = network_units(spec, batch=batch, precision=profile.precision)
    calibration = profile.calibration
    return level * (calibration["scale"] * profile.layer_table.predict_units(units) + calibration["overhead_ms"])
