"""A synthetic signal-classification task, generated in code and deterministic in a seed.

Each example is one window of `native_length` samples (think 1 s at 1024 Hz; frequencies below
are in cycles per window). Eight classes, every one with a random frequency, phase and amplitude,
a slow baseline wander and white noise (std 0.3-0.8 of the waveform's amplitude):

    sine        one tone, f in [4, 16]
    square      a band-limited square wave at f (odd harmonics 3f, 5f, ... at 1/n), blended with
                the sine: 30-100 % square, so the weakest barely differ from a sine
    sawtooth    the same with a sawtooth (all harmonics 2f, 3f, ...)
    chirp_up    a tone sweeping from [3, 8] up by a factor 2-3.5
    chirp_down  the same sweep downwards
    burst       a tone gated 1-4 times per window by a flat-topped gate down to a floor of 0-0.4
    am          a tone under a smooth sinusoidal envelope (1-4 cycles, depth 0.25-0.7)
    sine_hf     a tone plus a weak (0.25-0.5) second tone at [48, 160]

Resolution matters by design: `sine_hf` differs from `sine` only above 48 cycles, and
`square` / `sawtooth` from `sine` only in their harmonics, so a model fed the signal resampled
to L samples (Nyquist L / 2 cycles) loses them as L shrinks: at 128 samples the extra tone of
`sine_hf` is mostly filtered out, at 256 about half of it survives, at 512 all of it; at 64
samples the square's third harmonic is gone for f > ~10. Envelopes and sweeps are told apart
by shape over much of the window, which takes receptive field and capacity instead. Measured
(300 steps of batch 64, AdamW with one-cycle lr 3e-3, median of 3 seeds): series_b0 classifies
0.72 of the validation set at 64 samples, 0.81 at 128 and 0.85 at 256; at 256 samples 1.5x its
width reaches 0.88 and 2x its depth 0.89, while at 128 either gains only about a point.

`series_inputs` resamples a batch to the model's length (anti-aliased: a windowed-sinc
low-pass, then linear interpolation), normalises each example and channel, and augments
(time shift, amplitude scale) while training.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cost import _check_int
from ..errors import EffscaleError

CLASS_NAMES = ("sine", "square", "sawtooth", "chirp_up", "chirp_down", "burst", "am", "sine_hf")
TASK_NAME = "synthetic-series"
TASK_FORMS = f"{TASK_NAME}, or {TASK_NAME}:KEY=VALUE,... with keys seed (>= 0), n (train examples >= 8), " \
             "val (validation examples >= 8), e.g. synthetic-series:seed=1,n=2048"
DEFAULT_TRAIN, DEFAULT_VAL = 4096, 1024
TONE = (4.0, 16.0)  # fundamental, cycles per window
HIGH_TONE = (48.0, 160.0)  # sine_hf's extra tone
MAX_HARMONIC_CYCLES = 200.0  # square / sawtooth harmonics stop here: all visible at 512 samples
# The highest frequency generated is 200 cycles: a window of 512 samples holds it without aliasing.
MIN_NATIVE_LENGTH = 512
HIGH_TONE_AMPLITUDE = (0.25, 0.5)
HARMONIC_MIX = (0.3, 1.0)  # square / sawtooth: share of the full wave, the rest a sine
CHIRP_START, CHIRP_RATIO = (3.0, 8.0), (2.0, 3.5)  # chirp_up sweeps start -> start * ratio; down reverses
ENVELOPE_RATE = (1.0, 4.0)  # burst / am envelope cycles per window
BURST_FLOOR = (0.0, 0.4)
AM_DEPTH = (0.25, 0.7)
NOISE_STD = (0.3, 0.8)  # white noise, relative to the waveform's amplitude
MAX_SHIFT = 0.03  # training time shift, fraction of the window
AMPLITUDE_SCALE = (0.8, 1.25)  # training amplitude scale after normalisation


@dataclass
class SeriesData:
    """Train and validation signals: float32 N x C x native_length, int64 labels, class names."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]
    seed: int

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("val", self.val_x, self.val_y)):
            if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.dim() == 3):
                raise EffscaleError(f"{split} signals must be a float32 tensor N x C x length, got "
                                    f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
            if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (len(x),)):
                raise EffscaleError(f"{split} labels must be an int64 tensor of length {len(x)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise EffscaleError(f"{split} labels span {int(y.min())}..{int(y.max())}, "
                                    f"allowed 0..{len(self.classes) - 1}")
        if self.train_x.shape[1:] != self.val_x.shape[1:]:
            raise EffscaleError(f"train signals are {tuple(self.train_x.shape[1:])} and validation signals "
                                f"{tuple(self.val_x.shape[1:])}; they must match (C x length)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def native_length(self) -> int:
        return int(self.train_x.shape[2])


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, 1, generator=generator, dtype=torch.float64) * (high - low) + low


def _harmonics(theta: torch.Tensor, f: torch.Tensor, *, odd_only: bool) -> torch.Tensor:
    """Band-limited square (odd harmonics) or sawtooth (all harmonics) wave of phase `theta`."""
    out = torch.zeros_like(theta)
    for n in range(1, int(MAX_HARMONIC_CYCLES / TONE[0]) + 1):
        if odd_only and n % 2 == 0:
            continue
        out += torch.where(n * f <= MAX_HARMONIC_CYCLES, torch.sin(n * theta) / n, 0.0)
    return out * (4 / math.pi if odd_only else 2 / math.pi)


def _clean_signals(label: int, n: int, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """n noiseless waveforms of one class at times `t` (0..1), peak amplitude about 1."""
    f = _uniform(g, n, *TONE)
    phase = _uniform(g, n, 0, 2 * math.pi)
    theta = 2 * math.pi * f * t + phase
    tone = torch.sin(theta)
    name = CLASS_NAMES[label]
    if name == "sine":
        return tone
    if name == "sine_hf":
        high, strength = _uniform(g, n, *HIGH_TONE), _uniform(g, n, *HIGH_TONE_AMPLITUDE)
        return tone + strength * torch.sin(2 * math.pi * high * t + _uniform(g, n, 0, 2 * math.pi))
    if name in ("square", "sawtooth"):  # blended with the sine, so the weakest barely differ from it
        mix = _uniform(g, n, *HARMONIC_MIX)
        return (1 - mix) * tone + mix * _harmonics(theta, f, odd_only=name == "square")
    if name in ("chirp_up", "chirp_down"):
        start = _uniform(g, n, *CHIRP_START)
        end = start * _uniform(g, n, *CHIRP_RATIO)
        if name == "chirp_down":
            start, end = end, start
        return torch.sin(2 * math.pi * (start * t + (end - start) * t ** 2 / 2) + phase)
    rate = _uniform(g, n, *ENVELOPE_RATE)
    wave = torch.sin(2 * math.pi * rate * t + _uniform(g, n, 0, 2 * math.pi))
    if name == "burst":  # a flat-topped gate that closes to a random floor
        floor = _uniform(g, n, *BURST_FLOOR)
        return (floor + (1 - floor) * 0.5 * (1 + torch.tanh(4 * wave))) * tone
    depth = _uniform(g, n, *AM_DEPTH)
    return (1 + depth * wave) / (1 + depth) * tone


def make_series_data(seed: int = 0, n_train: int = DEFAULT_TRAIN, n_val: int = DEFAULT_VAL,
                     native_length: int = 1024, channels: int = 1) -> SeriesData:
    """The synthetic-series task (module docstring): classes balanced to within one example.

    With `channels` > 1 every channel carries the example's waveform with its own gain and noise.
    """
    _check_int("seed", seed, 0)
    _check_int("n_train", n_train, 1)
    _check_int("n_val", n_val, 1)
    _check_int("native_length", native_length, MIN_NATIVE_LENGTH)
    _check_int("channels", channels, 1)
    g = torch.Generator().manual_seed(seed)
    total = n_train + n_val
    # Balance each split on its own: a permutation of a balanced label list per split.
    labels = torch.cat([(torch.arange(count) % len(CLASS_NAMES))[torch.randperm(count, generator=g)]
                        for count in (n_train, n_val)])
    t = torch.arange(native_length, dtype=torch.float64) / native_length
    clean = torch.empty(total, native_length, dtype=torch.float64)
    for label in range(len(CLASS_NAMES)):
        where = (labels == label).nonzero().flatten()
        clean[where] = _clean_signals(label, len(where), t, g)
    amplitude = _uniform(g, total, 0.5, 2.0)
    wander = _uniform(g, total, 0, 0.5) * torch.sin(
        2 * math.pi * _uniform(g, total, 0.2, 1.0) * t + _uniform(g, total, 0, 2 * math.pi))
    base = (clean + wander).unsqueeze(1)  # N x 1 x L
    gain = 1 + 0.2 * torch.randn(total, channels, 1, generator=g, dtype=torch.float64) if channels > 1 else 1.0
    noise_std = _uniform(g, total, *NOISE_STD).unsqueeze(1)
    noise = noise_std * torch.randn(total, channels, native_length, generator=g, dtype=torch.float64)
    x = (amplitude.unsqueeze(1) * (gain * base + noise)).float()
    return SeriesData(train_x=x[:n_train].contiguous(), train_y=labels[:n_train].clone(),
                      val_x=x[n_train:].contiguous(), val_y=labels[n_train:].clone(), classes=CLASS_NAMES, seed=seed)


def load_series_task_data(spec: str) -> SeriesData:
    """`synthetic-series` (seed 0, 4096 train + 1024 validation) or `synthetic-series:seed=N,n=M,val=K`."""
    if not isinstance(spec, str):
        raise EffscaleError(f"data spec must be a string, got {type(spec).__name__}; allowed: {TASK_FORMS}")
    name, sep, options = spec.strip().partition(":")
    if name.strip().lower() != TASK_NAME or (sep and not options.strip()):
        raise EffscaleError(f"data spec {spec!r} is not a series task; allowed: {TASK_FORMS}")
    values = {"seed": 0, "n": DEFAULT_TRAIN, "val": DEFAULT_VAL}
    for item in options.split(",") if sep else []:
        key, eq, raw = item.strip().partition("=")
        if not eq or key not in values:
            raise EffscaleError(f"data spec option {item.strip()!r} in {spec!r} is unknown; allowed: {TASK_FORMS}")
        try:
            values[key] = int(raw)
        except ValueError:
            raise EffscaleError(f"data spec option {item.strip()!r} in {spec!r}: {raw!r} is not an integer; "
                                f"allowed: {TASK_FORMS}") from None
    for key, minimum in (("seed", 0), ("n", 8), ("val", 8)):
        if values[key] < minimum:
            raise EffscaleError(f"data spec option {key}={values[key]} in {spec!r} must be >= {minimum}")
    return make_series_data(seed=values["seed"], n_train=values["n"], n_val=values["val"])


@functools.lru_cache(maxsize=32)
def _lowpass_kernel(factor: float) -> torch.Tensor:
    """Hann-windowed sinc, cut off at 90 % of the target Nyquist (0.45 / factor cycles per sample).

    The half-width of 8 * factor taps gives a transition band of about 0.2 / factor, so little
    folds back below the target Nyquist.
    """
    half = max(1, math.ceil(8 * factor))
    n = torch.arange(-half, half + 1, dtype=torch.float64)
    cutoff = 0.45 / factor
    taps = 2 * cutoff * torch.sinc(2 * cutoff * n) * torch.hann_window(2 * half + 3, periodic=False,
                                                                         dtype=torch.float64)[1:-1]
    return (taps / taps.sum()).float().view(1, 1, -1)


def _check_signals(x) -> None:
    if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.is_floating_point() and x.shape[-1] >= 1):
        raise EffscaleError(f"signals must be a float tensor N x C x length, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")


def resample(x: torch.Tensor, length: int, shift: torch.Tensor | None = None) -> torch.Tensor:
    """`x` (N x C x L) resampled to `length` samples over the same window, anti-aliased.

    Down-sampling low-passes first (`_lowpass_kernel`); then each output sample is linearly
    interpolated at its centre, (i + 0.5) * L / length - 0.5, plus `shift` (N, in input samples),
    clamped to the window's ends. (`F.interpolate`'s antialias option exists only for 2-D
    modes, hence the explicit low-pass.) Positions are computed on the CPU, where a seeded
    generator draws `shift`; the signals may live on any device.
    """
    _check_signals(x)
    _check_int("length", length, 1)
    batch, channels, native = x.shape
    factor = native / length
    if factor > 1:
        kernel = _lowpass_kernel(factor).to(x.device, x.dtype)
        half = kernel.shape[-1] // 2
        flat = F.pad(x.reshape(batch * channels, 1, native), (half, half), mode="replicate")
        x = F.conv1d(flat, kernel).view(batch, channels, native)
    position = (torch.arange(length, dtype=torch.float64) + 0.5) * factor - 0.5
    position = position.expand(batch, length)
    if shift is not None:
        position = position + shift.to("cpu", torch.float64).view(batch, 1)
    position = position.clamp(0, native - 1)
    left = position.floor().long().clamp(max=native - 2) if native > 1 else position.long()
    right = (left + 1).clamp(max=native - 1)
    weight = (position - left).to(x.device, x.dtype).unsqueeze(1)
    left, right = (index.to(x.device).unsqueeze(1).expand(batch, channels, length) for index in (left, right))
    return x.gather(2, left) * (1 - weight) + x.gather(2, right) * weight


def series_inputs(x: torch.Tensor, length: int, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Model inputs: `x` resampled to `length`, zero mean and unit variance per example and channel;
    while `train`, shifted in time (up to 3 % of the window) and scaled in amplitude (0.8-1.25)."""
    _check_signals(x)
    shift = (torch.rand(len(x), generator=generator) * 2 - 1) * MAX_SHIFT * x.shape[-1] if train else None
    out = resample(x, length, shift)
    out = (out - out.mean(2, keepdim=True)) / (out.std(2, keepdim=True, correction=0) + 1e-6)
    if train:
        low, high = AMPLITUDE_SCALE
        out = out * (torch.rand(len(x), 1, 1, generator=generator) * (high - low) + low).to(out.device)
    return out
