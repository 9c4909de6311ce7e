"""A spec built as it ships, on a deploy runtime (OpenVINO, ONNX Runtime), timed whole and read
unit by unit from the runtime's own per-node counters (runtime_profile.py builds profiles from
these; runtime.measure_latency and anchor.py time with them for a runtime profile).

The runtime's executed nodes are mapped onto effscale's units (`assign_nodes`) by their compute
ops, which every runtime keeps in graph order: each conv unit owns one convolution, a
squeeze-excite unit a reduce-mean and two convolutions, the classifier a reduce-mean and a
matmul. The nodes between them (activations the runtime did not fuse, reorders, quantize /
dequantize) belong to the unit before them; a residual add run as its own node to the residual
unit. A runtime that fuses the add into the projection conv (both do, in fp32) leaves the
residual unit ~0: its time is in the conv's.
"""
from __future__ import annotations

from ..errors import EffscaleError
from ..timing import LatencyMeasurement, time_call
from .latency import Unit, network_units

UNIT_FLOOR_MS = 1e-4  # a unit the runtime fused away entirely (a residual add): not zero, for the log fit

_CONV_OPS = {"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger", "Convolution", "GroupConvolution"}
_REDUCE_OPS = {"ReduceMean", "GlobalAveragePool", "QLinearGlobalAveragePool", "QLinearReduceMean", "AdaptiveAvgPool"}
_MATMUL_OPS = {"Gemm", "FusedGemm", "QGemm", "MatMul", "FusedMatMul", "QLinearMatMul", "MatMulInteger",
               "FullyConnected", "FullyConnectedCompressed", "FullyConnectedQuantizedLegacy"}
_ADD_OPS = {"Add", "QLinearAdd", "Sum", "Eltwise"}


def node_class(op: str) -> str:
    """"conv", "reduce", "matmul", "add" or "other" for a runtime's node type."""
    if op in _CONV_OPS:
        return "conv"
    if op in _REDUCE_OPS:
        return "reduce"
    if op in _MATMUL_OPS or op.startswith("FullyConnected"):
        return "matmul"
    return "add" if op in _ADD_OPS else "other"


def _anchors(unit: Unit) -> list[str]:
    if unit.kind == "se":
        return ["reduce", "conv", "conv"]
    if unit.kind == "classifier":
        return ["reduce", "matmul"] if unit.out_channels else ["reduce"]
    if unit.kind == "residual":
        return []
    return ["conv"]


def assign_nodes(units: list[Unit], nodes: list[tuple[str, float]], *, what: str = "the network") -> list[float]:
    """Milliseconds of each unit from the runtime's executed nodes (type, ms) in execution order
    (module docstring). Raises EffscaleError when the compute ops do not line up with the units."""
    expected = [(index, anchor) for index, unit in enumerate(units) for anchor in _anchors(unit)]
    found = [node_class(op) for op, _ in nodes]
    compute = [c for c in found if c in ("conv", "reduce", "matmul")]
    if compute != [anchor for _, anchor in expected]:
        raise EffscaleError(f"cannot map the runtime's nodes of {what} onto its layers: expected "
                            f"{len(expected)} compute ops ({_count([a for _, a in expected])}), the runtime ran "
                            f"{len(compute)} ({_count(compute)})")
    times = [0.0] * len(units)
    position, current = 0, expected[0][0] if expected else 0
    for (op, ms), kind in zip(nodes, found):
        if kind in ("conv", "reduce", "matmul"):
            current = expected[position][0]
            position += 1
        elif kind == "add" and current + 1 < len(units) and units[current + 1].kind == "residual":
            current += 1  # the block's skip connection, run as its own node
        times[current] += ms
    return [max(t, UNIT_FLOOR_MS) for t in times]


def _count(classes: list[str]) -> str:
    return ", ".join(f"{classes.count(c)} {c}" for c in ("conv", "reduce", "matmul") if classes.count(c)) or "none"


# -- building and timing ------------------------------------------------------------------------------------
class RuntimeNetwork:
    """One spec built for the runtime: a plain runner for whole-network timing, a counted one for units."""

    def __init__(self, spec, runtime: str, precision: str, threads: int, batch: int = 1, counted: bool = True):
        from ..export.timed import TimedModel, cached_timing_artifact

        self.spec, self.runtime, self.batch = spec, runtime, batch
        self.units = network_units(spec, batch=batch, precision=precision)
        self.artifact = cached_timing_artifact(spec, runtime, precision)
        self.directory = self.artifact["directory"]
        shape = dict(threads=threads, batch=batch, in_chans=3, resolution=spec.resolution)
        self.plain = TimedModel(self.artifact, runtime, **shape)
        self.counted = TimedModel(self.artifact, runtime, profiling=True, trace_dir=self.directory, **shape) \
            if counted else None
        self.float_precision = self.plain.float_precision

    def __call__(self):
        return self.plain()

    def unit_samples(self, calls: int) -> list[list[float]]:
        """Per unit, ms samples from `calls` counted calls (after one warm-up)."""
        self.counted()
        if self.runtime == "openvino":
            samples = []
            for _ in range(calls):
                self.counted()
                samples.append(assign_nodes(self.units, self.counted.node_times(), what=self.spec.name))
            return [list(column) for column in zip(*samples)]
        for _ in range(calls):
            self.counted()
        per_unit = assign_nodes(self.units, self.counted.onnxruntime_node_times(), what=self.spec.name)
        return [[ms] for ms in per_unit]  # ONNX Runtime's trace gives each node's median over the calls


def measure_on_runtime(spec, profile, *, batch: int = 1, repeats: int | None = None, warmup: int = 2,
                       budget_s: float = 1.0) -> LatencyMeasurement:
    """One call on `batch` images of `spec` built as it ships on the profile's runtime and precision
    (exported and, for INT8, quantized: ~10-30 s before timing starts), at the profile's threads."""
    network = RuntimeNetwork(spec, profile.runtime, profile.precision, profile.threads, batch=batch, counted=False)
    return time_call(network, warmup=warmup, repeats=repeats, budget_s=budget_s)


__all__ = ["RuntimeNetwork", "UNIT_FLOOR_MS", "assign_nodes", "measure_on_runtime", "node_class"]
