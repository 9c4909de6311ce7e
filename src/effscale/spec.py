"""Declarative network specs: the single source of truth for modules, cost, latency and plans.

A `NetworkSpec` holds *concrete* numbers (channels, repeats, resolution after rounding);
scaling (scaling.py) maps one spec to another. `NetworkSpec.blocks()` expands the stage
table into per-block rows, which the module builder and the cost model both walk, so the
two cannot drift apart.

The compact text form (`to_text` / `from_text`) has one header line and one line per stage:

    network efficientnet_b0 res=224 stem=32 head=1280 act=swish dropout=0.2 drop_path=0.2 ...
    mbconv r1 k3 s1 e1 c16 se0.25
    mbconv r2 k3 s2 e6 c24 se0.25
    ...

`from_text(to_text(spec)) == spec` for every valid spec.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

from .errors import EffscaleError

BLOCK_TYPES = ("mbconv", "fused_mbconv")
ACTIVATIONS = ("swish", "relu6", "relu", "gelu")
PADDINGS = ("symmetric", "same")
SE_POSITIONS = ("after_dw", "before_dw")
MIN_RESOLUTION = 32
# Size limits far above any published member (EfficientNet-L2: 88 blocks, 5504 channels, 800 px),
# so that a typo (phi 300 for 3.0, depth 1e9) is an error naming the limit instead of a spec whose
# block list, cost walk or module takes hours or all memory to build.
MAX_BLOCKS = 1000
MAX_CHANNELS = 65536
MAX_RESOLUTION = 8192
MAX_KERNEL = 31
MAX_EXPAND_RATIO = 64
# The most multiply-accumulates per example that train / search / study will train (27x
# EfficientNet-B7's 37 G): above it a run on any machine effscale targets takes years, not hours.
MAX_TRAIN_MACS = 10 ** 12
STEM_KERNEL = 3
STEM_STRIDE = 2


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise EffscaleError(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_size_limits(spec, *, max_resolution: int = MAX_RESOLUTION, unit: str = "px") -> None:
    """Refuse a spec beyond the size limits (MAX_BLOCKS blocks, MAX_CHANNELS channels, the
    resolution limit); shared by every family whose specs have stages, stem, head and resolution."""
    _check(spec.num_blocks <= MAX_BLOCKS,
           f"{spec.name} has {spec.num_blocks} blocks; effscale's limit is {MAX_BLOCKS}")
    for key in ("stem_channels", "head_channels"):
        value = getattr(spec, key)
        _check(value <= MAX_CHANNELS, f"{key}={value!r} must be <= {MAX_CHANNELS}")
    _check(spec.resolution <= max_resolution,
           f"resolution={spec.resolution!r} must be <= {max_resolution} {unit}")


def check_network_fields(spec, *, stage_type: type, what: str = "network", min_resolution: int = MIN_RESOLUTION,
                         max_resolution: int = MAX_RESOLUTION, unit: str = "px",
                         resolution_label: str = "resolution") -> None:
    """The validation every stage-table family shares (image, series, the next ones): name, stage
    rows of `stage_type`, stem / head / divisor widths, resolution and size limits, activation,
    dropout, drop-path and batch-norm settings. Normalises `stages` to a tuple."""
    _check(isinstance(spec.name, str) and bool(spec.name) and not any(c.isspace() for c in spec.name),
           f"name={spec.name!r} must be non-empty and contain no spaces")
    _check(isinstance(spec.stages, (tuple, list)), f"stages must be a tuple of {stage_type.__name__} rows, "
                                                   f"got {type(spec.stages).__name__}")
    object.__setattr__(spec, "stages", tuple(spec.stages))
    _check(len(spec.stages) >= 1, f"a {what} needs at least one stage")
    _check(all(isinstance(s, stage_type) for s in spec.stages), f"stages must be {stage_type.__name__} rows")
    for key in ("stem_channels", "head_channels", "divisor"):
        value = getattr(spec, key)
        _check(_is_int(value) and value >= 1, f"{key}={value!r} must be an integer >= 1")
    _check(_is_int(spec.resolution) and spec.resolution >= min_resolution,
           f"{resolution_label}={spec.resolution!r} must be an integer >= {min_resolution}")
    check_size_limits(spec, max_resolution=max_resolution, unit=unit)
    _check(spec.activation in ACTIVATIONS,
           f"activation={spec.activation!r} is unknown; allowed: {', '.join(ACTIVATIONS)}")
    _check(_is_number(spec.dropout) and 0 <= spec.dropout < 1, f"dropout={spec.dropout!r} must be in [0, 1)")
    _check(_is_number(spec.drop_path_rate) and 0 <= spec.drop_path_rate < 1,
           f"drop_path_rate={spec.drop_path_rate!r} must be in [0, 1)")
    _check(_is_number(spec.bn_eps) and 0 < spec.bn_eps < 1, f"bn_eps={spec.bn_eps!r} must be in (0, 1)")
    _check(_is_number(spec.bn_momentum) and 0 < spec.bn_momentum <= 1,
           f"bn_momentum={spec.bn_momentum!r} must be in (0, 1]")


def check_trainable_macs(macs: float, subject: str, unit: str, remedy: str) -> None:
    """Refuse, before any training, a model above MAX_TRAIN_MACS: '<subject> <macs> MACs <unit>, more
    than ... effscale trains; <remedy>'."""
    _check(macs <= MAX_TRAIN_MACS, f"{subject} {macs:.3g} MACs {unit}, more than the {MAX_TRAIN_MACS:.0e} "
                                   f"effscale trains; {remedy}")


def _fmt_num(value: float) -> str:
    """Shortest text that parses back to the same float (ints without a trailing .0)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class StageSpec:
    """One row of the block table: `repeats` identical blocks, the first with `stride`."""

    block: str = "mbconv"
    repeats: int = 1
    kernel: int = 3
    stride: int = 1
    expand_ratio: float = 6
    out_channels: int = 16
    se_ratio: float = 0.25  # of the block *input* channels; 0 = no squeeze-excite
    scale_depth: bool = True  # False pins the repeats (EfficientNet-Lite's first/last stage)

    def __post_init__(self) -> None:
        _check(self.block in BLOCK_TYPES, f"block type {self.block!r} is unknown; allowed: {', '.join(BLOCK_TYPES)}")
        _check(_is_int(self.repeats) and 1 <= self.repeats <= MAX_BLOCKS,
               f"repeats={self.repeats!r} must be an integer in [1, {MAX_BLOCKS}]")
        _check(_is_int(self.kernel) and 1 <= self.kernel <= MAX_KERNEL and self.kernel % 2 == 1,
               f"kernel={self.kernel!r} must be an odd integer in [1, {MAX_KERNEL}]")
        _check(_is_int(self.stride) and self.stride in (1, 2), f"stride={self.stride!r} must be 1 or 2")
        _check(_is_number(self.expand_ratio) and 1 <= self.expand_ratio <= MAX_EXPAND_RATIO,
               f"expand_ratio={self.expand_ratio!r} must be a finite number in [1, {MAX_EXPAND_RATIO}]")
        _check(_is_int(self.out_channels) and 1 <= self.out_channels <= MAX_CHANNELS,
               f"out_channels={self.out_channels!r} must be an integer in [1, {MAX_CHANNELS}]")
        _check(_is_number(self.se_ratio) and 0 <= self.se_ratio <= 1,
               f"se_ratio={self.se_ratio!r} must be in [0, 1]")
        _check(isinstance(self.scale_depth, bool), f"scale_depth={self.scale_depth!r} must be True or False")

    def to_text(self) -> str:
        tokens = [self.block, f"r{self.repeats}", f"k{self.kernel}", f"s{self.stride}",
                  f"e{_fmt_num(self.expand_ratio)}", f"c{self.out_channels}"]
        if self.se_ratio:
            tokens.append(f"se{_fmt_num(self.se_ratio)}")
        if not self.scale_depth:
            tokens.append("fixdepth")
        return " ".join(tokens)

    @classmethod
    def from_text(cls, line: str) -> "StageSpec":
        tokens = line.split()
        _check(bool(tokens), "empty stage line")
        values: dict = {"block": tokens[0], "se_ratio": 0.0}
        prefixes = (("se", "se_ratio", float), ("r", "repeats", int), ("k", "kernel", int),
                    ("s", "stride", int), ("e", "expand_ratio", float), ("c", "out_channels", int))
        for token in tokens[1:]:
            if token == "fixdepth":
                values["scale_depth"] = False
                continue
            for prefix, key, kind in prefixes:
                if token.startswith(prefix) and len(token) > len(prefix):
                    try:
                        values[key] = kind(token[len(prefix):])
                    except ValueError:
                        raise EffscaleError(f"stage token {token!r} in {line!r}: {token[len(prefix):]!r} "
                                            f"is not a {kind.__name__}") from None
                    break
            else:
                raise EffscaleError(f"stage token {token!r} in {line!r} is unknown; allowed: "
                                    "r<repeats> k<kernel> s<stride> e<expand> c<channels> se<ratio> fixdepth")
        return cls(**values)


@dataclass(frozen=True)
class BlockSpec:
    """One concrete block, derived from a stage row by `NetworkSpec.blocks()`."""

    index: int  # global block index (drives the drop-path schedule)
    stage: int
    position: int  # index within its stage
    block: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expand_ratio: float
    se_ratio: float
    drop_path_rate: float
    divisor: int = 8  # the network's channel divisor, also used for the expanded width
    se_position: str = "after_dw"  # MBConv: squeeze-excite after the depthwise conv, or before it

    @property
    def expanded_channels(self) -> int:
        if self.expand_ratio == 1:
            return self.in_channels
        return make_divisible(self.in_channels * self.expand_ratio, self.divisor)

    @property
    def se_channels(self) -> int:
        # Squeeze width is a ratio of the block *input* channels (reference TF code, torchvision, timm).
        return max(1, int(self.in_channels * self.se_ratio)) if self.se_ratio else 0

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    def layers(self) -> tuple["LayerSpec", ...]:
        """The block's layers in forward order: the one description of a block's inside that the
        module builder (nn/blocks.py, series/nn.py), the analytic cost (cost.py, series/cost.py)
        and the weight-key converters (weights.py) all walk, so they cannot drift apart.

        MBConv: [1x1 expand] -> kxk depthwise -> [squeeze-excite] -> 1x1 project (no activation);
        with se_position "before_dw" the squeeze-excite gates the expanded tensor before the
        depthwise conv instead (same widths and parameters, the gate at the input resolution).
        Fused-MBConv: kxk fused conv -> [squeeze-excite] -> [1x1 project]; without expansion the
        kxk conv maps straight to the output width (EfficientNetV2 reference)."""
        hidden = self.expanded_channels
        if self.block == "fused_mbconv":
            width = hidden if self.expand_ratio != 1 else self.out_channels
            layers = [LayerSpec("fused", "conv", self.in_channels, width, self.kernel, self.stride)]
            if self.se_channels:
                layers.append(LayerSpec("se", "se", width, width, squeeze=self.se_channels))
            if self.expand_ratio != 1:
                layers.append(LayerSpec("project", "pointwise", hidden, self.out_channels, activation=False))
            return tuple(layers)
        layers = []
        if self.expand_ratio != 1:
            layers.append(LayerSpec("expand", "pointwise", self.in_channels, hidden))
        se = [LayerSpec("se", "se", hidden, hidden, squeeze=self.se_channels)] if self.se_channels else []
        if self.se_position == "before_dw":
            layers += se
        layers.append(LayerSpec("depthwise", "depthwise", hidden, hidden, self.kernel, self.stride, groups=hidden))
        if self.se_position != "before_dw":
            layers += se
        layers.append(LayerSpec("project", "pointwise", hidden, self.out_channels, activation=False))
        return tuple(layers)


LAYER_KINDS = ("conv", "pointwise", "depthwise", "se")


@dataclass(frozen=True)
class LayerSpec:
    """One layer inside a block (`BlockSpec.layers()`), torch-free.

    `name` is the module's attribute in the block (`expand`, `depthwise`, `se`, `project`,
    `fused`); `kind` one of LAYER_KINDS: a convolution (`conv` k x k dense, `pointwise` 1 x 1,
    `depthwise` groups = channels) followed by batch norm when `norm` and the network's
    activation when `activation`, or `se`, squeeze-excite: global pool, 1x1 conv to `squeeze`
    channels (bias), activation, 1x1 conv back (bias), sigmoid gate on the input."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    norm: bool = True
    activation: bool = True
    squeeze: int = 0

    def __post_init__(self) -> None:
        _check(self.kind in LAYER_KINDS, f"layer kind {self.kind!r} is unknown; allowed: {', '.join(LAYER_KINDS)}")
        if self.kind == "se":
            object.__setattr__(self, "norm", False)

    def parameter_modules(self) -> tuple[str, ...]:
        """The names of its parameter-holding submodules, in forward order (weights.py maps them)."""
        if self.kind == "se":
            return ("reduce", "expand")
        return ("conv", "bn") if self.norm else ("conv",)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Reference rounding: nearest multiple of `divisor`, never below 90 % of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


@dataclass(frozen=True)
class NetworkSpec:
    """A whole network: stem (3x3 stride 2), stages of blocks, 1x1 head, pooling, classifier."""

    name: str
    stages: tuple[StageSpec, ...]
    stem_channels: int = 32
    head_channels: int = 1280
    resolution: int = 224
    activation: str = "swish"
    dropout: float = 0.2
    drop_path_rate: float = 0.2
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # PyTorch convention (TF's 0.99 decay)
    padding: str = "symmetric"  # "same" reproduces TF padding for TF-ported weights
    # Where MBConv's squeeze-excite sits: "after_dw" (EfficientNet) or "before_dw" (gating the
    # expanded tensor before the depthwise conv; for the quantization-noise-vs-depth study).
    # Fused-MBConv has no depthwise conv: its SE stays after the fused conv either way.
    se_position: str = "after_dw"
    scale_stem_head: bool = True  # False pins stem and head widths (EfficientNet-Lite)
    divisor: int = 8
    # Preprocessing belongs with the network definition so that weights saved with it carry it.
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        for key in ("mean", "std"):
            value = getattr(self, key)
            _check(isinstance(value, (tuple, list)) and all(_is_number(v) for v in value),
                   f"{key}={value!r} must be 3 finite numbers")
            object.__setattr__(self, key, tuple(float(v) for v in value))
        check_network_fields(self, stage_type=StageSpec)
        _check(self.padding in PADDINGS, f"padding={self.padding!r} is unknown; allowed: {', '.join(PADDINGS)}")
        _check(self.se_position in SE_POSITIONS,
               f"se_position={self.se_position!r} is unknown; allowed: {', '.join(SE_POSITIONS)}")
        _check(len(self.mean) == 3 and len(self.std) == 3 and all(map(math.isfinite, self.mean + self.std))
               and all(s > 0 for s in self.std),
               f"mean={self.mean!r} and std={self.std!r} must be 3 numbers each, std > 0")
        _check(_is_number(self.crop_pct) and 0 < self.crop_pct <= 1, f"crop_pct={self.crop_pct!r} must be in (0, 1]")
        _check(isinstance(self.scale_stem_head, bool), f"scale_stem_head={self.scale_stem_head!r} must be True or False")

    # -- derived structure -------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return sum(stage.repeats for stage in self.stages)

    @property
    def stride(self) -> int:
        """Total down-sampling of the network (32 for EfficientNet)."""
        return STEM_STRIDE * math.prod(stage.stride for stage in self.stages)

    @property
    def out_channels(self) -> int:
        """Channels of the final stage (the head's input)."""
        return self.stages[-1].out_channels

    def blocks(self) -> tuple[BlockSpec, ...]:
        """Every block in order, with its input channels and linear drop-path rate."""
        rows, index, in_channels = [], 0, self.stem_channels
        total = self.num_blocks
        for stage_index, stage in enumerate(self.stages):
            for position in range(stage.repeats):
                rows.append(BlockSpec(
                    index=index, stage=stage_index, position=position, block=stage.block,
                    in_channels=in_channels, out_channels=stage.out_channels, kernel=stage.kernel,
                    stride=stage.stride if position == 0 else 1, expand_ratio=stage.expand_ratio,
                    se_ratio=stage.se_ratio, drop_path_rate=self.drop_path_rate * index / total,
                    divisor=self.divisor,
                    # SeriesSpec shares this method and has no se_position: its SE stays after the conv
                    se_position=getattr(self, "se_position", "after_dw")))
                in_channels = stage.out_channels
                index += 1
        return tuple(rows)

    def feature_levels(self) -> list[dict]:
        """The pyramid: for each reduction, the last stage that produces it.

        Returns dicts with `stage` (-1 for the stem), `num_chs`, `reduction`, `module`.
        """
        levels: dict[int, dict] = {STEM_STRIDE: {"stage": -1, "num_chs": self.stem_channels,
                                                 "reduction": STEM_STRIDE, "module": "stem"}}
        reduction = STEM_STRIDE
        for stage_index, stage in enumerate(self.stages):
            reduction *= stage.stride
            levels[reduction] = {"stage": stage_index, "num_chs": stage.out_channels,
                                 "reduction": reduction, "module": f"stages.{stage_index}"}
        return [levels[r] for r in sorted(levels)]

    def replace(self, **changes) -> "NetworkSpec":
        """A copy with fields changed; unknown field names are an error naming the allowed ones."""
        allowed = [f.name for f in dataclasses.fields(self)]
        unknown = [key for key in changes if key not in allowed]
        if unknown:
            from .errors import closest
            raise EffscaleError(f"unknown spec field {unknown[0]!r}{closest(unknown[0], allowed)} "
                                f"(allowed: {', '.join(allowed)})")
        return dataclasses.replace(self, **changes)

    # The family this spec belongs to (`families.family_of`): it scales, builds and counts it.
    kind: ClassVar[str] = "image"

    # -- text form ---------------------------------------------------------------------
    def to_text(self) -> str:
        header = [
            "network", self.name, f"res={self.resolution}", f"stem={self.stem_channels}",
            f"head={self.head_channels}", f"act={self.activation}", f"dropout={_fmt_num(self.dropout)}",
            f"drop_path={_fmt_num(self.drop_path_rate)}", f"bn_eps={_fmt_num(self.bn_eps)}",
            f"bn_momentum={_fmt_num(self.bn_momentum)}", f"padding={self.padding}",
            f"scale_stem_head={int(self.scale_stem_head)}", f"divisor={self.divisor}",
            "mean=" + ",".join(_fmt_num(v) for v in self.mean),
            "std=" + ",".join(_fmt_num(v) for v in self.std), f"crop_pct={_fmt_num(self.crop_pct)}",
        ]
        if self.se_position != "after_dw":  # written only when set: older texts stay as they were
            header.append(f"se_position={self.se_position}")
        return "\n".join([" ".join(header)] + [stage.to_text() for stage in self.stages])

    @classmethod
    def from_text(cls, text: str) -> "NetworkSpec":
        if not isinstance(text, str):
            raise TypeError(f"NetworkSpec.from_text takes the spec text (str), got {type(text).__name__}")
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        _check(bool(lines) and lines[0].startswith("network "),
               "spec text must start with a 'network NAME key=value ...' line")
        header = lines[0].split()
        _check(len(header) >= 2, "spec header needs a network name")
        keys = {"res": ("resolution", int), "stem": ("stem_channels", int), "head": ("head_channels", int),
                "act": ("activation", str), "dropout": ("dropout", float), "drop_path": ("drop_path_rate", float),
                "bn_eps": ("bn_eps", float), "bn_momentum": ("bn_momentum", float), "padding": ("padding", str),
                "scale_stem_head": ("scale_stem_head", lambda v: bool(int(v))), "divisor": ("divisor", int),
                "mean": ("mean", lambda v: tuple(float(x) for x in v.split(","))),
                "std": ("std", lambda v: tuple(float(x) for x in v.split(","))),
                "crop_pct": ("crop_pct", float), "se_position": ("se_position", str)}
        values: dict = {"name": header[1]}
        for token in header[2:]:
            key, sep, raw = token.partition("=")
            _check(bool(sep) and key in keys, f"spec header token {token!r} is unknown; allowed keys: {', '.join(keys)}")
            field_name, kind = keys[key]
            try:
                values[field_name] = kind(raw)
            except ValueError:
                raise EffscaleError(f"spec header token {token!r}: {raw!r} is not a valid value") from None
        values["stages"] = tuple(StageSpec.from_text(line) for line in lines[1:])
        return cls(**values)


# The EfficientNet-B0 block table (Tan & Le 2019, Table 1).
B0_STAGES = (
    StageSpec("mbconv", 1, 3, 1, 1, 16, 0.25),
    StageSpec("mbconv", 2, 3, 2, 6, 24, 0.25),
    StageSpec("mbconv", 2, 5, 2, 6, 40, 0.25),
    StageSpec("mbconv", 3, 3, 2, 6, 80, 0.25),
    StageSpec("mbconv", 3, 5, 1, 6, 112, 0.25),
    StageSpec("mbconv", 4, 5, 2, 6, 192, 0.25),
    StageSpec("mbconv", 1, 3, 1, 6, 320, 0.25),
)

EFFICIENTNET_B0 = NetworkSpec(name="efficientnet_b0", stages=B0_STAGES)

# EfficientNet-Lite: no SE, ReLU6, stem/head widths and first/last repeats fixed under scaling.
# Its TF checkpoints were trained on inputs scaled to [-1, 1] (mean 127, std 128 on 0..255).
EFFICIENTNET_LITE0 = NetworkSpec(
    name="efficientnet_lite0",
    stages=tuple(dataclasses.replace(stage, se_ratio=0.0, scale_depth=index not in (0, len(B0_STAGES) - 1))
                 for index, stage in enumerate(B0_STAGES)),
    activation="relu6", scale_stem_head=False,
    mean=(127.0 / 255,) * 3, std=(128.0 / 255,) * 3,
)
