"""The spectrum analysis (issue 13, part 3): energy kept by resolution and the power slope on
images whose spectra are known, the sources, the report and the CLI."""
import json

import numpy as np
import pytest

from effscale import EffscaleError
from effscale.analysis import analyse, load_images, ring_energy, run_spectrum, texture_images


def _power_law(size: int, exponent: float, seed: int) -> np.ndarray:
    """An image whose power falls as f^exponent (random phases)."""
    rng = np.random.default_rng(seed)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")) * size
    amplitude = np.where(f > 0, np.maximum(f, 1e-9) ** (exponent / 2), 0)
    return np.real(np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((size, size)))))


def test_known_spectra_give_their_slope_and_energy():
    white = analyse([np.random.default_rng(k).normal(size=(128, 128)) for k in range(8)])
    assert abs(white["slope"]) < 0.3  # flat
    assert white["kept"][64] == pytest.approx(0.25, abs=0.05)  # energy grows with the disc's area: (64/128)^2
    natural = analyse([_power_law(128, -2.0, k) for k in range(8)])
    assert natural["slope"] == pytest.approx(-2.0, abs=0.25)
    assert natural["kept"][64] > white["kept"][64] + 0.5  # most of its energy at low frequencies
    y, x = np.mgrid[0:128, 0:128]
    grating = np.sin(2 * np.pi * 20 * x / 128)  # 20 cycles per image
    energy = ring_energy(grating)
    assert energy.argmax() == 20
    single = analyse([grating])
    assert single["kept"][32] < 0.05 and single["kept"][48] > 0.9  # Nyquist 16 misses it, 24 sees it
    assert single["min_resolution"]["95"] in (44, 48)
    small = analyse([np.random.default_rng(0).normal(size=(28, 28))])
    assert small["kept"][28] == 1.0 and small["kept"][32] == 1.0  # at or above its native size: everything


def test_verdicts_follow_where_the_energy_is():
    fine = analyse(texture_images(4, size=128, seed=0))  # all its detail is near its 64-cycle Nyquist
    assert fine["slope"] > -1.0 and fine["min_resolution"]["95"] > 64
    assert fine["verdict"].startswith("the published balance")  # from 224 px: 128 px holds all there is
    assert analyse(texture_images(4, size=128, seed=0), base_resolution=64)["verdict"].startswith(
        "favours resolution (gamma): its detail lies beyond what 64 px sees")
    with pytest.raises(EffscaleError, match="base resolution 0 must be an integer from 8"):
        analyse(texture_images(1, size=64), base_resolution=0)
    coarse = analyse([_power_law(28, -3.0, k) for k in range(4)])
    assert coarse["verdict"].startswith("favours width and depth")
    assert texture_images(2, size=64, seed=1)[1].tolist() == texture_images(2, size=64, seed=1)[1].tolist()


def test_bad_sources_and_images_are_refused_by_name(tmp_path):
    with pytest.raises(EffscaleError, match="data 'imagenet' is unknown"):
        load_images("imagenet")
    with pytest.raises(EffscaleError, match="samples=0 must be an integer >= 1"):
        load_images("textures", samples=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EffscaleError, match="no image files"):
        load_images(f"images:{tmp_path / 'empty'}")
    with pytest.raises(EffscaleError, match="set 'faces' is unknown"):
        load_images("skimage:faces")
    with pytest.raises(EffscaleError, match="no image with any variation"):
        analyse([np.full((32, 32), 7.0)])
    with pytest.raises(EffscaleError, match="too small"):
        analyse([np.zeros((4, 4))])


def test_cli_writes_the_report(tmp_path, capsys):
    from effscale.cli import main

    from PIL import Image
    folder = tmp_path / "photos" / "a"
    folder.mkdir(parents=True)
    for k in range(3):
        Image.fromarray(texture_images(1, size=96, seed=k)[0]).save(folder / f"{k}.png")
    out = tmp_path / "report"
    assert main(["analyze", "spectrum", "--data", "fashion-mnist", "--data", f"folder:{tmp_path / 'photos'}",
                 "--samples", "50", "--out", str(out)]) == 0
    assert "favours" in capsys.readouterr().out
    saved = json.loads((out / "spectrum.json").read_text())
    assert [s["images"] for s in saved["sources"]] == [50, 3] and saved["command"].startswith("effscale analyze")
    assert (out / "report.md").read_text().count("| fashion-mnist |") == 1 and (out / "spectrum.png").stat().st_size
    again = run_spectrum(["fashion-mnist"], samples=50)  # the same draw: the same numbers
    assert again["sources"][0]["kept"] == {int(k): v for k, v in saved["sources"][0]["kept"].items()}


# -- robustness ----------------------------------------------------------------------------------------
def test_pgd_at_zero_epsilon_changes_nothing_and_fgsm_erodes_a_linear_margin_exactly():
    import torch

    from effscale.analysis.robustness import attack, margins, robustness

    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 2))
    images = 0.25 + 0.5 * torch.rand(16, 2, 4, 4)  # inside (0.25, 0.75): a small step is never clipped
    labels = torch.randint(0, 2, (16,))
    identity = lambda x: x  # noqa: E731
    assert torch.equal(attack(linear, identity, images, labels, 0.0, steps=10, step_size=0.1, random_start=True),
                       images)
    eps = 0.01
    moved = attack(linear, identity, images, labels, eps)  # FGSM
    with torch.no_grad():
        before, after = margins(linear(images), labels), margins(linear(moved), labels)
    weight = linear[1].weight
    # two classes: the margin is (w_true - w_other) . x + b, and FGSM moves each pixel by eps against it
    expected = eps * (weight[labels] - weight[1 - labels]).abs().sum(1)
    assert torch.allclose(before - after, expected, atol=1e-6)
    measured = robustness(linear, identity, images, labels, epsilons=(0.0, eps), steps=5)
    assert measured["pgd"]["0"]["success"] == 0 and measured["pgd"]["0"]["erosion"] == 0
    assert measured["fgsm"]["0.01"]["erosion"] > 0 and measured["grad_l1"] > 0
    with pytest.raises(EffscaleError, match="epsilon -0.1 must be a number in"):
        robustness(linear, identity, images, labels, epsilons=(-0.1,))


def test_robustness_of_a_study_extends_its_rows(tmp_path, capsys):
    from effscale.cli import main
    from effscale.search import StudyConfig, run_study

    from test_search import BUDGET, MICRO  # the lab tests' micro base and budget

    study = tmp_path / "study"
    run_study(StudyConfig(model=None, base=MICRO, data="fashion-mnist", out=str(study), targets=(2,), seeds=2,
                          budget=BUDGET, strategies=("compound", "width"), progress=False))
    assert len(list((study / "models").glob("*-s1.safetensors"))) == 3  # every model of every seed
    assert main(["analyze", "robustness", str(study), "--samples", "40", "--epsilons", "0,2/255", "--steps", "3",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["rows"]) == 6 and all({"strategy", "seed", "macs", "top1"} <= r.keys() for r in report["rows"])
    first = report["rows"][0]["robustness"]
    assert first["pgd"]["0"]["success"] == 0 and first["samples"] == 40
    assert 0 <= first["pgd"]["0.00784314"]["success"] <= 100
    assert {(s["strategy"], s["seeds"]) for s in report["summary"]} == {("base", 2), ("compound", 2), ("width", 2)}
    assert (study / "robustness" / "robustness.png").stat().st_size and "compound" in (
        study / "robustness" / "robustness.md").read_text()
    nothing = tmp_path / "bare"  # a study run with --no-weights: rows without weights
    nothing.mkdir()
    rows = [{**r, "weights": None} for r in json.loads((study / "results.json").read_text())["rows"]]
    (nothing / "results.json").write_text(json.dumps({"rows": rows}))
    with pytest.raises(EffscaleError, match="kept no model weights"):
        from effscale.search.robustness_study import analyze_robustness
        analyze_robustness(nothing, progress=False)


# -- representation ------------------------------------------------------------------------------------
def test_few_shot_probe_and_geometry_on_features_with_known_structure():
    from effscale.analysis.representation import class_geometry, few_shot, linear_probe

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 40)
    centres = rng.normal(size=(6, 8)) * 10
    separated = centres[labels] + rng.normal(size=(240, 8))  # far-apart clusters
    mixed = rng.normal(size=(240, 8))  # no class structure at all
    good = few_shot(separated, labels, shots=1, episodes=50)
    chance = few_shot(mixed, labels, shots=5, episodes=200, metric="cosine")
    assert good["accuracy"] > 95 and abs(chance["accuracy"] - 20) < 4 and chance["ci95"] > 0  # 5-way: 20 %
    assert class_geometry(separated, labels)["ratio"] > 20 > 0.2 > class_geometry(mixed, labels)["ratio"]
    probe = linear_probe(separated[::2], labels[::2], separated[1::2], labels[1::2], per_class=10)
    assert probe["accuracy"] > 95 and probe["train_images"] == 60 and probe["cover_ratio"] == 7.5
    with pytest.raises(EffscaleError, match="5-way episodes need 5 classes; the data has 2"):
        few_shot(mixed[:80], labels[:80] % 2)


def test_representation_of_a_study_and_an_unreachable_target(tmp_path):
    from effscale.search import StudyConfig, run_study
    from effscale.search.representation_study import analyze_representation

    from test_search import BUDGET, MICRO

    study = tmp_path / "study"
    run_study(StudyConfig(model=None, base=MICRO, data="fashion-mnist", out=str(study), targets=(2,), seeds=1,
                          budget=BUDGET, strategies=("width",), progress=False))
    report = analyze_representation(study, probe_sizes=(5, 20), episodes=20, progress=False)
    assert [r["strategy"] for r in report["rows"]] == ["base", "width"]
    row = report["rows"][1]["representation"]
    assert report["rows"][0]["representation"]["dim"] == MICRO.head_channels < row["dim"]  # width widens the head
    assert [p["per_class"] for p in row["probes"]] == [5, 20]
    assert {(f["shots"], f["metric"]) for f in row["few_shot"]} == {(1, "euclidean"), (1, "cosine"), (5, "euclidean"),
                                                                    (5, "cosine")}
    assert (study / "representation" / "representation.md").read_text().count("| width |") == 1
    with pytest.raises(EffscaleError, match="no model reaches the 5-way 1-shot target 1"):
        analyze_representation(study, probe_sizes=(5,), episodes=20, target=1.0, progress=False,
                               out=tmp_path / "again")
    assert (tmp_path / "again" / "representation.json").is_file()  # written before the error: nothing lost
