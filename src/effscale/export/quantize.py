"""Post-training static INT8 through ONNX Runtime's QDQ quantizer (or, with format="openvino",
NNCF on the OpenVINO IR: openvino_int8.py), calibrated on the user's data, with the accuracy it
costs measured on held-out data, per-layer SQNR, and layers kept in float until a top-1 budget holds.

Settings, and why: QDQ format (onnxruntime and OpenVINO both read it); weights INT8 symmetric
per output channel (a depthwise conv's channels differ by orders of magnitude: one scale per
tensor would flatten the small ones to zero); activations UINT8 asymmetric per tensor (swish and
the SE gate's sigmoid are one-sided: an asymmetric range spends no code on negatives that do not
occur); min-max calibration on `samples` training images. Without VNNI (AVX512-VNNI / AVX-VNNI)
x86 INT8 kernels can saturate in their 16-bit intermediate sums, so there weights use 7 bits
(`reduce_range`), as ONNX Runtime advises for such CPUs; the choice is recorded.

Accuracy is measured, not assumed: fp32 and INT8 top-1 on the data's held-out split (the same
images for both), top-1 agreement and the logits' SQNR (10 log10(|fp32|^2 / |fp32 - int8|^2),
dB). `analyze=True` adds every quantized tensor's SQNR against its float counterpart
(`onnxruntime.quantization.qdq_loss_debug`), sorted worst first. `max_drop` (points of top-1)
keeps the worst layers (by that ranking) in float, a few at a time, until the measured drop is
within it, and reports which stayed float; if even the fully float model misses it, it raises.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import EffscaleError
from .artifact import _check_out, _is_dense, _load_source, _permissions_as_umask, export
from .manifest import FORMATS, read_manifest, write_manifest
from .runtimes import onnxruntime_runner, require_module

CALIBRATION_SAMPLES = 300
EVAL_SAMPLES = 2000
ANALYZE_SAMPLES = 32
MAX_ROUNDS = 8


def has_vnni() -> bool:
    """True where the CPU has VNNI (the INT8 dot-product instructions that do not saturate)."""
    from ..cpuload import cpu_info

    return bool(cpu_info()[1] & {"avx512_vnni", "avx_vnni", "amx_int8"})


def quantize(source, out: str | os.PathLike, *, format: str = "onnx", weights_only: bool = False,
             calib: str | None = None, samples: int = CALIBRATION_SAMPLES, eval_samples: int = EVAL_SAMPLES,
             analyze: bool = False, max_drop: float | None = None, model=None, float_out=None) -> dict:
    """Quantize `source` (what `export` takes: weights file, run directory, ...) to an INT8 artifact
    in `out`; returns its manifest, whose "quantization" entry holds the settings, the measured
    accuracy and, with `analyze`, the per-layer SQNR.

    `format`: "onnx" (ONNX Runtime's QDQ quantizer; runs on onnxruntime and openvino) or "openvino"
    (NNCF on the OpenVINO IR: the faster INT8 on OpenVINO). `weights_only` (openvino): INT8 weights,
    float activations (bf16 where native), no calibration needed but accuracy still measured.
    `float_out`: also keep the (parity-checked) fp32 artifact quantize starts from there, e.g. to
    compare the two (export/compare.py); same rules as `out`."""
    for name, value, low in (("samples", samples, 1), ("eval_samples", eval_samples, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise EffscaleError(f"{name}={value!r} must be an integer >= {low}")
    if max_drop is not None and not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and max_drop >= 0):
        raise EffscaleError(f"max_drop={max_drop!r} must be a number of top-1 points >= 0")
    if format not in FORMATS:
        raise EffscaleError(f"format {format!r} is unknown; allowed: {', '.join(FORMATS)}")
    if weights_only and format != "openvino":
        raise EffscaleError("weights_only (INT8 weights, float activations) is an OpenVINO mode (NNCF "
                            "compress_weights): use format='openvino' (--format openvino)")
    if weights_only and max_drop is not None:
        raise EffscaleError("max_drop chooses which layers' activations stay float; weights_only quantizes no "
                            "activations: drop one of them")
    if analyze and format != "onnx":
        raise EffscaleError("the per-tensor SQNR (analyze) is measured with ONNX Runtime's debugger on the QDQ "
                            "model: use format='onnx' (--format onnx) for --analyze")
    out = _check_out(out)
    float_out = _check_out(float_out) if float_out is not None else None
    require_module("onnxruntime.quantization" if format == "onnx" else "nncf", "INT8 quantization")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        network, described, classes = _load_source(source, model)
        if _is_dense(network):
            raise EffscaleError(f"{network.spec.name} is a detector / segmenter: INT8 quantization calibrates and "
                                "scores classifiers only (top-1); export it in fp32 with `effscale export`")
        data = calib or _recorded_data(source)
        calibration, held_out, labels = _data(data, network, samples, eval_samples)  # checked before exporting
        float_dir = work / "fp32"
        manifest = export(network, float_dir, format=format)
        manifest.update(source=described, classes=classes)
        artifact = work / "int8"
        artifact.mkdir()
        images = f"{sum(map(len, calibration))} images of {data}"
        if format == "onnx":
            settings = _onnx_int8(float_dir, artifact, calibration, held_out, labels, images, analyze, max_drop, work)
        else:
            settings = _openvino_int8(float_dir, artifact, calibration, held_out, labels, images, weights_only,
                                      max_drop)
        shutil.copy2(float_dir / "model.safetensors", artifact / "model.safetensors")
        mode = "int8 weights" if weights_only else "int8"
        manifest.update(precision=mode, source=f"{manifest['source']}, quantized")
        if "inference_precision" in settings:
            manifest["inference_precision"] = settings["inference_precision"]
        manifest["quantization"] = {**settings, "max_drop": max_drop}
        for key in ("format", "version"):
            manifest.pop(key, None)
        write_manifest(artifact, manifest)
        _permissions_as_umask(artifact)
        if float_out is not None:
            float_manifest = read_manifest(float_dir)
            float_manifest.update(source=described, classes=classes)
            write_manifest(float_dir, float_manifest)
            _permissions_as_umask(float_dir)
            if float_out.exists():
                float_out.rmdir()
            float_out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(float_dir, float_out)
        if out.exists():
            out.rmdir()
        os.replace(artifact, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return read_manifest(out)


def _onnx_int8(float_dir: Path, artifact: Path, calibration, held_out, labels, images: str, analyze: bool,
               max_drop: float | None, work: Path) -> dict:
    """ONNX Runtime QDQ; with max_drop, the worst layers by per-tensor SQNR go back to float a few
    at a time until the measured drop is within it."""
    from onnxruntime import quantization

    prepared = work / "prepared.onnx"
    quantization.quant_pre_process(str(float_dir / "model.onnx"), str(prepared), skip_symbolic_shape=True)
    settings = {"library": f"onnxruntime {_version('onnxruntime')}", "format": "QDQ",
                "weights": "int8 symmetric per channel", "activations": "uint8 asymmetric per tensor",
                "calibration": f"min-max on {images}", "reduce_range": not has_vnni()}
    ranking = _sqnr_by_tensor(prepared, work, calibration, settings) if analyze or max_drop is not None else None
    excluded: list[str] = []
    for _ in range(MAX_ROUNDS + 1):
        quantized = work / "model.onnx"
        _quantize(quantization, prepared, quantized, calibration, settings, excluded)
        accuracy = _accuracy(float_dir / "model.onnx", quantized, held_out, labels)
        if max_drop is None or accuracy["drop"] <= max_drop:
            break
        worse = [r["node"] for r in ranking if r["node"] and r["node"] not in excluded]
        if not worse:
            raise EffscaleError(f"INT8 loses {accuracy['drop']:.2f} top-1 points even with every ranked layer in "
                                f"float; max_drop={max_drop:g} cannot be met; nothing was written")
        excluded += worse[:max(1, len(worse) // 8)]
    else:
        raise EffscaleError(f"INT8 still loses {accuracy['drop']:.2f} top-1 points with {len(excluded)} layers in "
                            f"float after {MAX_ROUNDS} rounds; max_drop={max_drop:g} not met; nothing was written")
    shutil.copy2(quantized, artifact / "model.onnx")
    return {**settings, "accuracy": accuracy, "float_nodes": excluded, "sqnr_db": ranking if analyze else None}


def _openvino_int8(float_dir: Path, artifact: Path, calibration, held_out, labels, images: str,
                   weights_only: bool, max_drop: float | None) -> dict:
    from .openvino_int8 import logits, quantize_ir

    settings = quantize_ir(float_dir / "model.xml", artifact / "model.xml", calibration, weights_only=weights_only,
                           vnni=has_vnni(), max_drop=max_drop, held_out=held_out, labels=labels)
    if not weights_only:
        settings["calibration"] = f"NNCF statistics on {images}"
    reference = logits(float_dir / "model.xml", held_out, "fp32")
    try:
        quantized = logits(artifact / "model.xml", held_out, settings["inference_precision"])
    except RuntimeError as error:  # OpenVINO's CPU plugin has no bf16 kernel for some INT8 patterns
        if settings["inference_precision"] == "fp32":
            raise
        reason = str(error).strip().splitlines()[-1][:160]
        settings.update(inference_precision="fp32", inference_precision_note=f"OpenVINO could not compile this "
                        f"INT8 model with bf16 float ops ({reason}); its float ops run in fp32")
        quantized = logits(artifact / "model.xml", held_out, "fp32")
    accuracy = _agreement(reference, quantized, labels)
    if max_drop is not None and accuracy["drop"] > max_drop:
        raise EffscaleError(f"INT8 loses {accuracy['drop']:.2f} top-1 points with {len(settings['float_nodes'])} "
                            f"layers in float (NNCF's accuracy control); max_drop={max_drop:g} not met; nothing was "
                            "written")
    return {**settings, "accuracy": accuracy}


def _version(module: str) -> str:
    return __import__(module).__version__


# -- data ---------------------------------------------------------------------------------------------
def _recorded_data(source) -> str:
    from ..weights import is_effscale_file, read_metadata

    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is not None and path.is_dir():
        path = path / "model.safetensors"
    data = read_metadata(path)["extra"].get("data") if path is not None and is_effscale_file(path) else None
    if not isinstance(data, str):
        raise EffscaleError("these weights do not record the data they were trained on; give the calibration data "
                            "(--calib fashion-mnist, idx:DIR or folder:DIR)")
    return data


def _data(spec: str, model, samples: int, eval_samples: int):
    """(calibration batches, held-out batches, held-out labels): preprocessed as the model's spec says."""
    from ..data import BatchTransform, calibration_images, load_data

    if model.features_only or model.num_classes < 1:
        raise EffscaleError("quantize measures top-1 on held-out data: it needs a classifier, not a features_only "
                            "model")
    from ..data.containers import require_matching_data

    network = model.spec
    splits = load_data(spec)
    require_matching_data(model, splits.test)
    transform = BatchTransform(network.resolution, network.mean, network.std, train=False, in_chans=splits.in_chans)
    calibration = _batches(calibration_images(splits.train, network, samples).numpy())
    count = min(eval_samples, len(splits.test))
    held_out = _batches(transform(splits.test.images[:count]).numpy())
    return calibration, held_out, splits.test.labels[:count].numpy()


def _batches(images: np.ndarray, size: int = 32) -> list[np.ndarray]:
    return [np.ascontiguousarray(images[i:i + size], dtype=np.float32) for i in range(0, len(images), size)]


class _Reader:
    """onnxruntime's CalibrationDataReader over our batches (get_next for the quantizer, iteration
    for qdq_loss_debug)."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self.items = iter([{name: batch} for batch in batches])

    def get_next(self):
        return next(self.items, None)

    def __iter__(self):
        return self.items


# -- quantizing and measuring -------------------------------------------------------------------------
def _quantize(quantization, prepared: Path, output: Path, calibration, settings: dict, excluded: list[str]) -> None:
    quantization.quantize_static(
        str(prepared), str(output), _Reader(_input_name(prepared), calibration),
        quant_format=quantization.QuantFormat.QDQ, per_channel=True, reduce_range=settings["reduce_range"],
        activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
        nodes_to_exclude=list(excluded), calibrate_method=quantization.CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def _logits(path: Path, batches) -> np.ndarray:
    run, _ = onnxruntime_runner(path)
    return np.concatenate([run(batch)[0] for batch in batches])


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - other) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _accuracy(float_model: Path, quantized: Path, batches, labels: np.ndarray) -> dict:
    return _agreement(_logits(float_model, batches), _logits(quantized, batches), labels)


def _agreement(reference: np.ndarray, int8: np.ndarray, labels: np.ndarray) -> dict:
    """Held-out top-1 of both models on the same images, their agreement and the logits' SQNR."""
    fp32_top1 = 100.0 * float((reference.argmax(1) == labels).mean())
    int8_top1 = 100.0 * float((int8.argmax(1) == labels).mean())
    return {"samples": int(len(labels)), "fp32_top1": round(fp32_top1, 2), "int8_top1": round(int8_top1, 2),
            "drop": round(fp32_top1 - int8_top1, 2),
            "top1_agreement": round(float((reference.argmax(1) == int8.argmax(1)).mean()), 4),
            "logits_sqnr_db": round(sqnr_db(reference, int8), 2)}


def _sqnr_by_tensor(prepared: Path, work: Path, calibration, settings: dict) -> list[dict]:
    """Every quantized activation's SQNR (dB) against the float model's, worst first, with the node
    that produces it (what `max_drop` keeps in float)."""
    import onnx
    from onnxruntime import quantization
    from onnxruntime.quantization import qdq_loss_debug as debug

    batches = calibration[:max(1, ANALYZE_SAMPLES // 32)]
    name = _input_name(prepared)
    plain = work / "analyze_int8.onnx"
    _quantize(quantization, prepared, plain, calibration, settings, [])
    augmented_float, augmented_int8 = work / "analyze_float_aug.onnx", work / "analyze_int8_aug.onnx"
    debug.modify_model_output_intermediate_tensors(str(prepared), str(augmented_float))
    debug.modify_model_output_intermediate_tensors(str(plain), str(augmented_int8))
    float_acts = debug.collect_activations(str(augmented_float), _Reader(name, batches))
    int8_acts = debug.collect_activations(str(augmented_int8), _Reader(name, batches))
    matched = debug.create_activation_matching(int8_acts, float_acts)
    errors = debug.compute_activation_error(matched)
    nodes = onnx.load(str(prepared)).graph.node
    producers = {output: (node.name, position) for position, node in enumerate(nodes) for output in node.output}
    rows = [{"tensor": tensor, "node": producers.get(tensor, (None, None))[0],
             "position": producers.get(tensor, (None, None))[1], "sqnr_db": round(float(values["xmodel_err"]), 2)}
            for tensor, values in errors.items() if "xmodel_err" in values and math.isfinite(values["xmodel_err"])]
    return sorted(rows, key=lambda row: row["sqnr_db"])


def plot_sqnr_by_depth(ranking: list[dict], path: Path, title: str) -> Path:
    """Each quantized tensor's SQNR against its position in the graph (input -> output): where
    along the depth the INT8 noise builds up. Needs matplotlib (the `lab` extra)."""
    from ..plotting import pyplot

    plt = pyplot()
    rows = sorted((r for r in ranking if r["position"] is not None), key=lambda r: r["position"])
    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.plot([r["position"] for r in rows], [r["sqnr_db"] for r in rows], marker=".", linewidth=0.8)
    axes.set_xlabel("node position in the graph (input to output)")
    axes.set_ylabel("SQNR vs float (dB)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


__all__ = ["has_vnni", "plot_sqnr_by_depth", "quantize", "sqnr_db"]
