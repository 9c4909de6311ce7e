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
