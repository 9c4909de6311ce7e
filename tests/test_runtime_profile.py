"""Profiles of a deploy runtime (OpenVINO / ONNX Runtime at fp32, bf16, INT8): the node-to-unit
mapping, the schema's runtime field, and one real tiny INT8 profile carried through a plan that
verifies on the runtime and ships the chosen model (`plan --export`)."""
import json

import pytest

import effscale
from effscale import EffscaleError
from effscale.cli import main
from effscale.hardware import load_profile
from effscale.hardware.latency import Unit
from effscale.hardware.deployed import UNIT_FLOOR_MS, assign_nodes, node_class

from test_hardware_profile import _write, synthetic_profile


def unit(kind, out=8):
    return Unit(kind=kind, in_channels=8, out_channels=out, hw=8, batch=1, kernel=3, stride=1, macs=1, bytes=1)


# stem, one MBConv block with SE and a residual, head, classifier
UNITS = [unit("conv_k3_s2"), unit("depthwise_k3_s1"), unit("se"), unit("pointwise"), unit("residual"),
         unit("pointwise_act"), unit("classifier", out=10)]


def test_openvino_nodes_map_onto_units_with_trailing_nodes_and_a_fused_residual():
    nodes = [("Reorder", 0.5), ("Convolution", 1.0), ("GroupConvolution", 2.0), ("ReduceMean", 0.25),
             ("Convolution", 0.125), ("Convolution", 0.125), ("Subgraph", 0.5), ("Convolution", 3.0),
             ("Convolution", 4.0), ("ReduceMean", 0.5), ("FullyConnectedQuantizedLegacy", 1.5)]
    times = assign_nodes(UNITS, nodes)
    # the input reorder belongs to the stem; the SE gate's multiply to the SE; the residual add was
    # fused into the projection conv by the runtime: its unit is at the floor, not zero
    assert times == [1.5, 2.0, 1.0, 3.0, UNIT_FLOOR_MS, 4.0, 2.0]


def test_onnxruntime_int8_nodes_give_the_residual_its_own_add():
    nodes = [("QuantizeLinear", 0.1), ("QLinearConv", 1.0), ("QLinearSigmoid", 0.2), ("QLinearMul", 0.2),
             ("QLinearConv", 2.0), ("DequantizeLinear", 0.1), ("ReduceMean", 0.3), ("QuantizeLinear", 0.1),
             ("QLinearConv", 0.2), ("QLinearConv", 0.2), ("QLinearMul", 0.1), ("QLinearConv", 3.0),
             ("QLinearAdd", 0.7), ("QLinearConv", 4.0), ("ReduceMean", 0.5), ("Reshape", 0.1), ("QGemm", 1.0),
             ("DequantizeLinear", 0.1)]
    times = assign_nodes(UNITS, nodes)
    assert times == pytest.approx([1.5, 2.1, 0.9, 3.0, 0.7, 4.0, 1.7])
    assert sum(times) == pytest.approx(sum(ms for _, ms in nodes))  # every node's time lands in one unit


def test_nodes_that_do_not_line_up_are_an_error_naming_the_counts():
    nodes = [("Convolution", 1.0), ("GroupConvolution", 1.0), ("ReduceMean", 1.0), ("Convolution", 1.0),
             ("Convolution", 1.0), ("ReduceMean", 1.0), ("FullyConnected", 1.0)]  # project and head convs missing
    with pytest.raises(EffscaleError, match=r"cannot map .* of tiny onto its layers: expected 9 compute ops \(6 conv, 2 reduce, "
                                            r"1 matmul\).* ran 7 \(4 conv, 2 reduce, 1 matmul\)"):
        assign_nodes(UNITS, nodes, what="tiny")
    assert [node_class(op) for op in ("FusedConv", "GroupConvolution", "GlobalAveragePool", "Gemm", "QLinearAdd",
                                      "Swish")] == ["conv", "conv", "reduce", "matmul", "add", "other"]


@pytest.mark.parametrize("runtime, precision, message", [
    ("torch", "int8", "precision 'int8' is not one a torch profile measures .*fp32, bf16"),
    ("onnxruntime", "bf16", "precision 'bf16' is not one a onnxruntime profile measures .*fp32, int8"),
    ("tflite", "fp32", "field 'runtime' must be one of torch, openvino, onnxruntime"),
])
def test_profile_runtime_and_precision_must_go_together(tmp_path, runtime, precision, message):
    data = {**synthetic_profile().to_dict(), "runtime": runtime, "precision": precision}
    with pytest.raises(EffscaleError, match=message):
        load_profile(_write(tmp_path, data))


def test_torch_profiles_keep_their_old_form_and_runtime_ones_say_theirs(tmp_path):
    assert "runtime" not in synthetic_profile().to_dict()
    saved = synthetic_profile(runtime="openvino", precision="int8").save(tmp_path / "ov.json")
    loaded = load_profile(saved)
    assert (loaded.runtime, loaded.precision) == ("openvino", "int8")
    assert json.loads(saved.read_text())["runtime"] == "openvino"


def test_bad_runtime_requests_fail_before_measuring(tmp_path, capsys):
    assert main(["profile", "--runtime", "onnxruntime", "--precision", "bf16", "--tiny",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "precision 'bf16' is not one onnxruntime runs here; allowed: fp32, int8" in capsys.readouterr().err
    assert main(["profile", "--precision", "int8", "--tiny", "--out", str(tmp_path / "p.json")]) == 2
    assert "int8 is a deploy runtime's: --runtime openvino or onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
    torch_profile = synthetic_profile().save(tmp_path / "torch.json")
    assert main(["plan", "--device", str(torch_profile), "--latency-ms", "5", "--export", str(tmp_path / "x")]) == 2
    assert "this profile times eager torch: profile the deploy runtime first" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_tiny_openvino_int8_profile_plans_verifies_and_ships_on_the_runtime(tmp_path, capsys):
    pytest.importorskip("nncf")
    path = tmp_path / "ov.json"
    assert main(["profile", "--runtime", "openvino", "--precision", "int8", "--tiny", "--out", str(path)]) == 0
    profile = load_profile(path)
    assert (profile.runtime, profile.precision) == ("openvino", "int8")
    assert profile.machine["runtime_version"] and profile.machine["float_ops"] in ("bf16", "fp32")
    # the units come from the runtime's counters: every unit of both networks, timed > 0
    assert len(profile.layers) > 40 and all(row["median_ms"] > 0 for row in profile.layers)
    base = effscale.NetworkSpec.from_text(profile.members[0]["spec"])
    (tmp_path / "base.txt").write_text(base.to_text() + "\n")
    # Timings of test-sized networks swing by tens of percent between tests, so the binding budget
    # is memory (predicted from the spec: deterministic), which keeps the pick near the base; the
    # latency budget is there to be verified on the runtime, and is loose enough to always hold.
    from effscale.hardware.budgets import predict_peak_memory

    memory_mb = 1.02 * predict_peak_memory(base, profile).total_mb
    latency_ms = 100 * max(m["median_ms"] for m in profile.members)
    capsys.readouterr()
    assert main(["plan", "--device", str(path), "--latency-ms", f"{latency_ms:g}", "--memory-mb", f"{memory_mb:g}",
                 "--base", str(tmp_path / "base.txt"), "--export", str(tmp_path / "shipped"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["runtime"], result["precision"]) == ("openvino", "int8")
    # verified by timing the INT8 build on OpenVINO (not eager torch: that is ~3x slower at this size)
    assert result["fits"] and len(result["attempts"]) == 1 and result["attempts"][0]["measured_ms"] > 0
    assert result["anchor"]["factor"] > 0 and result["memory_mb"] <= memory_mb
    shipped = result["export"]
    assert shipped["parity"]["passed"] and shipped["measured_ms"] > 0
    assert shipped["fits"] == (shipped["measured_ms"] <= latency_ms)
    from effscale.export import load_exported, read_manifest

    manifest = read_manifest(tmp_path / "shipped")
    assert manifest["precision"] == "int8" and "synthetic" in manifest["quantization"]["calibration"]
    assert effscale.NetworkSpec.from_text(manifest["spec"]).name == result["name"]
    assert any("random initial weights" in note and "effscale quantize RUN" in note for note in result["notes"])
    model = load_exported(tmp_path / "shipped")  # a working INT8 artifact
    import torch

    assert model(torch.zeros(2, 3, base.resolution, base.resolution)).shape == (2, 1000)
