"""The 1-D time-series MBConv family: a second `scaling.Scalable` family for the scaling lab.

Compound scaling is not tied to images: here "resolution" is the sequence length (samples
per example, i.e. the sampling rate of a fixed window), depth the repeats per stage and width
the channels. A `SeriesSpec` is the image `NetworkSpec`'s 1-D twin: a stride-2 stem conv,
stages of 1-D MBConv blocks (1x1 expand, depthwise k, squeeze-excite, 1x1 project, residual
with linear drop-path), a 1x1 head conv, global average pooling, dropout and a classifier.
Stage rows are image `StageSpec` rows restricted to "mbconv", and `blocks()` expands them into
the same `BlockSpec` rows the image family uses, which both `nn.SeriesNet` and
`cost.series_cost` walk, so module and cost cannot drift apart.

Text form (`to_text` / `from_text`, exact round trip), one header line and one line per stage:

    series series_b0 len=128 stem=16 stem_k=5 head=128 act=swish dropout=0.1 ...
    mbconv r1 k3 s1 e1 c16 se0.25
    ...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import EffscaleError, closest
from ..scaling import RESOLUTION_MULTIPLE, Coefficients, SizeLimits, scale_stages
from ..spec import NetworkSpec, StageSpec, _check, _fmt_num, check_network_fields

MIN_LENGTH = 16
MAX_LENGTH = 1 << 20  # samples; far above any window the family is meant for, far below a hang
SERIES_LIMITS = SizeLimits(min_resolution=MIN_LENGTH, max_resolution=MAX_LENGTH, unit="samples")
# Matches len(data.CLASS_NAMES), the synthetic-series task (tests/test_series.py checks it);
# spec.py stays free of torch, so the number is not imported from data.py.
DEFAULT_NUM_CLASSES = 8


@dataclass(frozen=True)
class SeriesStage(StageSpec):
    """A stage row of the series family: an image `StageSpec` whose blocks are 1-D MBConv."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.block == "mbconv", f"block type {self.block!r} is not available for series; allowed: mbconv")


# header key -> (field, parser); the order is the order `to_text` writes them in.
_HEADER_KEYS = {
    "len": ("resolution", int), "stem": ("stem_channels", int), "stem_k": ("stem_kernel", int),
    "head": ("head_channels", int), "act": ("activation", str), "dropout": ("dropout", float),
    "drop_path": ("drop_path_rate", float), "bn_eps": ("bn_eps", float),
    "bn_momentum": ("bn_momentum", float), "divisor": ("divisor", int),
}


@dataclass(frozen=True)
class SeriesSpec:
    """A 1-D MBConv network for sequences of `resolution` samples (see the module docstring)."""

    name: str
    stages: tuple[SeriesStage, ...]
    stem_channels: int = 16
    stem_kernel: int = 5
    head_channels: int = 96
    resolution: int = 128  # sequence length
    activation: str = "swish"
    dropout: float = 0.1
    drop_path_rate: float = 0.05
    bn_eps: float = 1e-3
    # PyTorch's default: proxy trainings are a few hundred steps, too few for 0.01 to settle.
    bn_momentum: float = 0.1
    divisor: int = 8

    kind: ClassVar[str] = "series"

    def __post_init__(self) -> None:
        check_network_fields(self, stage_type=SeriesStage, what="series network", min_resolution=MIN_LENGTH,
                             max_resolution=MAX_LENGTH, unit="samples", resolution_label="resolution (sequence length)")
        _check(isinstance(self.stem_kernel, int) and self.stem_kernel >= 1 and self.stem_kernel % 2 == 1,
               f"stem_kernel={self.stem_kernel!r} must be an odd integer >= 1")

    # -- derived structure: the image family's, reused (they read only fields both share) --
    num_blocks = NetworkSpec.num_blocks
    blocks = NetworkSpec.blocks  # stem width in, linear drop-path over all blocks
    stride = NetworkSpec.stride  # total down-sampling along time (16 for series_b0)
    out_channels = NetworkSpec.out_channels  # the head's input
    replace = NetworkSpec.replace  # unknown field names are an error naming the allowed ones

    @property
    def length(self) -> int:
        """The sequence length (the family's resolution)."""
        return self.resolution

    # -- text form ---------------------------------------------------------------------
    def to_text(self) -> str:
        values = [getattr(self, field_name) for field_name, _ in _HEADER_KEYS.values()]
        header = ["series", self.name] + [f"{key}={value if isinstance(value, str) else _fmt_num(value)}"
                                          for key, value in zip(_HEADER_KEYS, values)]
        return "\n".join([" ".join(header)] + [stage.to_text() for stage in self.stages])

    @classmethod
    def from_text(cls, text: str) -> "SeriesSpec":
        lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
        header = lines[0].split() if lines else []
        _check(len(header) >= 2 and header[0] == "series",
               "series spec text must start with a 'series NAME key=value ...' line")
        values: dict = {"name": header[1]}
        for token in header[2:]:
            key, sep, raw = token.partition("=")
            _check(bool(sep) and key in _HEADER_KEYS,
                   f"series header token {token!r} is unknown; allowed keys: {', '.join(_HEADER_KEYS)}")
            field_name, parse = _HEADER_KEYS[key]
            try:
                values[field_name] = parse(raw)
            except ValueError:
                raise EffscaleError(f"series header token {token!r}: {raw!r} is not a valid value") from None
        values["stages"] = tuple(SeriesStage.from_text(line) for line in lines[1:])
        return cls(**values)


# series_b0: 67 K parameters, 0.7 M MACs at 128 samples (8 classes, 1 channel), total stride 16
# (8 steps reach the head at the base length). Kernels are wider than the image B0's early on:
# along time a block needs a larger receptive field to see a period of the slower signals.
SERIES_B0 = SeriesSpec(name="series_b0", head_channels=96, stages=(
    SeriesStage("mbconv", 1, 5, 1, 1, 16, 0.25),
    SeriesStage("mbconv", 2, 5, 2, 4, 16, 0.25),
    SeriesStage("mbconv", 2, 5, 2, 4, 24, 0.25),
    SeriesStage("mbconv", 2, 3, 2, 4, 40, 0.25),
    SeriesStage("mbconv", 1, 3, 1, 4, 48, 0.25),
))

_SERIES_FAMILY = {spec.name: spec for spec in (SERIES_B0,)}


def scale_series(spec: SeriesSpec, coefficients: Coefficients, *, name: str | None = None,
                 resolution_multiple: int = RESOLUTION_MULTIPLE) -> SeriesSpec:
    """`spec` scaled by (depth, width, length) with the image family's rounding (`scale_stages`):
    depth by ceil of repeats, widths by `make_divisible`, length to a multiple of
    `resolution_multiple` (1 for the finest steps at short lengths); never below one channel or
    `MIN_LENGTH` samples, never past the size limits (ScaleLimitError names the multiplier)."""
    if not isinstance(spec, SeriesSpec):
        raise TypeError(f"scale_series() takes a SeriesSpec, got {type(spec).__name__}")
    if not isinstance(coefficients, Coefficients):
        raise TypeError(f"coefficients must be a Coefficients(depth, width, resolution), "
                        f"got {type(coefficients).__name__}")
    return scale_stages(spec, coefficients, name=name, resolution_multiple=resolution_multiple,
                        limits=SERIES_LIMITS)


def list_series_models() -> list[str]:
    return list(_SERIES_FAMILY)


def get_series_spec(name: str, **overrides) -> SeriesSpec:
    """The named series spec, with any field overridden (e.g. resolution=256)."""
    if name not in _SERIES_FAMILY:
        raise EffscaleError(f"unknown series model {name!r}{closest(str(name), _SERIES_FAMILY)}; "
                            f"allowed: {', '.join(_SERIES_FAMILY)}")
    spec = _SERIES_FAMILY[name]
    return spec.replace(**overrides) if overrides else spec
