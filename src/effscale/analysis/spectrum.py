"""The right input resolution for a data set, from its images' power spectra (`effscale analyze spectrum`).

A model fed R x R pixels sees frequencies up to R / 2 cycles per image (the Nyquist frequency of
the resized image); whatever detail the images carry above that is averaged away by the resize.
So the question "does a higher resolution buy anything on my data?" is answered by where the
images' spectral energy lies, measured in cycles per image (CPI), which is what survives
resizing the whole image.

Per image (grey, a centred square crop at its native size, mean removed, Hann-windowed so that
the crop's edges add no false high frequencies): the 2-D power spectrum, averaged over rings of
equal radial frequency f (1 CPI wide). Two summaries, each image counting equally:
- `kept[R]`: the mean over images of the share of the image's (non-DC) energy at f <= R / 2,
  the energy a model at R px still sees; an image whose native side is at most R keeps all of it;
- the mean normalised power per ring, and its log-log slope over 2 CPI .. 0.8 x the smallest
  native Nyquist. Natural photographs fall off as f^-1.88 +- 0.43 (van der Schaaf & van Hateren
  1996, 276 calibrated images; Field 1987): a shallower slope means more energy in fine detail
  than natural images have, a steeper one less.

Recommendations: the smallest candidate resolution keeping 95 % and 99 % of the energy, and the
knee: the smallest one past which no doubling of the resolution adds KNEE_GAIN of the energy.

Verdict, against the input of the model one scales from (`base_resolution`; default
EfficientNet-B0's 224 px, where the published coefficients start): the data favours resolution
(gamma) when 95 % of its energy needs more than the base's input, and width / depth when 99 % of
it is seen at half of it or less; in between the published balance applies. The slope is stated
beside it.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import EffscaleError

NATURAL_SLOPE = -1.88  # power ~ f^-1.88 for natural photographs (van der Schaaf & van Hateren 1996)
SLOPE_MARGIN = 0.43  # their spread: slopes within it count as natural-like
BASE_RESOLUTION = 224  # EfficientNet-B0's input: where the published coefficients start
KNEE_GAIN = 0.01  # past the knee, no doubling of the resolution adds 1 % of the energy
CANDIDATES = tuple(range(8, 64, 4)) + tuple(range(64, 1025, 16))  # resolutions considered, 8 .. 1024 px
LEVELS = (0.95, 0.99)


def grey(image: np.ndarray) -> np.ndarray:
    """H x W (grey) or H x W x C (RGB / RGBA; luma weights, alpha dropped) -> float64 H x W."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[..., :3] @ np.array([0.299, 0.587, 0.114])
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0]
    raise EffscaleError(f"an image of shape {tuple(image.shape)} is neither grey (H x W) nor colour (H x W x 3)")


def ring_energy(image: np.ndarray) -> np.ndarray:
    """Energy of one image per 1-CPI ring, rings 0 .. side // 2 (ring 0 = DC, ~0 after the mean is
    removed), for the centred square crop of its native size."""
    pixels = grey(image)
    side = min(pixels.shape)
    if side < 8:
        raise EffscaleError(f"an image of {pixels.shape[1]} x {pixels.shape[0]} px is too small for a spectrum "
                            "(at least 8 px a side)")
    top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
    crop = pixels[top:top + side, left:left + side]
    crop = crop - crop.mean()
    window = np.hanning(side)
    power = np.abs(np.fft.fftshift(np.fft.fft2(crop * np.outer(window, window)))) ** 2
    frequencies = np.fft.fftshift(np.fft.fftfreq(side)) * side  # cycles per image
    radius = np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij"))
    rings = np.rint(radius).astype(int)
    inside = rings <= side // 2  # the corners beyond the Nyquist circle are left out
    return np.bincount(rings[inside], weights=power[inside], minlength=side // 2 + 1)[:side // 2 + 1]


def analyse(images, *, source: str = "", candidates=CANDIDATES, base_resolution: int = BASE_RESOLUTION) -> dict:
    """The spectrum summary of `images` (an iterable of H x W [x C] arrays at native size); see
    the module docstring for every field. `base_resolution`: the input of the model the verdict
    weighs scaling from (default EfficientNet-B0's 224 px)."""
    check_base_resolution(base_resolution)
    candidates = tuple(sorted(set(candidates) | {base_resolution, base_resolution // 2}))
    energies, sides = [], []
    for image in images:
        energy = ring_energy(image)
        total = energy[1:].sum()
        if total <= 0:
            continue  # a constant image has no spectrum to speak of
        energies.append(energy / total)
        sides.append(min(np.asarray(image).shape[:2]))
    if not energies:
        raise EffscaleError(f"{source or 'the data'}: no image with any variation to analyse")
    longest = max(len(e) for e in energies)
    power = np.zeros(longest)
    counts = np.zeros(longest)
    for energy in energies:
        # normalised power per ring: energy over the ring's circumference, so a flat spectrum is flat
        ring = np.arange(len(energy))
        power[:len(energy)] += energy / np.maximum(2 * np.pi * ring, 1)
        counts[:len(energy)] += 1
    mean_power = power / np.maximum(counts, 1)
    kept = {int(r): round(float(np.mean([_kept(e, r) for e in energies])), 5) for r in candidates}
    nyquist = min(sides) // 2
    fit_range = (2, max(3, int(0.8 * nyquist)))
    slope = _slope(mean_power, *fit_range)
    recommended = {f"{int(level * 100)}": next((r for r in candidates if kept[r] >= level), None) for level in LEVELS}
    gains = {r: kept[2 * r] - kept[r] for r in candidates if 2 * r in kept}
    knee = next((r for r in candidates if all(g < KNEE_GAIN for q, g in gains.items() if q >= r)), None)
    return {
        "source": source, "images": len(energies),
        "native_side": {"min": int(min(sides)), "median": int(np.median(sides)), "max": int(max(sides))},
        "frequencies_cpi": list(range(longest)), "power": [float(v) for v in mean_power],
        "slope": round(slope, 3), "slope_range_cpi": list(fit_range), "kept": kept,
        "min_resolution": recommended, "knee": knee, "base_resolution": base_resolution,
        "verdict": verdict(slope, recommended, kept, base_resolution),
    }


def check_base_resolution(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= max(CANDIDATES):
        raise EffscaleError(f"base resolution {value!r} must be an integer from 8 to {max(CANDIDATES)} (pixels)")
    return value


def _kept(energy: np.ndarray, resolution: int) -> float:
    """Share of an image's non-DC energy at f <= resolution / 2 (all of it when the image is smaller)."""
    limit = resolution // 2
    return float(energy[1:limit + 1].sum()) if limit < len(energy) - 1 else 1.0


def _slope(power: np.ndarray, low: int, high: int) -> float:
    rings = np.arange(low, min(high, len(power) - 1) + 1)
    rings = rings[power[rings] > 0]
    if len(rings) < 2:
        return math.nan
    return float(np.polyfit(np.log10(rings), np.log10(power[rings]), 1)[0])


def verdict(slope: float, recommended: dict, kept: dict, base: int = BASE_RESOLUTION) -> str:
    """One sentence: does the data favour resolution over width and depth, from a model at `base`
    px, and the numbers it rests on."""
    r95, r99 = recommended["95"], recommended["99"]
    at_base = kept.get(base)
    slope_text = "no slope (too few frequencies)" if math.isnan(slope) else (
        f"power slope {slope:.2f} against {NATURAL_SLOPE:.2f} +- {SLOPE_MARGIN:.2f} for natural photographs, "
        + ("more fine detail than they have" if slope > NATURAL_SLOPE + SLOPE_MARGIN else
           "less fine detail than they have" if slope < NATURAL_SLOPE - SLOPE_MARGIN else "like them"))
    numbers = (f"95 % of the energy by {r95 or '> 1024'} px, 99 % by {r99 or '> 1024'} px"
               + (f", {at_base:.1%} seen at {base} px" if at_base is not None else "") + f"; {slope_text}")
    if r95 is None or r95 > base:
        return f"favours resolution (gamma): its detail lies beyond what {base} px sees ({numbers})"
    if r99 is not None and r99 <= base // 2:
        return (f"favours width and depth over resolution: {r99} px already sees 99 % of its detail ({numbers})")
    return f"the published balance applies: its detail fits the resolutions EfficientNet uses ({numbers})"




def gamma_floor(path, data: str, base_resolution: int, target: float, level: str = "95") -> tuple[float, str]:
    """The least gamma a coefficient search on `data` should allow, from a spectrum report
    (`effscale analyze spectrum --out DIR`: DIR/spectrum.json, or the file itself): the data needs
    `min_resolution[level]` px to see that share of its energy, so one phi step should take the
    base's `base_resolution` at least that far, gamma >= needed / base (>= 1), capped at
    sqrt(target), the most gamma can be when alpha = beta = 1. Returns (floor, why)."""
    import json
    from pathlib import Path

    location = Path(path).expanduser()
    if location.is_dir():
        location = location / "spectrum.json"
    try:
        report = json.loads(location.read_text())
        sources = report["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        raise EffscaleError(f"--spectrum {str(path)!r} is not a spectrum report (make one with `effscale analyze "
                            "spectrum --data ... --out DIR`)") from None
    chosen = [s for s in sources if s.get("source") == data] or (sources if len(sources) == 1 else [])
    if not chosen:
        raise EffscaleError(f"--spectrum {str(path)!r} analyses {', '.join(s.get('source', '?') for s in sources)}, "
                            f"not {data!r}: analyse this data alone or under the same name")
    entry = chosen[0]
    needed = entry["min_resolution"][level] or max(CANDIDATES)
    floor = max(1.0, needed / base_resolution)
    cap = math.sqrt(target)
    why = (f"{entry['source']} needs {needed} px for {level} % of its spectral energy; the base sees "
           f"{base_resolution} px")
    if floor > cap:
        return cap, why + f", more than one phi step can reach (gamma <= sqrt({target:g}) = {cap:.3f}): gamma = {cap:.3f}"
    return floor, why + (f": gamma >= {floor:.3f}" if floor > 1 else ": no bound (gamma >= 1)")


__all__ = ["BASE_RESOLUTION", "CANDIDATES", "KNEE_GAIN", "NATURAL_SLOPE", "analyse", "check_base_resolution",
           "gamma_floor", "grey",
           "ring_energy", "verdict"]
