"""INT8 for the OpenVINO runtime through NNCF, on the OpenVINO IR (not the PyTorch module: NNCF's
torch path compiles a C++ extension on first use, ~140 s, and times out past 60 s; on the IR it is
pure Python and takes seconds).

Two modes:
  static        weights INT8 symmetric per output channel, activations INT8 asymmetric per tensor
                (NNCF's MIXED preset: swish and the SE gate are one-sided, an asymmetric range
                spends no code on negatives that do not occur), calibrated on the user's images.
                Without VNNI, x86 INT8 kernels can saturate in their 16-bit intermediate sums:
                there NNCF's overflow fix (7-bit weights) is enabled on every layer; with VNNI it
                is not needed and is off (measured on Lite0: 9.1 dB logits SQNR without the fix
                vs 16.4 dB with it on a CPU without VNNI). `max_drop` hands the accuracy budget
                to `nncf.quantize_with_accuracy_control`, which returns the layers it had to keep
                in float to the model; we read them back from the graph.
  weights_only  every conv / linear weight INT8 symmetric per output channel (depthwise convs
                included), activations in the runtime's float precision: bf16 where the CPU
                computes it natively, else fp32 (`nncf.compress_weights`, no calibration data).

Float ops of an INT8 model run in the precision hint recorded in the manifest
("inference_precision"): bf16 where native, so that nothing falls back to fp32 needlessly; the
precision that actually ran is read back from the compiled model when the artifact is opened.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import numpy as np

from .runtimes import openvino_runner, require_module

COMPUTE_OPS = ("Convolution", "GroupConvolution", "MatMul")


def runtime_precision() -> str:
    """The precision float ops of a quantized model run in here: bf16 where native, else fp32."""
    from ..nn.inference import native_bf16

    return "bf16" if native_bf16() else "fp32"


def quantize_ir(float_xml: Path, out_xml: Path, calibration: list[np.ndarray], *, weights_only: bool, vnni: bool,
                max_drop: float | None = None, held_out=None, labels=None) -> dict:
    """Write the INT8 IR for `float_xml` to `out_xml`; returns the settings and the float layers."""
    nncf = require_module("nncf", "OpenVINO INT8 (NNCF)")
    # NNCF logs its statistics tables and progress bars to stdout: keep stdout for our own output
    # (--json), and its tables for when something goes wrong
    nncf.set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr):
        return _quantize_ir(nncf, float_xml, out_xml, calibration, weights_only=weights_only, vnni=vnni,
                            max_drop=max_drop, held_out=held_out, labels=labels)


def _quantize_ir(nncf, float_xml, out_xml, calibration, *, weights_only, vnni, max_drop, held_out, labels) -> dict:
    ov = require_module("openvino", "OpenVINO INT8")
    model = ov.Core().read_model(str(float_xml))
    precision = runtime_precision()
    if weights_only:
        quantized = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
        settings = {"library": f"nncf {nncf.__version__}", "mode": "weights_only",
                    "weights": "int8 symmetric per channel (every conv and linear, depthwise included)",
                    "activations": f"{precision} (not quantized)", "inference_precision": precision}
    else:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        # Activation ranges: the global min-max over the calibration set. NNCF's default averages
        # each sample's min / max, which clips swish's and the SE gate's rare large values: on the
        # test suite's trained toy model logits SQNR 7.9 dB / top-1 drop 25 points by default vs
        # 33.8 dB / 0 points with MINMAX (held-out images, same calibration).
        advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE if vnni else OverflowFix.ENABLE,
                                                  activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
        common = dict(preset=nncf.QuantizationPreset.MIXED, target_device=nncf.TargetDevice.CPU,
                      subset_size=sum(len(batch) for batch in calibration))
        dataset = nncf.Dataset([batch[i:i + 1] for batch in calibration for i in range(len(batch))])
        names = compute_op_names(model)  # before quantizing: NNCF renames what it quantizes
        plain = nncf.quantize(model, dataset, advanced_parameters=advanced, **common)
        quantized = plain
        if max_drop is not None:
            validation = nncf.Dataset(list(zip(held_out, _split(labels, held_out))))
            quantized = nncf.quantize_with_accuracy_control(
                model, dataset, validation, _top1, max_drop=max_drop / 100, drop_type=nncf.DropType.ABSOLUTE,
                advanced_quantization_parameters=advanced, **common)
        by_design, kept = float_weights(plain, names), float_weights(quantized, names)
        settings = {"library": f"nncf {nncf.__version__}", "mode": "static",
                    "weights": "int8 symmetric per channel",
                    "activations": "int8 asymmetric per tensor, global min-max range",
                    "overflow_fix": "disabled (VNNI)" if vnni else "enabled (no VNNI: 7-bit weights)",
                    "inference_precision": precision,
                    # NNCF's CPU rules leave the squeeze-excite convs (1x1 on the pooled vector) float
                    "float_by_design": by_design, "float_nodes": [name for name in kept if name not in by_design]}
    ov.save_model(quantized, str(out_xml))
    return {"float_nodes": [], **settings}


def compute_op_names(model) -> list[str]:
    """'kind #k (OpenVINO's name)' for the k-th conv / matmul in graph order: OpenVINO renames the
    convs it folds batch norm into, so the position is what a user can find again."""
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() in COMPUTE_OPS]
    kinds = {"Convolution": "conv", "GroupConvolution": "depthwise conv", "MatMul": "linear"}
    return [f"{kinds[op.get_type_name()]} #{k} ({op.get_friendly_name()})" for k, op in enumerate(ops)]


def float_weights(model, names: list[str]) -> list[str]:
    """The convs / matmuls (named as in the float model: NNCF renames the ones it quantizes) whose
    weights are a plain float constant, i.e. not quantized; matched by position, as quantizing
    inserts nodes around compute ops but neither adds nor reorders them."""
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() in COMPUTE_OPS]
    if len(ops) != len(names):
        raise RuntimeError(f"NNCF changed the number of compute ops ({len(names)} -> {len(ops)})")
    return [name for name, op in zip(names, ops) if op.input_value(1).get_node().get_type_name() == "Constant"]


def _split(labels: np.ndarray, batches) -> list[np.ndarray]:
    bounds = np.cumsum([len(batch) for batch in batches])[:-1]
    return np.split(labels, bounds)


def _top1(compiled, items) -> tuple[float, None]:
    right = total = 0
    for batch, labels in items:
        logits = compiled(batch)[0]
        right += int((np.asarray(logits).argmax(1) == labels).sum())
        total += len(labels)
    return right / max(total, 1), None


def logits(path: Path, batches, precision: str) -> np.ndarray:
    run, _ = openvino_runner(path, precision)
    return np.concatenate([run(batch)[0] for batch in batches])


__all__ = ["compute_op_names", "float_weights", "logits", "quantize_ir", "runtime_precision"]
