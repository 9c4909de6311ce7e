"""A detector as a spec, and EfficientDet's compound scaling of the whole detector by one phi.

`DetectorSpec` is pure data like `NetworkSpec`: the backbone (any image spec, at the detector's
input resolution), the neck (BiFPN or plain FPN: width, repeats, pyramid levels), the head depth
and the classes. The modules, cost and export are to be derived from it (issue 12).

EfficientDet scales backbone, neck, head and input together (Tan, Pang & Le 2020, eq. 1-3):
BiFPN width W = 64 * 1.35^phi, BiFPN repeats 3 + phi, head repeats 3 + floor(phi / 3), input
512 + 128 * phi, backbone B_phi. The released D0-D7 (paper Table 1) round these by hand and
break the formula at D5-D7 (repeats capped at 7-8, D7 reuses B6 at a larger input); D7x uses B7
and one more level (P3-P8). `efficientdet(phi)` returns the table's row for the named models and
the formula for any other phi, negative included (small devices), rounded as stated there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import EffscaleError
from ..scaling import Coefficients, compound, scale
from ..spec import EFFICIENTNET_B0, NetworkSpec

NECKS = ("bifpn", "fpn")
# BiFPN node fusion: "fast" = fast normalised fusion with learned weights; "sum" = unweighted sum, which
# the reference uses for D6-D7x ("for training stability", effdet's bifpn_sum). A plain FPN always sums.
FUSIONS = ("fast", "sum")
WIDTH_DIVISOR = 8  # BiFPN widths off the table are rounded to multiples of 8 (the table's are)
MIN_RESOLUTION_STEPS = 1  # the formula's input is at least one 2^max_level step


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    backbone: NetworkSpec
    resolution: int
    fpn_channels: int
    fpn_layers: int
    head_layers: int
    neck: str = "bifpn"
    min_level: int = 3
    max_level: int = 7
    num_classes: int = 90
    num_scales: int = 3  # anchor scales per level
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_scale: float = 4.0  # anchor size at level l = anchor_scale * 2^l (the reference's 4)
    fusion: str = "fast"

    @property
    def weighted_fusion(self) -> bool:
        """Whether the neck's nodes learn fusion weights (BiFPN with fast fusion only)."""
        return self.neck == "bifpn" and self.fusion == "fast"

    def __post_init__(self) -> None:
        self.validate()
        if self.backbone.resolution != self.resolution:  # the backbone sees the detector's input
            object.__setattr__(self, "backbone", self.backbone.replace(resolution=self.resolution))

    @property
    def num_anchors(self) -> int:
        return self.num_scales * len(self.aspect_ratios)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(range(self.min_level, self.max_level + 1))

    def validate(self) -> None:
        if not isinstance(self.backbone, NetworkSpec):
            raise EffscaleError(f"{self.name}: backbone must be a NetworkSpec, got {type(self.backbone).__name__}")
        if self.neck not in NECKS:
            raise EffscaleError(f"{self.name}: neck {self.neck!r} is unknown; allowed: {', '.join(NECKS)}")
        if self.fusion not in FUSIONS:
            raise EffscaleError(f"{self.name}: fusion {self.fusion!r} is unknown; allowed: {', '.join(FUSIONS)}")
        for field in ("fpn_channels", "fpn_layers", "head_layers", "num_classes", "num_scales"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EffscaleError(f"{self.name}: {field}={value!r} must be an integer >= 1")
        deepest = max(backbone_levels(self.backbone))
        if not (isinstance(self.min_level, int) and isinstance(self.max_level, int)
                and 1 <= self.min_level < self.max_level <= 10):
            raise EffscaleError(f"{self.name}: levels P{self.min_level}-P{self.max_level} must satisfy "
                                "1 <= min_level < max_level <= 10")
        if self.min_level > deepest:
            raise EffscaleError(f"{self.name}: min_level {self.min_level} is beyond the backbone's deepest level "
                                f"P{deepest} (the neck makes levels above the backbone, not below it)")
        step = 2 ** self.max_level
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < step \
                or self.resolution % step:
            lower = max(step, (self.resolution // step) * step) if isinstance(self.resolution, int) else step
            raise EffscaleError(f"{self.name}: input resolution {self.resolution!r} must be a multiple of "
                                f"2^max_level = {step} (levels P{self.min_level}-P{self.max_level} halve it "
                                f"{self.max_level} times); e.g. {lower} or {lower + step}")
        if not self.aspect_ratios or any(not (isinstance(r, (int, float)) and r > 0) for r in self.aspect_ratios):
            raise EffscaleError(f"{self.name}: aspect_ratios {self.aspect_ratios!r} must be numbers > 0")
        if isinstance(self.anchor_scale, bool) or not isinstance(self.anchor_scale, (int, float)) \
                or not math.isfinite(self.anchor_scale) or self.anchor_scale <= 0:
            raise EffscaleError(f"{self.name}: anchor_scale={self.anchor_scale!r} must be a finite number > 0")


def backbone_levels(backbone: NetworkSpec) -> dict[int, int]:
    """Width of the backbone's feature at each pyramid level (level = log2 of its reduction), from
    the spec's own `feature_levels()`, the levels `features_only` returns."""
    return {level["reduction"].bit_length() - 1: level["num_chs"] for level in backbone.feature_levels()}


def neck_topology(count: int, neck: str) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """One neck layer over `count` levels as a graph, for the modules and the cost alike.

    Maps are numbered as the layer builds them: 0..count-1 its inputs (levels ascending), then
    each node's output in turn (a plain FPN first appends its top level, converted, at `count`).
    Returns ([(level index of the node, [input map numbers])] in execution order, the map numbers
    of the outputs, levels ascending). BiFPN: top-down nodes from level count-2 to 0, each fusing
    its input with the node (or top input) above, then bottom-up nodes from 1 to count-1, fusing
    the input, the top-down node of that level (not at the top) and the node below. FPN: the
    top-down nodes only. An input number below `count` is an original feature of that level."""
    nodes: list[tuple[int, list[int]]] = []
    if neck == "fpn":
        previous = count  # the converted top level
        for index in range(count - 2, -1, -1):
            nodes.append((index, [index, previous]))
            previous = count + len(nodes)
        return nodes, [count + k for k in range(len(nodes), 0, -1)] + [count]
    previous = count - 1
    top_down = {}
    for index in range(count - 2, -1, -1):
        nodes.append((index, [index, previous]))
        previous = top_down[index] = count + len(nodes) - 1
    below = top_down[0]
    bottom_up = []
    for index in range(1, count):
        nodes.append((index, [index, top_down[index], below] if index < count - 1 else [index, below]))
        below = count + len(nodes) - 1
        bottom_up.append(below)
    return nodes, [top_down[0]] + bottom_up


# -- EfficientDet ---------------------------------------------------------------------------------------
# name: (phi, backbone, input, BiFPN width, BiFPN repeats, head repeats, max level); paper Table 1
EFFICIENTDET_TABLE = {
    "efficientdet_d0": (0, "efficientnet_b0", 512, 64, 3, 3, 7),
    "efficientdet_d1": (1, "efficientnet_b1", 640, 88, 4, 3, 7),
    "efficientdet_d2": (2, "efficientnet_b2", 768, 112, 5, 3, 7),
    "efficientdet_d3": (3, "efficientnet_b3", 896, 160, 6, 4, 7),
    "efficientdet_d4": (4, "efficientnet_b4", 1024, 224, 7, 4, 7),
    "efficientdet_d5": (5, "efficientnet_b5", 1280, 288, 7, 4, 7),
    "efficientdet_d6": (6, "efficientnet_b6", 1280, 384, 8, 5, 7),
    "efficientdet_d7": (7, "efficientnet_b6", 1536, 384, 8, 5, 7),
    "efficientdet_d7x": (None, "efficientnet_b7", 1536, 384, 8, 5, 8),
}

SUM_FUSION = ("efficientdet_d6", "efficientdet_d7", "efficientdet_d7x")  # the reference's bifpn_sum


def efficientdet_formula(phi: float, max_level: int = 7) -> dict:
    """EfficientDet's scaling equations at any finite phi, rounded to the nearest (halves up): width
    to a multiple of 8 (>= 8), BiFPN repeats to an integer (>= 1), input to a multiple of
    2^max_level (>= one); head repeats 3 + floor(phi / 3) (>= 1), as written."""
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi):
        raise EffscaleError(f"phi={phi!r} must be a finite number")
    step = 2 ** max_level
    return {
        "fpn_channels": max(WIDTH_DIVISOR, _nearest(64 * 1.35 ** phi / WIDTH_DIVISOR) * WIDTH_DIVISOR),
        "fpn_layers": max(1, _nearest(3 + phi)),
        "head_layers": max(1, 3 + math.floor(phi / 3)),
        "resolution": max(MIN_RESOLUTION_STEPS * step, _nearest((512 + 128 * phi) / step) * step),
    }


def _nearest(value: float) -> int:
    """Nearest integer, halves up (Python's round() sends halves to the even neighbour)."""
    return int(math.floor(value + 0.5))


def efficientdet(phi_or_name, *, num_classes: int = 90) -> DetectorSpec:
    """D0-D7 / D7x by name (or integer phi 0-7): the paper's Table 1. Any other phi: the formula
    (`efficientdet_formula`) with the backbone compound-scaled from B0 by the same phi."""
    from ..zoo import get_spec

    if isinstance(phi_or_name, str):
        key = phi_or_name if phi_or_name in EFFICIENTDET_TABLE else f"efficientdet_{phi_or_name}"
        if key not in EFFICIENTDET_TABLE:
            raise EffscaleError(f"detector {phi_or_name!r} is unknown; named: {', '.join(EFFICIENTDET_TABLE)} "
                                "(or a number: any phi)")
        _, backbone, resolution, width, layers, head, max_level = EFFICIENTDET_TABLE[key]
        return DetectorSpec(name=key, backbone=get_spec(backbone), resolution=resolution, fpn_channels=width,
                            fpn_layers=layers, head_layers=head, max_level=max_level, num_classes=num_classes,
                            fusion="sum" if key in SUM_FUSION else "fast")
    phi = phi_or_name
    if isinstance(phi, (int, float)) and not isinstance(phi, bool) and float(phi).is_integer() and 0 <= phi <= 7:
        return efficientdet(f"d{int(phi)}", num_classes=num_classes)
    rounded = efficientdet_formula(phi)
    backbone = compound(EFFICIENTNET_B0, phi) if phi else EFFICIENTNET_B0
    return DetectorSpec(name=f"efficientdet-phi{phi:g}", backbone=backbone, num_classes=num_classes, **rounded)


def fast_scaling(base: NetworkSpec, factor: float, *, alpha: float = 0.8, name: str | None = None) -> NetworkSpec:
    """Dollár, Singh & Girshick 2021 "fast compound scaling": multiply FLOPs by `factor` with
    exponents e_w = alpha, e_d = e_r = (1 - alpha) / 2 of that factor, i.e. width x factor^(alpha/2),
    depth x factor^((1-alpha)/2), resolution x factor^((1-alpha)/4) (FLOPs ~ d w^2 r^2), so most of
    the growth goes to width, which adds the fewest activations. Rounded as `scale` rounds."""
    for label, value, low in (("factor", factor, 0.0), ("alpha", alpha, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= low:
            raise EffscaleError(f"{label}={value!r} must be a finite number > {low:g}")
    if alpha > 1:
        raise EffscaleError(f"alpha={alpha!r} must be at most 1 (the share of the FLOPs growth given to width)")
    coefficients = fast_scaling_coefficients(factor, alpha)
    return scale(base, coefficients, name=name or f"{base.name}-fast{factor:g}")


def fast_scaling_coefficients(factor: float, alpha: float = 0.8) -> Coefficients:
    return Coefficients(depth=factor ** ((1 - alpha) / 2), width=factor ** (alpha / 2),
                        resolution=factor ** ((1 - alpha) / 4))


# -- segmenters -----------------------------------------------------------------------------------------
OUTPUT_STRIDES = (4, 8)


@dataclass(frozen=True)
class SegmenterSpec:
    """A semantic segmenter: the backbone's pyramid from stride `output_stride` to its deepest level,
    an FPN-style decoder of width `decoder_channels` (1x1 laterals, top-down upsample-and-add, a
    3x3 conv per level, all brought to `output_stride` and summed), a 1x1 classifier over
    background + `num_classes`, upsampled bilinearly to the input."""

    name: str
    backbone: NetworkSpec
    resolution: int
    decoder_channels: int = 64
    output_stride: int = 4
    num_classes: int = 10  # object classes; the segmenter also predicts background (class 0)
    classify: bool = False  # multi-task: also an image-level classification head over the same classes

    def __post_init__(self) -> None:
        self.validate()
        if self.backbone.resolution != self.resolution:
            object.__setattr__(self, "backbone", self.backbone.replace(resolution=self.resolution))

    @property
    def levels(self) -> tuple[int, ...]:
        deepest = max(backbone_levels(self.backbone))
        return tuple(range(self.output_stride.bit_length() - 1, deepest + 1))

    def validate(self) -> None:
        if not isinstance(self.backbone, NetworkSpec):
            raise EffscaleError(f"{self.name}: backbone must be a NetworkSpec, got {type(self.backbone).__name__}")
        for field in ("decoder_channels", "num_classes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EffscaleError(f"{self.name}: {field}={value!r} must be an integer >= 1")
        if not isinstance(self.classify, bool):
            raise EffscaleError(f"{self.name}: classify={self.classify!r} must be True or False")
        if self.output_stride not in OUTPUT_STRIDES:
            raise EffscaleError(f"{self.name}: output_stride={self.output_stride!r} is not allowed; allowed: "
                                f"{', '.join(map(str, OUTPUT_STRIDES))}")
        step = 2 ** max(backbone_levels(self.backbone))
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < step \
                or self.resolution % step:
            raise EffscaleError(f"{self.name}: input resolution {self.resolution!r} must be a multiple of the "
                                f"backbone's total stride {step}")


def segmenter(phi: float = 0.0, *, num_classes: int = 10, resolution: int | None = None, classify: bool = False,
              rule: str = "compound") -> SegmenterSpec:
    """The segmenter scaled by one phi: backbone B0 compound-scaled by phi, decoder width
    64 * 1.35^phi (EfficientDet's neck rule, to a multiple of 8), input the backbone's compound
    resolution rounded to a multiple of 32 unless `resolution` is given. `classify` adds the
    image-level head (multi-task); `rule` "resolution" / "width" scales the backbone with
    EfficientNet's rule leaned that way at the same FLOPs per phi (`ScalingRule.biased`)."""
    from ..scaling import RULE_BIASES, ScalingRule

    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi):
        raise EffscaleError(f"phi={phi!r} must be a finite number")
    if rule not in ("compound",) + RULE_BIASES:
        raise EffscaleError(f"rule {rule!r} is unknown; allowed: compound, {', '.join(RULE_BIASES)}")
    chosen = ScalingRule() if rule == "compound" else ScalingRule().biased(rule)
    backbone = compound(EFFICIENTNET_B0, phi, chosen) if phi else EFFICIENTNET_B0
    size = resolution if resolution is not None else max(32, _nearest(backbone.resolution / 32) * 32)
    width = max(WIDTH_DIVISOR, _nearest(64 * 1.35 ** phi / WIDTH_DIVISOR) * WIDTH_DIVISOR)
    kind = "multitask" if classify else "segmenter"
    suffix = "" if rule == "compound" else f"-{rule}"
    return SegmenterSpec(name=f"{kind}-phi{phi:g}{suffix}", backbone=backbone, resolution=size,
                         decoder_channels=width, num_classes=num_classes, classify=classify)


# -- text form and names --------------------------------------------------------------------------------
_KINDS = {"detector": DetectorSpec, "segmenter": SegmenterSpec}


def dense_spec_to_dict(spec) -> dict:
    """A JSON-able dict that `dense_spec_from_dict` turns back into the same spec."""
    kind = next((k for k, cls in _KINDS.items() if isinstance(spec, cls)), None)
    if kind is None:
        raise EffscaleError(f"not a dense spec: {type(spec).__name__}")
    fields = {name: getattr(spec, name) for name in spec.__dataclass_fields__}
    fields["backbone"] = spec.backbone.to_text()
    if "aspect_ratios" in fields:
        fields["aspect_ratios"] = list(fields["aspect_ratios"])
    return {"kind": kind, **fields}


def dense_spec_from_dict(data: dict):
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind not in _KINDS:
        raise EffscaleError(f"dense spec kind {kind!r} is unknown; allowed: {', '.join(_KINDS)}")
    fields["backbone"] = NetworkSpec.from_text(fields["backbone"])
    if "aspect_ratios" in fields:
        fields["aspect_ratios"] = tuple(fields["aspect_ratios"])
    return _KINDS[kind](**fields)


DENSE_NAME_FORMS = ("efficientdet_d0 .. efficientdet_d7x, efficientdet@PHI (any phi, e.g. efficientdet@-3), "
                    "segmenter@PHI, multitask@PHI (segmenter + image classifier); then optional ,field=value "
                    "overrides (e.g. efficientdet@-3,anchor_scale=2; segmenter / multitask also take "
                    "rule=resolution|width, the backbone rule leaned that way)")


def resolve_dense_spec(reference: str, *, num_classes: int):
    """A detector / segmenter spec from its name (see DENSE_NAME_FORMS) for `num_classes` classes."""
    import dataclasses

    if not isinstance(reference, str) or not reference.strip():
        raise EffscaleError(f"dense model {reference!r} is not understood; allowed: {', '.join(DENSE_NAME_FORMS)}")
    head, *overrides = [part.strip() for part in reference.split(",")]
    family, _, phi_text = head.partition("@")
    rule = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == "rule"]
    overrides = [o for o in overrides if o.partition("=")[0] != "rule"]
    if rule and family not in ("segmenter", "multitask"):
        raise EffscaleError(f"dense model {reference!r}: rule= is for segmenter@PHI / multitask@PHI (a detector's "
                            "backbone follows EfficientDet's table or rule)")
    if family == "efficientdet" and phi_text or family in ("segmenter", "multitask"):
        try:
            phi = float(phi_text or 0)
        except ValueError:
            raise EffscaleError(f"dense model {reference!r}: phi {phi_text!r} is not a number") from None
        spec = efficientdet(phi, num_classes=num_classes) if family == "efficientdet" \
            else segmenter(phi, num_classes=num_classes, classify=family == "multitask",
                           rule=rule[-1] if rule else "compound")
    elif head in EFFICIENTDET_TABLE:
        spec = efficientdet(head, num_classes=num_classes)
    else:
        raise EffscaleError(f"dense model {head!r} is unknown; allowed: {DENSE_NAME_FORMS}")
    changes = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        allowed = [f for f in spec.__dataclass_fields__ if f not in ("name", "backbone", "num_classes", "classify")]
        if not sep or key not in allowed:
            raise EffscaleError(f"dense model {reference!r}: override {override!r} must be field=value with a field "
                                f"of {', '.join(allowed)}")
        current = getattr(spec, key)
        try:
            changes[key] = type(current)(float(value)) if isinstance(current, (int, float)) else value
        except ValueError:
            raise EffscaleError(f"dense model {reference!r}: {key}={value!r} must be a number") from None
        if isinstance(current, int) and float(value) != int(float(value)):
            raise EffscaleError(f"dense model {reference!r}: {key}={value!r} must be an integer")
    return dataclasses.replace(spec, **changes) if changes else spec


__all__ = ["DENSE_NAME_FORMS", "DetectorSpec", "EFFICIENTDET_TABLE", "SegmenterSpec", "dense_spec_from_dict",
           "dense_spec_to_dict", "efficientdet", "efficientdet_formula", "fast_scaling", "fast_scaling_coefficients",
           "neck_topology", "resolve_dense_spec", "segmenter"]
