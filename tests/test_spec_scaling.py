"""Spec, scaling rule and the named family against the published numbers (Tan & Le 2019 and the reference implementations)."""
import math
import random

import pytest

import effscale
from effscale import Coefficients, EffscaleError, NetworkSpec, ScalingRule, StageSpec, compound, scale
from effscale.nn import EfficientNet
from effscale.spec import EFFICIENTNET_B0, make_divisible
from effscale.summary import describe

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
    return sum(p.numel() for p in EfficientNet(spec, **kw).parameters())


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
    with pytest.raises(EffscaleError, match=r"width=0\.01 leaves stage 1 of efficientnet_b0 with 0\.16 channels "
                                            r"\(< 1\); allowed: 0\.0625 <= width <= 51\.2"):
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
    ("network x\nmbconv r100000 k3 s1 e1 c16", r"repeats=100000 must be an integer in \[1, 1000\]"),
    ("network x\nmbconv r600 k3 s1 e1 c16\nmbconv r600 k3 s1 e1 c16", "has 1200 blocks; effscale's limit is 1000"),
    ("network x head=9999999\nmbconv r1 k3 s1 e1 c16", "head_channels=9999999 must be <= 65536"),
    ("network x res=99999\nmbconv r1 k3 s1 e1 c16", "resolution=99999 must be <= 8192 px"),
    ("network x dropout=nan\nmbconv r1 k3 s1 e1 c16", "dropout=nan must be in"),
    ("network x\nmbconv r1 k3 s1 e1e9 c16", "expand_ratio=1000000000.0 must be a finite number in"),
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


# -- errors in the user's terms; limits; names accepted by the public API ------------------------------
def test_compound_error_names_phi_then_cause_then_allowed_range():
    with pytest.raises(EffscaleError) as caught:
        compound(EFFICIENTNET_B0, -40)
    message = str(caught.value)
    assert message.startswith("phi=-40 gives the width multiplier beta**phi = 0.02209, which leaves stage 1 of "
                              "efficientnet_b0 with 0.354 channels (< 1); allowed for efficientnet_b0 under "
                              "alpha=1.2, beta=1.1, gamma=1.15: ")
    low, high = effscale.scaling.phi_range(EFFICIENTNET_B0)
    assert f"{low:g} <= phi <= {high:g}" in message
    # the bounds are the real edges: legal at the bound, an error 0.01 past it
    compound(EFFICIENTNET_B0, low), compound(EFFICIENTNET_B0, high)
    for outside in (low - 0.01, high + 0.01):
        with pytest.raises(EffscaleError, match=f"phi={outside:g} "):
            compound(EFFICIENTNET_B0, outside)
    # another rule, another range
    assert effscale.scaling.phi_range(EFFICIENTNET_B0, ScalingRule(1.0, 1.0, 2.0))[0] > low


@pytest.mark.parametrize("phi, cause", [
    (300, r"phi=300 gives the width multiplier beta\*\*phi = 2\.617e\+12, which puts .* channels in the head"),
    (23, r"phi=23 gives the depth multiplier alpha\*\*phi = 66\.25, which makes efficientnet_b0 1063 blocks deep "
         r"\(the limit is 1000\)"),
    (1e308, r"phi=1e\+308 takes alpha\*\*phi, beta\*\*phi or gamma\*\*phi .* out of the range of a float"),
    (-1e308, r"phi=-1e\+308 takes"),
])
def test_huge_phi_is_a_quick_error_naming_the_range(phi, cause):
    import time

    started = time.perf_counter()
    with pytest.raises(EffscaleError, match=cause + r".*allowed for efficientnet_b0 .*: -14\.87 <= phi <= 22\.66"):
        compound(EFFICIENTNET_B0, phi)
    assert time.perf_counter() - started < 2  # it used to build a 1e23-block spec and hang


@pytest.mark.parametrize("coefficients, message", [
    (dict(depth=1e9), r"depth=1e\+09 makes efficientnet_b0 1\.6e\+10 blocks deep \(the limit is 1000\); "
                      r"allowed: depth <= 62\.3"),
    (dict(width=1e200), r"width=1e\+200 puts 1\.28e\+203 channels in the head .*allowed: 0\.0625 <= width <= 51\.2"),
    (dict(resolution=1e300), r"resolution=1e\+300 takes efficientnet_b0's 224 px to 2\.24e\+302 px \(the limit is "
                             r"8192 px\); allowed: 0\.1\d* <= resolution <= 36\.\d"),
])
def test_huge_multipliers_are_errors_naming_the_limit(coefficients, message):
    with pytest.raises(effscale.ScaleLimitError, match=message):
        scale(EFFICIENTNET_B0, Coefficients(**coefficients))
    limit = effscale.scaling.multiplier_range(EFFICIENTNET_B0, next(iter(coefficients)))[1]
    scale(EFFICIENTNET_B0, Coefficients(**{next(iter(coefficients)): limit}))  # the stated limit is legal


def test_public_functions_take_any_model_reference(tmp_path):
    b0 = effscale.get_spec("efficientnet_b0")
    text_file = tmp_path / "b0.txt"
    text_file.write_text(b0.to_text())
    model = effscale.create_model(b0, num_classes=10)
    weights = effscale.save_weights(model, tmp_path / "b0.safetensors")
    for ref in ("efficientnet_b0", b0, str(text_file), text_file, str(weights), model):
        assert effscale.resolve_spec(ref) == b0
        assert effscale.compound(ref, 1.0) == compound(b0, 1.0)
        assert effscale.scale(ref, Coefficients(width=0.5)) == scale(b0, Coefficients(width=0.5))
        assert describe(ref)["spec"] == b0.to_text()
    assert effscale.cost("efficientnet_b0") == effscale.cost(b0) == effscale.cost(text_file)
    assert effscale.cost(model).num_classes == 10  # a built model counts its own head
    assert effscale.resolve_spec("efficientnet_b0", padding="same").padding == "same"
    from effscale.series import SERIES_B0

    assert effscale.compound("series_b0", 1.0) == compound(SERIES_B0, 1.0)


@pytest.mark.parametrize("bad", [3, None, 1.5, b"efficientnet_b0", ["efficientnet_b0"], {"name": "x"}, object()])
def test_wrong_types_are_type_errors_naming_the_type(bad):
    calls = [lambda: effscale.compound(bad, 1.0), lambda: effscale.scale(bad, Coefficients()),
             lambda: effscale.cost(bad), lambda: describe(bad), lambda: effscale.resolve_spec(bad)]
    for call in calls:
        with pytest.raises(TypeError, match=f"got {type(bad).__name__}"):
            call()
    # the pure functions of scaling.py take specs only, and say so (not AttributeError)
    with pytest.raises(TypeError, match="compound\\(\\) takes a NetworkSpec .* got str"):
        effscale.scaling.compound("efficientnet_b0", 1.0)
    with pytest.raises(TypeError, match="got float"):
        effscale.scale("efficientnet_b0", 2.0)
    with pytest.raises(TypeError, match="rule=ScalingRule"):
        effscale.compound("efficientnet_b0", 1.0, (1.2, 1.1, 1.15))


@pytest.mark.parametrize("ref, message", [
    ("/", "'/' is a directory; give a model name"), ("/dev/null", "is not a regular file"),
    ("missing/net.txt", "spec file 'missing/net.txt' does not exist"), ("", "is empty"),
    ("efficientnet_b9", "did you mean efficientnet_b8"),
])
def test_references_that_name_nothing_are_effscale_errors(ref, message):
    with pytest.raises(EffscaleError, match=message):
        effscale.resolve_spec(ref)
