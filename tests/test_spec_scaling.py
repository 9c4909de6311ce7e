"""Spec, scaling rule and the named family against the published numbers (REFERENCE.md)."""
import math
import random

import pytest

import effscale
from effscale import Coefficients, EffscaleError, NetworkSpec, ScalingRule, StageSpec, compound, scale
from effscale.nn import build_model
from effscale.spec import EFFICIENTNET_B0, make_divisible

# Exact parameter counts of the reference implementations (1000 classes).
PUBLISHED_PARAMS = {
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960,
}
PUBLISHED_LITE_PARAMS_M = {"efficientnet_lite0": 4.7, "efficientnet_lite1": 5.4, "efficientnet_lite2": 6.1,
                           "efficientnet_lite3": 8.2, "efficientnet_lite4": 13.0}
RESOLUTIONS = {"efficientnet_b0": 224, "efficientnet_b1": 240, "efficientnet_b2": 260, "efficientnet_b3": 300,
               "efficientnet_b4": 380, "efficientnet_b5": 456, "efficientnet_b6": 528, "efficientnet_b7": 600,
               "efficientnet_b8": 672, "efficientnet_l2": 800, "efficientnet_lite0": 224,
               "efficientnet_lite1": 240, "efficientnet_lite2": 260, "efficientnet_lite3": 280,
               "efficientnet_lite4": 300}


def n_params(spec, **kw):
    return sum(p.numel() for p in build_model(spec, **kw).parameters())


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_b0_to_b7_params_match_reference_exactly(name):
    assert n_params(effscale.get_spec(name)) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", list(PUBLISHED_LITE_PARAMS_M))
def test_lite_params_within_two_percent(name):
    params = n_params(effscale.get_spec(name))
    assert abs(params / 1e6 / PUBLISHED_LITE_PARAMS_M[name] - 1) < 0.02


def test_family_names_and_resolutions():
    assert effscale.list_models() == list(RESOLUTIONS)
    for name, resolution in RESOLUTIONS.items():
        assert effscale.get_spec(name).resolution == resolution


def test_b0_table_and_dropout_growth():
    b0 = effscale.get_spec("efficientnet_b0")
    assert [(s.expand_ratio, s.kernel, s.stride, s.out_channels, s.repeats) for s in b0.stages] == [
        (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    assert (b0.stem_channels, b0.head_channels, b0.bn_eps, b0.bn_momentum) == (32, 1280, 1e-3, 0.01)
    assert [effscale.get_spec(f"efficientnet_b{i}").dropout for i in range(8)] == [0.2, 0.2, 0.3, 0.3, 0.4, 0.4,
                                                                                  0.5, 0.5]


def test_lite_fixes_stem_head_and_end_repeats():
    lite4 = effscale.get_spec("efficientnet_lite4")
    assert (lite4.stem_channels, lite4.head_channels, lite4.activation) == (32, 1280, "relu6")
    assert lite4.stages[0].repeats == 1 and lite4.stages[-1].repeats == 1
    assert lite4.stages[1].repeats == math.ceil(2 * 1.8)
    assert all(stage.se_ratio == 0 for stage in lite4.stages)


def test_reference_rounding():
    assert make_divisible(32 * 1.1) == 32  # int(35.2 + 4) // 8 * 8 = 32 >= 0.9 * 35.2
    assert make_divisible(16 * 1.2) == 24  # 19.2 + 4 = 23.2 -> 16 < 0.9 * 19.2? no: 16 < 17.28 -> +8
    assert make_divisible(3) == 8  # never below the divisor
    b3 = effscale.get_spec("efficientnet_b3")
    assert [s.out_channels for s in b3.stages] == [24, 32, 48, 96, 136, 232, 384]
    assert [s.repeats for s in b3.stages] == [2, 3, 3, 5, 5, 6, 2]
    assert (b3.stem_channels, b3.head_channels) == (40, 1536)


def test_rule_at_phi_and_constraint():
    rule = ScalingRule()
    c = rule.at(1)
    assert (c.depth, c.width, c.resolution) == (1.2, 1.1, 1.15)
    assert rule.flops_base == pytest.approx(1.92, abs=0.01)
    rule.check_constraint(2.0)
    assert rule.at(0) == Coefficients()
    half = rule.at(-0.5)
    assert half.depth == pytest.approx(1.2 ** -0.5)
    with pytest.raises(EffscaleError, match="must be within|not within"):
        ScalingRule(2.0, 2.0, 2.0).check_constraint(2.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=0.9), r"alpha=0.9 must be a finite number >= 1"),
    (dict(beta=float("nan")), r"beta=nan"),
    (dict(gamma=float("inf")), r"gamma=inf"),
    (dict(alpha="x"), r"alpha='x' is not a number"),
])
def test_rule_rejects_bad_coefficients(kwargs, match):
    with pytest.raises(EffscaleError, match=match):
        ScalingRule(**kwargs)


@pytest.mark.parametrize("phi", [-3, -1.5, -0.25, 0, 0.5, 1, 2.7, 4])
def test_compound_any_phi(phi):
    spec = compound(EFFICIENTNET_B0, phi)
    rule = ScalingRule()
    assert spec.resolution % 8 == 0
    assert spec.resolution == round(224 * rule.gamma ** phi / 8) * 8
    assert all(s.out_channels % 8 == 0 for s in spec.stages)
    assert [s.repeats for s in spec.stages] == [math.ceil(b.repeats * rule.alpha ** phi) for b in EFFICIENTNET_B0.stages]
    assert compound(EFFICIENTNET_B0, phi) == spec  # pure: same input, same output
    # scaling up grows and scaling down shrinks the network
    if phi > 0:
        assert n_params(spec) > n_params(EFFICIENTNET_B0)
    elif phi < 0:
        assert n_params(spec) < n_params(EFFICIENTNET_B0)


def test_scale_explicit_multipliers_match_named_member():
    b2 = scale(EFFICIENTNET_B0, Coefficients(depth=1.2, width=1.1, resolution=260 / 224))
    named = effscale.get_spec("efficientnet_b2")
    assert b2.stages == named.stages and b2.resolution == 256  # 260 rounds to a multiple of 8


def test_scale_errors_name_the_limit():
    with pytest.raises(EffscaleError, match=r"resolution .* minimum is 32 px"):
        compound(EFFICIENTNET_B0, -20)
    with pytest.raises(EffscaleError, match=r"leaves stage 1 with .* channels"):
        scale(EFFICIENTNET_B0, Coefficients(width=0.01))
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(EffscaleError, match="must be a finite number > 0"):
            Coefficients(width=bad)
    with pytest.raises(EffscaleError, match="phi=nan"):
        ScalingRule().at(float("nan"))


def test_unknown_model_suggests_close_names():
    with pytest.raises(EffscaleError, match=r"unknown model 'efficientnet_b9'.*did you mean"):
        effscale.get_spec("efficientnet_b9")
    with pytest.raises(EffscaleError, match=r"unknown spec field 'padd'.*did you mean padding"):
        effscale.get_spec("efficientnet_b0", padd="same")


def _random_spec(rng: random.Random) -> NetworkSpec:
    stages = tuple(StageSpec(
        block=rng.choice(["mbconv", "fused_mbconv"]), repeats=rng.randint(1, 3), kernel=rng.choice([1, 3, 5, 7]),
        stride=rng.choice([1, 2]), expand_ratio=rng.choice([1, 2.5, 4, 6]), out_channels=rng.randint(1, 64) * 8,
        se_ratio=rng.choice([0.0, 0.25, 1 / 3]), scale_depth=rng.random() < 0.8) for _ in range(rng.randint(1, 6)))
    return NetworkSpec(
        name=f"random{rng.randint(0, 999)}", stages=stages, stem_channels=rng.randint(1, 8) * 8,
        head_channels=rng.randint(1, 200) * 8, resolution=rng.randint(4, 40) * 8,
        activation=rng.choice(["swish", "relu6", "relu", "gelu"]), dropout=rng.random() * 0.5,
        drop_path_rate=rng.random() * 0.3, bn_eps=rng.choice([1e-3, 1e-5]), bn_momentum=rng.choice([0.01, 0.1]),
        padding=rng.choice(["symmetric", "same"]), scale_stem_head=rng.random() < 0.5,
        mean=(rng.random(), 0.5, 0.25), std=(0.1 + rng.random(), 0.5, 1 / 3), crop_pct=rng.choice([0.875, 1.0, 0.95]))


def test_text_form_round_trips_family_and_random_specs():
    rng = random.Random(0)
    specs = [effscale.get_spec(n) for n in effscale.list_models()]
    specs += [_random_spec(rng) for _ in range(100)]
    specs += [compound(EFFICIENTNET_B0, phi) for phi in (-1.3, 0.1, 2.5)]
    for spec in specs:
        text = spec.to_text()
        assert NetworkSpec.from_text(text) == spec
        assert len(text.splitlines()) == 1 + len(spec.stages)


def test_text_form_is_readable():
    lines = effscale.get_spec("efficientnet_b0").to_text().splitlines()
    assert lines[0].startswith("network efficientnet_b0 res=224 stem=32 head=1280 act=swish")
    assert lines[1] == "mbconv r1 k3 s1 e1 c16 se0.25"
    assert effscale.get_spec("efficientnet_lite0").to_text().splitlines()[1] == "mbconv r1 k3 s1 e1 c16 fixdepth"


@pytest.mark.parametrize("text,match", [
    ("", "must start with"),
    ("network x res=224\nmbconv r1 k4 s1 e1 c16", r"kernel=4 must be an odd integer"),
    ("network x res=16\nmbconv r1 k3 s1 e1 c16", r"resolution=16 must be an integer >= 32"),
    ("network x res=224 colour=red\nmbconv r1", r"'colour=red' is unknown"),
    ("network x\nmbconv q1", r"stage token 'q1'"),
    ("network x\nmbconv rX", r"'X' is not a int"),
    ("network x\nwideconv r1", r"block type 'wideconv' is unknown"),
    ("network x", "at least one stage"),
])
def test_text_form_errors(text, match):
    with pytest.raises(EffscaleError, match=match):
        NetworkSpec.from_text(text)


def test_blocks_drop_path_schedule_is_linear():
    spec = effscale.get_spec("efficientnet_b0")
    rates = [b.drop_path_rate for b in spec.blocks()]
    assert len(rates) == 16 and rates[0] == 0
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])
    assert [b.se_channels for b in spec.blocks()][:3] == [8, 4, 6]  # 0.25 of the block *input* channels
