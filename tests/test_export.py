"""Export to ONNX / OpenVINO: self-describing artifacts, parity checked on every export, run back
through predict and eval on every runtime. Tiny networks: an export takes a second or two."""
import json
import random
import warnings

import numpy as np
import pytest
import torch

import effscale
from effscale import EffscaleError, NetworkSpec
from effscale.cli import main
from effscale.export import MANIFEST_NAME, ParityError, export, load_exported, read_manifest
from effscale.export import artifact as artifact_module
from test_cost import random_spec

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

TINY = NetworkSpec.from_text("network tiny res=32 stem=8 head=16\n"
                             "mbconv r1 k3 s2 e2 c8 se0.25\nmbconv r2 k5 s2 e4 c16 se0.25")
# Lite's differences from B0 in one small net: ReLU6, no squeeze-excite, TF 'same' padding.
TINY_LITE = TINY.replace(name="tiny_lite", activation="relu6", padding="same",
                         stages=tuple(s.__class__(**{**s.__dict__, "se_ratio": 0.0}) for s in TINY.stages))


def _weights(tmp_path, spec=TINY, name="tiny.safetensors", **options):
    torch.manual_seed(0)
    model = effscale.create_model(spec, **options)
    for module in model.modules():  # trained-looking BN statistics: small variances, where eps matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.01, 0.1)
    classes = [f"c{i}" for i in range(options.get("num_classes", 1000))] if not options.get("features_only") else None
    return effscale.save_weights(model, tmp_path / name, extra_metadata={"classes": classes} if classes else None)


def _close(out: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal up to `rel` of the reference's scale (small BN variances make some outputs large)."""
    assert out.shape == ref.shape
    error, scale = float((out - ref.detach()).abs().max()), float(ref.detach().abs().max())
    assert error <= rel * scale, f"max abs error {error:.3g} > {rel:g} x {scale:.3g}"


def test_onnx_artifact_describes_itself_and_runs_the_same_on_every_runtime(tmp_path):
    weights = _weights(tmp_path, num_classes=10)
    manifest = export(weights, tmp_path / "onnx")
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [MANIFEST_NAME, "model.onnx", "model.safetensors"]
    assert manifest["runtime_format"] == "onnx" and manifest["opset"] >= 17 and manifest["precision"] == "fp32"
    assert NetworkSpec.from_text(manifest["spec"]) == TINY and manifest["classes"] == [f"c{i}" for i in range(10)]
    assert manifest["preprocessing"]["resolution"] == 32 and manifest["inputs"][0]["shape"] == [None, 3, 32, 32]
    parity = manifest["parity"]
    assert parity["passed"] and parity["max_rel"] < 1e-4 and parity["top1_agreement"] == 1.0
    assert parity["runtime"]["runtime"] == "onnxruntime"
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export's: the batch is dynamic
    reference = effscale.weights.model_from_file(weights).eval()(x).detach()
    for runtime in ("onnxruntime", "openvino", "torch"):
        if runtime == "openvino":
            pytest.importorskip("openvino")
        out = load_exported(tmp_path / "onnx", runtime)(x)
        _close(out, reference)
    with pytest.raises(EffscaleError, match="runtime 'tensorrt' is unknown; allowed: onnxruntime, openvino, torch"):
        load_exported(tmp_path / "onnx", "tensorrt")
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"not a graph")  # a damaged file: one line, no traceback
    with pytest.raises(EffscaleError, match="onnxruntime cannot load .*model.onnx.*; export it again"):
        load_exported(tmp_path / "onnx")


@pytest.mark.parametrize("case", ["lite_same_grey", "features_only", "random"])
def test_parity_holds_for_lite_same_padding_one_channel_features_and_random_specs(tmp_path, case):
    if case == "lite_same_grey":
        weights = _weights(tmp_path, TINY_LITE, num_classes=7, in_chans=1)
    elif case == "features_only":
        weights = _weights(tmp_path, features_only=True)
    else:
        spec = random_spec(random.Random(3), 3).replace(resolution=40)
        weights = _weights(tmp_path, spec, num_classes=5, in_chans=2)
    manifest = export(weights, tmp_path / "out")
    model = effscale.weights.model_from_file(weights).eval()
    x = torch.randn(3, model.in_chans, model.spec.resolution, model.spec.resolution)
    outputs = load_exported(tmp_path / "out")(x)
    expected = model(x)
    if case == "features_only":
        assert [o["name"] for o in manifest["outputs"]] == [f"features_{i['reduction']}" for i in model.feature_info]
        assert len(outputs) == len(expected) == len(model.feature_info)
        for out, ref in zip(outputs, expected):
            _close(out, ref)
        assert manifest["parity"]["top1_agreement"] is None
    else:
        _close(outputs, expected)


def test_openvino_artifact_runs_in_fp32_and_matches(tmp_path):
    pytest.importorskip("openvino")
    weights = _weights(tmp_path, num_classes=10)
    manifest = export(weights, tmp_path / "ov", format="openvino")
    assert manifest["model_file"] == "model.xml" and (tmp_path / "ov" / "model.bin").is_file()
    # the precision that ran is read back from OpenVINO: fp32 even where the CPU would pick bf16
    assert manifest["parity"]["passed"] and manifest["parity"]["runtime"]["precision"] == "fp32"
    with pytest.raises(EffscaleError, match="runtime 'onnxruntime' cannot load a openvino artifact"):
        load_exported(tmp_path / "ov", "onnxruntime")


def test_a_failed_parity_check_is_an_error_and_writes_nothing(tmp_path, monkeypatch):
    weights = _weights(tmp_path, num_classes=10)
    real = artifact_module.open_runner

    def drifting(directory, manifest, runtime):
        run, ran = real(directory, manifest, runtime)
        return (lambda batch: [out + 0.05 * np.abs(out).max() for out in run(batch)]), ran

    monkeypatch.setattr(artifact_module, "open_runner", drifting)
    with pytest.raises(ParityError, match=r"does not match the PyTorch model: max relative error 5\.0\de-02 > 1\.00e-03"):
        export(weights, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]  # no artifact, no partial directory


def test_bad_exports_are_refused_before_any_work(tmp_path):
    weights = _weights(tmp_path, num_classes=10)
    with pytest.raises(EffscaleError, match="format 'tflite' is unknown; allowed: onnx, openvino"):
        export(weights, tmp_path / "x", format="tflite")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(EffscaleError, match="already exists and is not an empty directory"):
        export(weights, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    foreign = tmp_path / "foreign.pth"
    torch.save(effscale.create_model(TINY).state_dict(), foreign)
    with pytest.raises(EffscaleError, match="does not say which model it is for"):
        export(foreign, tmp_path / "y")
    with pytest.raises(EffscaleError, match="is not an effscale export"):
        load_exported(tmp_path / "full")


def test_a_model_without_weights_is_exported_with_random_weights_and_says_so(tmp_path):
    # what export() exports is decided here (the export itself is tested above)
    with pytest.warns(UserWarning, match="exporting its random initial weights"):
        network, described, classes = artifact_module._load_source(_spec_file(tmp_path), None)
    assert network.spec == TINY and "random initial weights" in described and classes is None


def _spec_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TINY.to_text())
    return path


def test_cli_export_then_predict_and_eval_through_the_artifact(tmp_path, capsys):
    weights = _weights(tmp_path, num_classes=10, in_chans=1)
    assert main(["export", str(weights), "--out", str(tmp_path / "art"), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest == read_manifest(tmp_path / "art")
    results = {}
    for runtime in ("onnxruntime", "torch"):
        assert main(["eval", str(tmp_path / "art"), "--data", "fashion-mnist", "--runtime", runtime, "--json"]) == 0
        results[runtime] = json.loads(capsys.readouterr().out)
    assert results["onnxruntime"]["samples"] == 2000 and results["onnxruntime"]["runtime"]["runtime"] == "onnxruntime"
    assert results["onnxruntime"]["confusion"] == results["torch"]["confusion"]
    image = tmp_path / "shirt.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((40, 30)) * 255).astype(np.uint8)).save(image)
    assert main(["predict", str(image), "--weights", str(tmp_path / "art"), "--top-k", "2", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top_k"]
    assert [entry["label"] for entry in top] == [f"c{entry['index']}" for entry in top]  # the manifest's classes
    assert main(["predict", str(image), "--weights", str(weights), "--runtime", "onnxruntime"]) == 2
    assert "runs exported artifacts" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["export", str(weights), "--out", str(tmp_path / "art")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_openvino_runner_splits_a_batch_over_streams_with_the_same_outputs(tmp_path):
    pytest.importorskip("openvino")
    from effscale.export.runtimes import openvino_runner

    export(_weights(tmp_path, num_classes=10), tmp_path / "ov", format="openvino")
    manifest = json.loads((tmp_path / "ov" / "effscale-export.json").read_text())
    side = NetworkSpec.from_text(manifest["spec"]).resolution
    x = np.random.default_rng(0).standard_normal((6, manifest["in_chans"], side, side)).astype(np.float32)
    one, _ = openvino_runner(tmp_path / "ov" / "model.xml", streams=1)
    two, ran = openvino_runner(tmp_path / "ov" / "model.xml", streams=2)
    assert ran["precision"] == "fp32"
    np.testing.assert_allclose(two(x)[0], one(x)[0], rtol=1e-5, atol=1e-5)
    assert len(two.compiled[x.shape][1]) == 2  # two infer requests: the batch was split
    np.testing.assert_allclose(two(x[:3])[0], one(x[:3])[0], rtol=1e-5, atol=1e-5)  # odd batch: one stream
    assert len(two.compiled[(3, *x.shape[1:])][1]) == 1
