"""Analytic cost of a network, derived from its spec alone (never by tracing a module).

`cost(spec_or_model, resolution, batch, dtype)` walks `NetworkSpec.blocks()` exactly as
`nn/network.py` and `nn/blocks.py` build the modules and returns one `LayerCost` row per
operation of an inference pass, in execution order, plus the totals in a `Cost`.

Counting convention
-------------------
Rows and their kinds. Conv and linear rows are named by the module path of the conv /
linear in the built `EfficientNet` (`model.get_submodule(row.name)` works for them):

- ``conv``       dense k x k conv with k > 1: `stem.conv`, `stages.S.B.fused.conv`
- ``pointwise``  dense 1 x 1 conv: `...expand.conv`, `...project.conv`, `head.conv`
                 (and a fused conv or stem whose kernel is 1)
- ``depthwise``  `...depthwise.conv` (groups = channels)
- ``se_reduce`` / ``se_expand``  the squeeze-excite 1 x 1 convs on the pooled vector
                 (`...se.reduce`, `...se.expand`; they have a bias and no batch norm)
- ``linear``     `classifier` (absent when num_classes == 0)

Rows for the memory-bound operations between them have no MACs. They are not modules
(except `pool`), so they are named under their parent:

- ``pool``       global average pool: `pool` before the classifier, `...se.pool` inside SE
- ``se_scale``   `...se.scale`, the SE gating multiply x * sigmoid(gate)
- ``residual``   `stages.S.B.residual`, the skip-connection add

Batch norm and the activation are fused into the conv row they follow (as an inference
runtime runs them; `prepare_for_inference` folds BN), so they add no row, no MAC and no
memory traffic of their own. Dropout and drop-path are identities at inference. For rows
that are not convolutions, `kernel` is 0 and `stride` / `groups` are 1; the linear row has
kernel, stride and groups 1 and spatial size (1, 1).

- ``params``: every parameter of the module the row belongs to: conv weight
  (out * in / groups * k * k), its bias where it has one (SE convs, classifier), and the
  affine weight and bias of the batch norm that follows it (2 * out), attributed to that
  conv row. BN running statistics are buffers, not parameters. The total equals
  `sum(p.numel() for p in model.parameters())` of the built (unfolded) model.
- ``macs``: multiply-accumulates of convolutions and linear layers only,
  batch * out_h * out_w * out_channels * (in_channels / groups) * k * k (conv) or
  batch * in * out (linear); biases are not counted. BN, activations, sigmoid, pooling,
  the SE gating multiply and the residual add are not MACs (the usual convention, and what
  `torch.utils.flop_counter` counts as conv + addmm FLOPs / 2); they appear as their own
  rows (`pool`, `se_scale`, `residual`) with bytes moved, or are fused (BN, activation).
- ``activations``: output elements of the row (batch included). `Cost.activations` sums it
  over the conv and linear rows only (`MAC_KINDS`): the "activations" of Dollár et al.
  (Fast and Accurate Model Scaling), the quantity runtime tracks on memory-bound hardware.
- Bytes: each row reads its input tensors once and its parameters once and writes its
  output once, at `dtype` size for everything (no cache reuse across rows, no fusion
  other than conv + BN + activation). `bytes_read` = (input elements + params) * size,
  `bytes_written` = output elements * size. `se_scale` reads the feature map and the gate,
  `residual` reads both summands. `intensity` = 2 * macs / (bytes_read + bytes_written).
- ``peak_activation_bytes``: a liveness model of one sequential inference pass, at `dtype`
  size, weights excluded. Every row is one operation that reads its input tensors and
  writes one new output tensor (nothing in place). A tensor is live from the row that
  writes it (the input image: from the start) through the last row that reads it; with
  `features_only`, the pyramid outputs stay live to the end of the pass (the model returns
  them). The peak is the maximum over rows of the total size of the tensors live while that
  row runs: its inputs, its output, and everything written earlier and read later, such as
  the block input held for the residual add or the expanded tensor held by SE while the
  gate is computed. This is what a runtime that frees each tensor after its last use
  needs. Eager PyTorch needs more: every module call keeps its arguments alive until it
  returns (the input of the running stage and block, the image), and an unfolded BN writes
  a second tensor next to the conv output. For B0 at 224 px with BN folded, tracking live
  tensors in eager mode gives 9.0 MB against 6.0 MB here; the difference is exactly the
  image, the stem output and the block input held by those calls.

Spatial sizes follow the modules: symmetric padding k // 2 gives
out = floor((in + 2 * (k // 2) - k) / s) + 1; "same" padding (used only by strided convs,
as `nn/layers.make_conv` builds them) gives out = ceil(in / s). Both agree for odd kernels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import EffscaleError
from .spec import MAX_RESOLUTION, MIN_RESOLUTION, STEM_KERNEL, STEM_STRIDE, BlockSpec, NetworkSpec
from .zoo import resolve_spec

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
MAC_KINDS = frozenset({"conv", "pointwise", "depthwise", "se_reduce", "se_expand", "linear"})
# pool / se_scale / residual occur in every network; maxpool, upsample, fusion and add only in the
# necks and decoders of detectors and segmenters (dense/cost.py)
ELEMENTWISE_KINDS = frozenset({"pool", "se_scale", "residual", "maxpool", "upsample", "fusion", "add"})
KINDS = MAC_KINDS | ELEMENTWISE_KINDS


def _intensity(macs: int, bytes_read: int, bytes_written: int) -> float:
    moved = bytes_read + bytes_written
    return 2 * macs / moved if moved else 0.0


@dataclass(frozen=True)
class LayerCost:
    """One operation of the inference pass; see the module docstring for the conventions."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    params: int
    macs: int
    activations: int
    bytes_read: int
    bytes_written: int

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: FLOPs (2 * macs) per byte moved."""
        return _intensity(self.macs, self.bytes_read, self.bytes_written)

    def to_dict(self) -> dict:
        row = asdict(self)
        row["in_hw"], row["out_hw"] = list(self.in_hw), list(self.out_hw)
        row["intensity"] = self.intensity
        return row


@dataclass(frozen=True)
class Cost:
    """Totals of one inference pass of a network at (resolution, batch, dtype), with its rows."""

    name: str
    resolution: int
    batch: int
    dtype: str
    num_classes: int
    in_chans: int
    params: int
    macs: int
    activations: int
    bytes_read: int
    bytes_written: int
    peak_activation_bytes: int
    layers: tuple[LayerCost, ...]

    @property
    def intensity(self) -> float:
        """Arithmetic intensity of the whole pass: FLOPs (2 * macs) per byte moved."""
        return _intensity(self.macs, self.bytes_read, self.bytes_written)

    def to_dict(self, layers: bool = False) -> dict:
        """JSON-ready totals; with `layers=True` also one dict per row under "layers"."""
        out = {key: getattr(self, key) for key in (
            "name", "resolution", "batch", "dtype", "num_classes", "in_chans", "params", "macs",
            "activations", "bytes_read", "bytes_written", "peak_activation_bytes")}
        out["intensity"] = self.intensity
        if layers:
            out["layers"] = [row.to_dict() for row in self.layers]
        return out


def conv_output_size(size: int, kernel: int, stride: int, padding: str = "symmetric") -> int:
    """Output length of a conv as `nn/layers.make_conv` builds it (TF 'same' only when strided)."""
    if padding == "same" and stride > 1:
        return -(-size // stride)
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


class _Pass:
    """Accumulates rows in execution order and the tensors they read and write (for liveness)."""

    def __init__(self, batch: int, itemsize: int, padding: str):
        self.batch, self.itemsize, self.padding = batch, itemsize, padding
        self.rows: list[LayerCost] = []
        self.reads: list[tuple[int, ...]] = []  # tensor ids read by each row
        self.sizes: list[int] = []  # elements of each tensor, by id
        self.pinned: set[int] = set()  # tensors the pass returns (live to the end)

    def tensor(self, channels: int, hw: tuple[int, int]) -> int:
        self.sizes.append(self.batch * channels * hw[0] * hw[1])
        return len(self.sizes) - 1

    def _add(self, reads: tuple[int, ...], out_channels: int, out_hw: tuple[int, int], params: int,
             shared: int = 0, **fields) -> int:
        out = self.tensor(out_channels, out_hw)
        read = sum(self.sizes[t] for t in reads) + params + shared
        self.rows.append(LayerCost(out_channels=out_channels, out_hw=out_hw, params=params,
                                   activations=self.sizes[out], bytes_read=read * self.itemsize,
                                   bytes_written=self.sizes[out] * self.itemsize, **fields))
        self.reads.append(reads)
        return out

    def conv(self, name: str, x: int, in_channels: int, out_channels: int, kernel: int,
             in_hw: tuple[int, int], stride: int = 1, groups: int = 1, kind: str | None = None,
             bias: bool = False, norm: bool = True, shared: bool = False) -> tuple[int, tuple[int, int]]:
        """`shared`: the conv's weights (and bias) belong to an earlier row, as a detector head's
        convs are shared across levels; they are read again but counted as parameters once."""
        out_hw = tuple(conv_output_size(s, kernel, stride, self.padding) for s in in_hw)
        weights = out_channels * (in_channels // groups) * kernel * kernel
        own = weights + (out_channels if bias else 0)
        params = (0 if shared else own) + (2 * out_channels if norm else 0)
        if kind is None:
            kind = "pointwise" if kernel == 1 else "conv"
        out = self._add((x,), out_channels, out_hw, params, own if shared else 0, name=name, kind=kind,
                        in_channels=in_channels, kernel=kernel, stride=stride, groups=groups,
                        in_hw=in_hw, macs=self.batch * out_hw[0] * out_hw[1] * weights)
        return out, out_hw

    def linear(self, name: str, x: int, in_features: int, out_features: int) -> int:
        weights = in_features * out_features
        return self._add((x,), out_features, (1, 1), weights + out_features, name=name, kind="linear",
                         in_channels=in_features, kernel=1, stride=1, groups=1, in_hw=(1, 1),
                         macs=self.batch * weights)

    def elementwise(self, name: str, kind: str, reads: tuple[int, ...], channels: int,
                    in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
        return self._add(reads, channels, out_hw, 0, name=name, kind=kind, in_channels=channels,
                         kernel=0, stride=1, groups=1, in_hw=in_hw, macs=0)

    def squeeze_excite(self, prefix: str, x: int, channels: int, squeeze: int, hw: tuple[int, int]) -> int:
        pooled = self.elementwise(f"{prefix}.pool", "pool", (x,), channels, hw, (1, 1))
        reduced, _ = self.conv(f"{prefix}.reduce", pooled, channels, squeeze, 1, (1, 1),
                               kind="se_reduce", bias=True, norm=False)
        gate, _ = self.conv(f"{prefix}.expand", reduced, squeeze, channels, 1, (1, 1),
                            kind="se_expand", bias=True, norm=False)
        return self.elementwise(f"{prefix}.scale", "se_scale", (x, gate), channels, hw, hw)

    def block(self, block: BlockSpec, x: int, hw: tuple[int, int], prefix: str = "") -> tuple[int, tuple[int, int]]:
        """One MBConv / FusedMBConv: its `layers()` in order, as the module builder walks them."""
        prefix = f"{prefix}stages.{block.stage}.{block.position}"
        out, out_hw = x, hw
        for layer in block.layers():
            if layer.kind == "se":
                out = self.squeeze_excite(f"{prefix}.{layer.name}", out, layer.in_channels, layer.squeeze, out_hw)
            else:
                out, out_hw = self.conv(f"{prefix}.{layer.name}.conv", out, layer.in_channels, layer.out_channels,
                                        layer.kernel, out_hw, layer.stride, groups=layer.groups,
                                        kind="depthwise" if layer.kind == "depthwise" else None)
        if block.has_residual:
            out = self.elementwise(f"{prefix}.residual", "residual", (x, out), block.out_channels, hw, hw)
        return out, out_hw

    def backbone(self, spec: NetworkSpec, x: int, in_chans: int, resolution: int,
                 prefix: str = "") -> dict[int, tuple[int, tuple[int, int]]]:
        """Stem and blocks of `spec` on image tensor `x`: {stage: (output tensor, its size)}, stem = -1."""
        hw = (resolution, resolution)
        x, hw = self.conv(f"{prefix}stem.conv", x, in_chans, spec.stem_channels, STEM_KERNEL, hw, STEM_STRIDE)
        outputs = {-1: (x, hw)}
        for block in spec.blocks():
            x, hw = self.block(block, x, hw, prefix)
            outputs[block.stage] = (x, hw)
        return outputs

    def peak_bytes(self) -> int:
        """Max over rows of the bytes of all tensors live while the row runs (see module docstring)."""
        end = len(self.rows)
        # Row i writes tensor i + 1; tensor 0 (the input image) exists before row 0.
        last_read = list(range(-1, end))
        for i, reads in enumerate(self.reads):
            for t in reads:
                last_read[t] = max(last_read[t], i)
        for t in self.pinned:
            last_read[t] = end - 1
        change = [0] * (end + 1)  # live elements change at the row a tensor appears / after its last read
        for t, size in enumerate(self.sizes):
            change[max(t - 1, 0)] += size
            change[last_read[t] + 1] -= size
        live = peak = 0
        for delta in change[:end]:
            live += delta
            peak = max(peak, live)
        return peak * self.itemsize


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EffscaleError(f"{name}={value!r:.60} must be an integer >= {minimum}"
                            + (f" and <= {maximum}" if maximum is not None else ""))
    if maximum is not None and value > maximum:
        raise EffscaleError(f"{name}={value!r} must be an integer in [{minimum}, {maximum}]")
    return value


def cost(spec_or_model, resolution: int | None = None, batch: int = 1, dtype: str = "fp32",
         num_classes: int = 1000, in_chans: int = 3) -> Cost:
    """Analytic cost of one inference pass at `resolution` (default: the spec's), `batch`, `dtype`.

    `spec_or_model` is a built EfficientNet, whose own `num_classes`, `in_chans` and
    `features_only` are used (a features_only model has no head, pool or classifier), or any
    other model reference `zoo.resolve_spec` takes: a NetworkSpec, a model name (see
    `list_models()`), a spec text file or an effscale weights file. `dtype` is one of fp32, bf16, fp16,
    int8 and sets the bytes per element of activations and weights alike.
    """
    spec = resolve_spec(spec_or_model)  # a name, spec, spec file, weights file or built model
    if not isinstance(spec, NetworkSpec):
        raise TypeError(f"cost() counts image networks (NetworkSpec); {spec.name} is a {spec.kind} spec: use "
                        "its family's cost (effscale.family_of(spec).cost)")
    features_only = False
    if getattr(spec_or_model, "spec", None) is spec and not isinstance(spec_or_model, NetworkSpec):
        # a built EfficientNet: its own head and input width count
        num_classes = getattr(spec_or_model, "num_classes", num_classes)
        in_chans = getattr(spec_or_model, "in_chans", in_chans)
        features_only = bool(getattr(spec_or_model, "features_only", False))
    if dtype not in DTYPE_BYTES:
        raise EffscaleError(f"dtype={dtype!r} is unknown; allowed: {', '.join(DTYPE_BYTES)}")
    resolution = spec.resolution if resolution is None else resolution
    _check_int("resolution", resolution, MIN_RESOLUTION, MAX_RESOLUTION)
    _check_int("batch", batch, 1)
    _check_int("num_classes", num_classes, 0)
    _check_int("in_chans", in_chans, 1)

    walk = _Pass(batch, DTYPE_BYTES[dtype], spec.padding)
    x = walk.tensor(in_chans, (resolution, resolution))
    stage_outputs = walk.backbone(spec, x, in_chans, resolution)
    x, hw = stage_outputs[max(stage_outputs)]
    stage_outputs = {stage: tensor for stage, (tensor, _) in stage_outputs.items()}
    if features_only:
        walk.pinned = {stage_outputs[level["stage"]] for level in spec.feature_levels()}
    else:
        x, hw = walk.conv("head.conv", x, spec.out_channels, spec.head_channels, 1, hw)
        x = walk.elementwise("pool", "pool", (x,), spec.head_channels, hw, (1, 1))
        if num_classes:
            walk.linear("classifier", x, spec.head_channels, num_classes)

    rows = tuple(walk.rows)
    return Cost(
        name=spec.name, resolution=resolution, batch=batch, dtype=dtype, num_classes=num_classes,
        in_chans=in_chans, params=sum(r.params for r in rows), macs=sum(r.macs for r in rows),
        activations=sum(r.activations for r in rows if r.kind in MAC_KINDS),
        bytes_read=sum(r.bytes_read for r in rows), bytes_written=sum(r.bytes_written for r in rows),
        peak_activation_bytes=walk.peak_bytes(), layers=rows)
