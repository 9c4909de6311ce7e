"""INT8 post-training quantization: a trained toy model keeps its accuracy, the held-out figures
are measured on both models, per-tensor SQNR ranks the layers, max-drop keeps layers in float;
quantization-aware training simulates the same rounding and ships INT8."""
import json

import numpy as np
import pytest
import torch

import effscale
from effscale import EffscaleError
from effscale.cli import main
from effscale.export import load_exported, read_manifest
from effscale.export.quantize import quantize, sqnr_db
from effscale.train import train
from test_train import config, toy  # noqa: F401  (the toy fixture: a learnable 4-class IDX set and spec)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("run") / "run"
    summary = train(config(toy, out, epochs=8, lr=0.01))
    assert summary["test_top1"] > 50  # chance is 25 %: quantization has something to keep
    return out


def test_int8_keeps_the_trained_accuracy_and_says_what_it_measured(trained, tmp_path, capsys):
    # through the command line: calibration data defaults to what the run trained on
    assert main(["quantize", str(trained), "--out", str(tmp_path / "int8"), "--samples", "64", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    q = manifest["quantization"]
    assert manifest["precision"] == "int8" and q["calibration"].startswith("min-max on 64 images of idx:")
    accuracy = q["accuracy"]
    assert accuracy["samples"] == 64 and accuracy["fp32_top1"] > 50
    assert accuracy["drop"] <= 5 and accuracy["top1_agreement"] >= 0.95 and accuracy["logits_sqnr_db"] > 15
    # the artifact is INT8 (QDQ nodes in the graph) and runs through the same loader as any export
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    model = load_exported(tmp_path / "int8")
    assert model.manifest["quantization"]["float_nodes"] == [] and model.num_classes == 4
    data = q["calibration"].split(" of ")[1]  # the run's own data, recorded
    assert main(["eval", str(tmp_path / "int8"), "--data", data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(accuracy["int8_top1"], abs=0.01)  # eval runs the INT8 model


def test_bad_calibration_is_refused_before_quantizing(trained, tmp_path):
    with pytest.raises(EffscaleError, match="the model predicts 4 classes but fashion-mnist.* has 10; use data with the model's classes"):
        quantize(trained, tmp_path / "x", calib="fashion-mnist")
    with pytest.raises(EffscaleError, match="samples=0 must be an integer >= 1"):
        quantize(trained, tmp_path / "y", samples=0)
    with pytest.raises(EffscaleError, match="max_drop=-1 must be a number of top-1 points >= 0"):
        quantize(trained, tmp_path / "z", max_drop=-1)
    assert not any(p.name.startswith((".x", ".y", ".z", "x", "y", "z")) for p in tmp_path.iterdir())


def test_sqnr_is_the_signal_to_noise_ratio_in_db():
    signal = np.array([3.0, 4.0])  # energy 25
    assert sqnr_db(signal, signal) == float("inf")
    assert sqnr_db(signal, signal + np.array([0.5, 0.0])) == pytest.approx(10 * np.log10(25 / 0.25))


def test_max_drop_moves_the_worst_ranked_layers_to_float_until_the_budget_holds(trained, tmp_path, monkeypatch):
    from effscale.export import quantize as module

    # The measured drop is replaced by a schedule (2 points, then 1, then 0) to drive the loop; the
    # ranking, the quantizer and the artifact are real.
    schedule, excluded_per_round = iter([2.0, 1.0, 0.0]), []
    real_quantize, real_accuracy = module._quantize, module._accuracy

    def quantize_recording(quantization, prepared, output, calibration, settings, excluded):
        excluded_per_round.append(list(excluded))
        return real_quantize(quantization, prepared, output, calibration, settings, excluded)

    def scheduled(*args):
        return {**real_accuracy(*args), "drop": next(schedule)}

    monkeypatch.setattr(module, "_quantize", quantize_recording)
    monkeypatch.setattr(module, "_accuracy", scheduled)
    manifest = quantize(trained, tmp_path / "mixed", samples=32, max_drop=0.5, analyze=True)
    q = manifest["quantization"]
    ranking = q["sqnr_db"]  # every quantized tensor, worst first, with the node that makes it
    assert len(ranking) >= 10 and [r["sqnr_db"] for r in ranking] == sorted(r["sqnr_db"] for r in ranking)
    assert all(r["node"] for r in ranking[:3])
    rounds = excluded_per_round[1:]  # the first call is the analysis's plain INT8 model
    assert len(rounds) == 3 and rounds[0] == [] and 0 < len(rounds[1]) < len(rounds[2])
    assert q["float_nodes"] == rounds[2] and q["accuracy"]["drop"] == 0.0
    ranked = [r["node"] for r in ranking if r["node"]]
    assert q["float_nodes"] == list(dict.fromkeys(ranked))[:len(q["float_nodes"])]  # the worst, in order
    import onnx

    graph = onnx.load(str(tmp_path / "mixed" / "model.onnx")).graph
    quantized_inputs = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    floats = [n for n in graph.node if n.name in q["float_nodes"]]
    assert len(floats) == len(q["float_nodes"])  # the listed nodes are in the artifact, by name
    for node in (n for n in floats if n.op_type in ("Conv", "Gemm")):
        assert node.input[1] not in quantized_inputs  # a float conv keeps float weights


@pytest.mark.parametrize("weights_only", [False, True])
def test_openvino_int8_through_nncf_keeps_accuracy_and_is_int8_in_the_graph(trained, tmp_path, capsys, weights_only):
    pytest.importorskip("nncf")
    import openvino as ov

    out = tmp_path / "ov"
    args = ["quantize", str(trained), "--format", "openvino", "--out", str(out), "--samples", "64", "--json"]
    assert main(args + (["--weights-only"] if weights_only else [])) == 0
    manifest = json.loads(capsys.readouterr().out)
    q, accuracy = manifest["quantization"], manifest["quantization"]["accuracy"]
    assert manifest["runtime_format"] == "openvino" and q["library"].startswith("nncf ")
    assert accuracy["drop"] <= 5 and accuracy["top1_agreement"] >= 0.95
    ops = ov.Core().read_model(str(out / "model.xml")).get_ordered_ops()
    int8_constants = [op for op in ops if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
    fake_quantize = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    assert int8_constants  # the weights are stored in 8 bits
    if weights_only:
        assert manifest["precision"] == "int8 weights" and not fake_quantize  # activations stay float
        assert accuracy["logits_sqnr_db"] > 25  # weight-only INT8 is far less noisy than full INT8
        assert (out / "model.bin").stat().st_size < 0.6 * len((out / "model.safetensors").read_bytes())
    else:
        assert manifest["precision"] == "int8" and len(fake_quantize) >= 10  # activations quantized too
        assert q["float_nodes"] == [] and all(name.startswith("conv #") for name in q["float_by_design"])
    ran = manifest["inference_precision"]
    model = load_exported(out)
    assert model.runtime["precision"] == ran  # the float ops run in the precision quantize measured with
    # weight-only models run on one stream (OpenVINO 2026.4 gives garbage from them on two)
    from effscale.export.openvino_runtime import weight_compressed

    assert weight_compressed(model._run.model) == weights_only
    if weights_only:
        assert model._run.streams == 1


def test_openvino_modes_refuse_what_they_cannot_do(trained, tmp_path):
    with pytest.raises(EffscaleError, match="weights_only .* is an OpenVINO mode .*format='openvino'"):
        quantize(trained, tmp_path / "a", weights_only=True)
    with pytest.raises(EffscaleError, match="max_drop chooses .* weights_only quantizes no activations"):
        quantize(trained, tmp_path / "b", format="openvino", weights_only=True, max_drop=1)
    with pytest.raises(EffscaleError, match="analyze.* use format='onnx'"):
        quantize(trained, tmp_path / "c", format="openvino", analyze=True)
    with pytest.raises(EffscaleError, match="format 'tflite' is unknown; allowed: onnx, openvino"):
        quantize(trained, tmp_path / "d", format="tflite")
    assert not list(tmp_path.iterdir())


# -- quantization-aware training --------------------------------------------------------------------
def test_qat_simulation_rounds_weights_per_channel_passes_gradients_and_comes_off_cleanly():
    from effscale.train.qat import prepare_qat, quantized_modules

    torch.manual_seed(0)
    model = effscale.create_model("efficientnet_b0", num_classes=5)
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():  # batch-norm statistics of these images: a random init's eval output is ~1e-13
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None
        model(images)
    model.eval()
    float_out = model(images).detach()
    originals = {name: module.weight.detach().clone() for name, module in quantized_modules(model)}
    assert not any(".se." in f".{name}." for name in originals) and "classifier" in originals
    handle = prepare_qat(model, images)
    name, conv = next(iter(quantized_modules(model)))
    rounded = conv.weight  # what the forward sees: each output channel on its own 255-level grid
    for channel in range(rounded.shape[0]):
        step = originals[name][channel].abs().max() / 127
        levels = rounded[channel] / step
        assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
    simulated = model(images)
    error = (simulated - float_out).norm() / float_out.norm()
    assert 0 < error < 0.5  # INT8 noise: present, and small against the signal
    simulated.sum().backward()  # straight-through: the float weights still get gradients
    assert conv.parametrizations.weight.original.grad.abs().sum() > 0
    handle.remove()
    assert all(torch.equal(module.weight, originals[n]) for n, module in quantized_modules(model))
    assert torch.allclose(model(images), float_out, atol=1e-5)  # the plain float model again


def test_qat_fine_tunes_then_ships_int8(trained, toy, tmp_path):  # noqa: F811
    from effscale.weights import model_from_file

    summary = train(config(toy, tmp_path / "qat", init=str(trained), qat=True, epochs=1))
    qat = summary["qat"]
    assert 0 < qat["simulated_int8_top1"] <= 100 and summary["precision"] == "fp32"
    before, after = model_from_file(trained / "model.safetensors"), model_from_file(summary["weights"])
    assert not any("parametrizations" in key for key in after.state_dict())  # plain float weights saved
    changed = [not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values())]
    assert any(changed)  # it fine-tuned
    assert qat["int8"]["drop"] == pytest.approx(qat["int8"]["fp32_top1"] - qat["int8"]["int8_top1"], abs=0.011)
    assert read_manifest(qat["int8_dir"])["precision"] == "int8" and qat["int8"]["fp32_top1"] > 50
    with pytest.raises(EffscaleError, match="--qat fine-tunes a trained model .* give the run or weights to "
                                            "fine-tune with --init"):
        train(config(toy, tmp_path / "x", qat=True))
    with pytest.raises(EffscaleError, match="--qat simulates INT8 rounding in fp32; --precision bf16 cannot"):
        train(config(toy, tmp_path / "y", init=str(trained), qat=True, precision="bf16"))
