"""A spec built the way it will ship, only to be timed: for runtime profiles and for plans that
verify on the deploy runtime (hardware/runtime_profile.py).

`timing_artifact` exports the spec with seeded random weights through `export` (so it passes the
same parity check as any shipped artifact) and, for INT8, quantizes it with the shipped recipe
(NNCF on the IR for OpenVINO, ONNX Runtime's QDQ quantizer for ONNX Runtime) calibrated on
synthetic images. Latency does not depend on the weights' values or on the calibration ranges
(the kernels and shapes are the same), so no data is needed; accuracy is not measured here.

`TimedModel` opens it on its runtime with a fixed thread count, and optionally with the runtime's
per-node counters (OpenVINO's PERF_COUNT, ONNX Runtime's profiler) that a runtime profile reads
its layer units from.
"""
from __future__ import annotations

import atexit
import json
import shutil
import statistics
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..errors import EffscaleError
from .runtimes import onnxruntime_runner, openvino_runner, require_module

# Which precisions each deploy runtime runs: ONNX Runtime's CPU provider has no bf16 convolutions.
RUNTIME_PRECISIONS = {"openvino": ("fp32", "bf16", "int8"), "onnxruntime": ("fp32", "int8")}
CALIBRATION_IMAGES = 8
RUNTIME_FORMAT = {"openvino": "openvino", "onnxruntime": "onnx"}
CACHED_BUILDS = 4
_builds: OrderedDict[tuple, dict] = OrderedDict()
_scratch: list[Path] = []


def check_runtime_precision(runtime: str, precision: str) -> None:
    if runtime not in RUNTIME_PRECISIONS:
        raise EffscaleError(f"runtime {runtime!r} is unknown; allowed: torch, {', '.join(RUNTIME_PRECISIONS)}")
    if precision not in RUNTIME_PRECISIONS[runtime]:
        raise EffscaleError(f"precision {precision!r} is not one {runtime} runs here; allowed: "
                            f"{', '.join(RUNTIME_PRECISIONS[runtime])}")


def timing_artifact(spec, directory, runtime: str, precision: str, *, seed: int = 0) -> dict:
    """Build `spec` for `runtime` at `precision` in `directory` (must not exist); returns
    {"path": model file, "float_precision": what float ops run in, "parity": the export's}."""
    from ..model import create_model

    check_runtime_precision(runtime, precision)
    directory = Path(directory)
    torch.manual_seed(seed)
    network = create_model(spec).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "exporting random initial weights": that is the point here
        from .artifact import export

        manifest = export(network, directory / "fp32", format=RUNTIME_FORMAT[runtime])
    float_path = directory / "fp32" / manifest["model_file"]
    info = {"path": float_path, "float_precision": precision if precision != "int8" else "fp32",
            "parity": manifest["parity"]}
    if precision != "int8":
        return info
    from .quantize import has_vnni

    generator = np.random.default_rng(seed)
    calibration = [generator.standard_normal((CALIBRATION_IMAGES, network.in_chans, spec.resolution,
                                              spec.resolution)).astype(np.float32)]
    out = directory / "int8"
    out.mkdir()
    if runtime == "openvino":
        from .openvino_int8 import quantize_ir

        settings = quantize_ir(float_path, out / "model.xml", calibration, weights_only=False, vnni=has_vnni())
        return {**info, "path": out / "model.xml", "float_precision": settings["inference_precision"]}
    quantization = require_module("onnxruntime.quantization", "INT8 quantization")
    from .quantize import _quantize

    prepared = directory / "prepared.onnx"
    quantization.quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    _quantize(quantization, prepared, out / "model.onnx", calibration, {"reduce_range": not has_vnni()}, [])
    return {**info, "path": out / "model.onnx"}


def cached_timing_artifact(spec, runtime: str, precision: str, *, seed: int = 0) -> dict:
    """`timing_artifact` in a scratch directory of this process, the last CACHED_BUILDS builds
    kept, so that a plan's verification, re-anchoring and --export time and ship one build of a
    spec instead of exporting it again (10-30 s each). The dict also has "directory"."""
    key = (spec.to_text(), runtime, precision, seed)
    if key in _builds and Path(_builds[key]["path"]).exists():
        _builds.move_to_end(key)
        return _builds[key]
    if not _scratch:
        _scratch.append(Path(tempfile.mkdtemp(prefix="effscale-builds-")))
        atexit.register(shutil.rmtree, _scratch[0], ignore_errors=True)
    directory = _scratch[0] / f"{len(list(_scratch[0].iterdir())) + len(_builds):04d}"
    while directory.exists():
        directory = directory.with_name(directory.name + "x")
    built = {**timing_artifact(spec, directory, runtime, precision, seed=seed), "directory": directory}
    _builds[key] = built
    while len(_builds) > CACHED_BUILDS:  # a runtime keeps what it compiled: the files can go
        shutil.rmtree(_builds.popitem(last=False)[1]["directory"], ignore_errors=True)
    return built


class TimedModel:
    """An artifact on its runtime, called on one fixed random batch; `node_times()` with profiling."""

    def __init__(self, artifact: dict, runtime: str, *, threads: int, batch: int, in_chans: int, resolution: int,
                 profiling: bool = False, trace_dir=None):
        self.runtime, self.profiling = runtime, profiling
        self.x = np.random.default_rng(0).standard_normal((batch, in_chans, resolution, resolution)).astype(np.float32)
        path = Path(artifact["path"])
        if runtime == "openvino":
            self.float_precision = artifact["float_precision"]
            try:
                self.run, self.ran = openvino_runner(path, self.float_precision, streams=threads, threads=threads,
                                                     profiling=profiling)
                self.run(self.x)
            except RuntimeError:  # some INT8 models have no bf16 kernels here (see quantize.py): fp32 float ops
                if self.float_precision == "fp32":
                    raise
                self.float_precision = "fp32"
                self.run, self.ran = openvino_runner(path, "fp32", streams=threads, threads=threads,
                                                     profiling=profiling)
        else:
            prefix = str(Path(trace_dir) / "ort") if profiling else None
            if profiling and trace_dir is None:
                raise EffscaleError("ONNX Runtime node timing needs trace_dir= for its trace file")
            self.run, self.ran = onnxruntime_runner(path, threads=threads, profile_prefix=prefix)
            self.float_precision = "fp32"

    def __call__(self):
        return self.run(self.x)

    def node_times(self) -> list[tuple[str, float]]:
        """OpenVINO: the last call's executed nodes as (type, ms) in execution order."""
        return self.run.node_times()

    def onnxruntime_node_times(self) -> list[tuple[str, float]]:
        """ONNX Runtime: ends its profiler; every node's median ms over the calls made, in execution order."""
        trace = Path(self.run.session.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink(missing_ok=True)
        nodes: dict[str, tuple[str, float, list[float]]] = {}
        for event in events:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            name = event["name"][:-len("_kernel_time")]
            entry = nodes.setdefault(name, (event["args"].get("op_name", "?"), event["ts"], []))
            entry[2].append(event["dur"] / 1e3)
        ordered = sorted(nodes.values(), key=lambda entry: entry[1])
        # The first call's node times include one-off allocations: dropped where there are others.
        return [(op, statistics.median(times[1:] if len(times) > 1 else times)) for op, _, times in ordered]


__all__ = ["RUNTIME_PRECISIONS", "TimedModel", "cached_timing_artifact", "check_runtime_precision",
           "timing_artifact"]
