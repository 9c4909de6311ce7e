"""The 1-D time-series family: spec, scaling, module, analytic cost and the synthetic task."""
import math
import random
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from effscale import Coefficients, EffscaleError, Scalable
from effscale.series import (CLASS_NAMES, DEFAULT_NUM_CLASSES, MIN_LENGTH, SERIES, SERIES_B0, SeriesSpec, SeriesStage,
                             get_series_spec, list_series_models, load_series_task_data, make_series_data, resample,
                             scale_series, series_cost, series_inputs)
from effscale.spec import make_divisible


def random_spec(rng: random.Random) -> SeriesSpec:
    stages = tuple(SeriesStage("mbconv", rng.randint(1, 3), rng.choice((1, 3, 5, 7)), rng.choice((1, 2)),
                               rng.choice((1, 2, 3.5, 4, 6)), rng.randint(3, 40), rng.choice((0.0, 0.25, 0.5)),
                               scale_depth=rng.random() < 0.8)
                   for _ in range(rng.randint(1, 5)))
    return SeriesSpec(name=f"random{rng.randint(0, 999)}", stages=stages, stem_channels=rng.randint(4, 24),
                      stem_kernel=rng.choice((1, 3, 5, 7)), head_channels=rng.randint(8, 96),
                      resolution=rng.randint(MIN_LENGTH, 300),
                      activation=rng.choice(("swish", "relu", "relu6", "gelu")),
                      dropout=round(rng.random() * 0.5, 3), drop_path_rate=rng.random() * 0.3,
                      bn_eps=rng.choice((1e-3, 1e-5)), bn_momentum=rng.choice((0.1, 0.01, 1.0)),
                      divisor=rng.choice((1, 4, 8)))


# -- spec, text form, protocol --------------------------------------------------------------
def test_text_round_trips_for_the_family_and_random_specs():
    rng = random.Random(0)
    specs = [get_series_spec(name) for name in list_series_models()] + [random_spec(rng) for _ in range(40)]
    for spec in specs:
        text = spec.to_text()
        assert text.splitlines()[0].startswith(f"series {spec.name} len={spec.resolution} ")
        assert len(text.splitlines()) == 1 + len(spec.stages)
        assert SeriesSpec.from_text(text) == spec


def test_series_spec_is_a_scalable_series_family():
    assert isinstance(SERIES_B0, Scalable)
    assert SERIES_B0.kind == "series" and SERIES_B0.length == SERIES_B0.resolution == 128
    assert DEFAULT_NUM_CLASSES == len(CLASS_NAMES)
    cost = SERIES.cost(SERIES_B0)
    assert 30_000 <= cost.params <= 80_000 and cost.length == 128
    assert len(SERIES_B0.stages) == 5


@pytest.mark.parametrize("changes, message", [
    (dict(resolution=8), "must be an integer >= 16"),
    (dict(dropout=1.0), "dropout=1.0 must be in [0, 1)"),
    (dict(bn_momentum=0), "bn_momentum=0 must be in (0, 1]"),
    (dict(stem_kernel=4), "stem_kernel=4 must be an odd integer"),
    (dict(activation="tanh"), "allowed: swish, relu6, relu, gelu"),
    (dict(stages=()), "at least one stage"),
    (dict(name="two words"), "no spaces"),
    (dict(kernel_size=3), "unknown spec field 'kernel_size'"),
])
def test_invalid_specs_name_the_value_and_the_allowed_range(changes, message):
    with pytest.raises(EffscaleError, match=re.escape(message)):
        SERIES_B0.replace(**changes)


def test_stage_rows_and_text_errors():
    with pytest.raises(EffscaleError, match="'fused_mbconv' is not available for series; allowed: mbconv"):
        SeriesStage("fused_mbconv", 1, 3, 1, 4, 16)
    with pytest.raises(EffscaleError, match="must start with a 'series NAME"):
        SeriesSpec.from_text("network x res=224\nmbconv r1 k3 s1 e1 c16")
    with pytest.raises(EffscaleError, match="'res=64' is unknown; allowed keys: len, stem"):
        SeriesSpec.from_text("series x res=64\nmbconv r1 k3 s1 e1 c16")
    with pytest.raises(EffscaleError, match="'len=abc': 'abc' is not a valid value"):
        SeriesSpec.from_text("series x len=abc\nmbconv r1 k3 s1 e1 c16")


def test_named_specs_and_did_you_mean():
    assert list_series_models() == ["series_b0"]
    assert get_series_spec("series_b0", resolution=256).resolution == 256
    with pytest.raises(EffscaleError, match="did you mean series_b0"):
        get_series_spec("series_bO")


# -- scaling -----------------------------------------------------------------------------------
def test_scaled_rounds_depth_width_and_length_with_the_shared_helpers():
    spec = SERIES_B0.replace(divisor=4)
    scaled = scale_series(spec, Coefficients(depth=1.5, width=1.3, resolution=1.15), name="b0x")
    assert scaled.name == "b0x" and scaled.kind == "series"
    assert [s.repeats for s in scaled.stages] == [math.ceil(s.repeats * 1.5) for s in spec.stages]
    assert [s.out_channels for s in scaled.stages] == [make_divisible(s.out_channels * 1.3, 4) for s in spec.stages]
    assert scaled.stem_channels == make_divisible(spec.stem_channels * 1.3, 4)
    assert scaled.head_channels == make_divisible(spec.head_channels * 1.3, 4)
    assert scaled.resolution == 144  # 147.2 to a multiple of 8
    assert scale_series(spec, Coefficients(resolution=1.15), resolution_multiple=1).resolution == 147
    assert scale_series(spec, Coefficients()).replace(name=spec.name) == spec
    pinned = spec.replace(stages=(spec.stages[0].__class__(repeats=2, scale_depth=False),) + spec.stages[1:])
    assert scale_series(pinned, Coefficients(depth=3)).stages[0].repeats == 2
    assert SeriesSpec.from_text(scaled.to_text()) == scaled


def test_scaled_errors_name_the_minimum_multiplier():
    with pytest.raises(EffscaleError, match=r"minimum is 16 samples\); allowed: 0\.09\d* <= resolution"):
        scale_series(SERIES_B0, Coefficients(resolution=0.05))
    with pytest.raises(EffscaleError, match=r"width=0\.05 leaves .* allowed: 0\.0625 <= width"):
        scale_series(SERIES_B0, Coefficients(width=0.05))
    with pytest.raises(TypeError, match="must be a Coefficients"):
        scale_series(SERIES_B0, (1.2, 1.1, 1.15))
    assert scale_series(SERIES_B0, Coefficients(resolution=0.125)).resolution == MIN_LENGTH


# -- module and analytic cost ------------------------------------------------------------------
def _measured(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(MACs from FlopCounterMode, output elements of every conv and linear layer)."""
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
             for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear))]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    for hook in hooks:
        hook.remove()
    ops = {str(op).split(".")[-1] for op in counter.get_flop_counts()["Global"]}
    assert ops <= {"convolution", "addmm", "mm"}
    return counter.get_total_flops() // 2, sum(outputs)


@pytest.mark.parametrize("seed", range(6))
def test_params_macs_and_activations_are_exact(seed):
    rng = random.Random(seed)
    base = SERIES_B0 if seed < 2 else random_spec(rng)
    spec = scale_series(base, Coefficients(depth=rng.uniform(0.5, 2), width=rng.uniform(0.5, 1.8),
                                    resolution=rng.uniform(0.8, 1.6)), resolution_multiple=rng.choice((1, 8)))
    num_classes, in_chans, batch = rng.choice((0, 2, 8)), rng.randint(1, 3), rng.randint(1, 3)
    model = SERIES.build(spec, num_classes, in_chans).eval()
    cost = series_cost(spec, batch, num_classes=num_classes, in_chans=in_chans)
    assert cost.params == sum(p.numel() for p in model.parameters())
    macs, activations = _measured(model, torch.randn(batch, in_chans, spec.resolution))
    assert (cost.macs, cost.activations) == (macs, activations)
    assert SERIES.cost(spec) == series_cost(spec)


def test_forward_shapes_and_cost_errors():
    model = SERIES.build(SERIES_B0, 5, 2).eval()
    x = torch.randn(3, 2, 100)  # not a multiple of the stride (16)
    with torch.no_grad():
        assert model(x).shape == (3, 5)
        assert model.forward_features(x).shape == (3, SERIES_B0.head_channels, math.ceil(100 / SERIES_B0.stride))
        assert SERIES.build(SERIES_B0, 0).eval()(torch.randn(2, 1, 128)).shape == (2, SERIES_B0.head_channels)
    with pytest.raises(EffscaleError, match="in_chans=0 must be an integer >= 1"):
        SERIES.build(SERIES_B0, 8, 0)
    with pytest.raises(EffscaleError, match="batch=0 must be an integer >= 1"):
        series_cost(SERIES_B0, 0)
    with pytest.raises(EffscaleError, match="takes a SeriesSpec"):
        series_cost("series_b0")


# -- data ----------------------------------------------------------------------------------
def test_data_is_deterministic_balanced_and_typed():
    a = make_series_data(seed=3, n_train=83, n_val=20, native_length=512)
    b = make_series_data(seed=3, n_train=83, n_val=20, native_length=512)
    c = make_series_data(seed=4, n_train=83, n_val=20, native_length=512)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (83, 1, 512) and a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert a.classes == CLASS_NAMES and a.num_classes == 8 and a.in_chans == 1 and a.native_length == 512
    for labels in (a.train_y, a.val_y):
        counts = torch.bincount(labels, minlength=8)
        assert counts.max() - counts.min() <= 1
    assert make_series_data(seed=0, n_train=8, n_val=8, channels=3).val_x.shape == (8, 3, 1024)
    with pytest.raises(EffscaleError, match="channels=0 must be an integer >= 1"):
        make_series_data(channels=0)


def test_task_spec_forms():
    data = load_series_task_data("synthetic-series:seed=2,n=16,val=8")
    assert (len(data.train_y), len(data.val_y), data.seed) == (16, 8, 2)
    assert torch.equal(data.train_x, make_series_data(seed=2, n_train=16, n_val=8).train_x)
    for spec, message in (("fashion-mnist", "is not a series task; allowed: synthetic-series"),
                          ("synthetic-series:", "is not a series task"),
                          ("synthetic-series:size=3", "'size=3' .* is unknown; allowed: synthetic-series"),
                          ("synthetic-series:n=many", "'many' is not an integer"),
                          ("synthetic-series:n=4", "n=4 .* must be >= 8")):
        with pytest.raises(EffscaleError, match=message):
            load_series_task_data(spec)


def _sine(cycles: float, length: int = 1024) -> torch.Tensor:
    t = torch.arange(length, dtype=torch.float64) / length
    return torch.sin(2 * math.pi * cycles * t + 0.3).float().view(1, 1, -1)


def test_resampling_keeps_low_frequencies_and_removes_what_the_short_length_cannot_hold():
    low = resample(_sine(4), 64)
    t = (torch.arange(64, dtype=torch.float64) + 0.5) / 64  # output sample centres
    expected = torch.sin(2 * math.pi * 4 * t + 0.3).float()
    assert (low.flatten() - expected)[4:-4].abs().max() < 0.02  # the ends see the replicated edge
    rms = lambda x: x.pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(resample(_sine(100), 64)) < 0.02  # far above 64 samples' Nyquist (32 cycles)
    assert rms(resample(_sine(100), 512)) > 0.65  # a sine's rms is 0.707
    assert resample(_sine(4), 2048).shape == (1, 1, 2048)


def test_series_inputs_normalise_and_augment_deterministically():
    x = make_series_data(seed=1, n_train=16, n_val=8).train_x
    plain = series_inputs(x, 128, train=False)
    assert plain.shape == (16, 1, 128)
    assert plain.mean(2).abs().max() < 1e-4 and (plain.std(2, correction=0) - 1).abs().max() < 1e-3
    first = series_inputs(x, 128, True, torch.Generator().manual_seed(5))
    assert torch.equal(first, series_inputs(x, 128, True, torch.Generator().manual_seed(5)))
    assert not torch.allclose(first, plain, atol=1e-2)
    with pytest.raises(EffscaleError, match="length=0 must be an integer >= 1"):
        series_inputs(x, 0, train=False)
    with pytest.raises(EffscaleError, match="float tensor N x C x length"):
        series_inputs(x[0], 64, train=False)


# -- it learns -------------------------------------------------------------------------------------
def test_a_short_training_run_beats_chance_clearly():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        data = make_series_data(seed=0, n_train=1024, n_val=256)
        spec = SERIES_B0.replace(resolution=64)
        model = SERIES.build(spec, data.num_classes, data.in_chans)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        for _ in range(60):
            index = torch.randint(len(data.train_y), (64,), generator=generator)
            logits = model(series_inputs(data.train_x[index], spec.resolution, True, generator))
            loss = torch.nn.functional.cross_entropy(logits, data.train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            predictions = model(series_inputs(data.val_x, spec.resolution, False)).argmax(1)
        accuracy = (predictions == data.val_y).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.4, accuracy  # chance is 1/8; five seeds gave 0.54-0.67
