"""Device profiles: schema and validation, mismatch warnings, the three latency predictors on
synthetic profiles whose timings follow a known law, prepare / measure_latency, a real tiny
profile and the `effscale profile` command."""
import json
import math
import time
import warnings

import pytest
import torch

import effscale
from effscale import EffscaleError
from effscale.cli import main
from effscale.hardware import (DeviceProfile, ProfileMismatchWarning, load_profile, machine_description,
                               measure_latency, network_units, prepare, run_profile)
from effscale.hardware.latency import LayerTable, fit_affine, fit_calibration, fit_nonnegative
from effscale.hardware.microbench import InContextTimer, Plan, grid_units, pool_units, shape_key
from effscale.nn.inference import InplaceSqueezeExcite

B0 = effscale.get_spec("efficientnet_b0")


def scaled(width, resolution, depth=1.0):
    return effscale.scale(B0, effscale.Coefficients(depth=depth, width=width), resolution=resolution,
                          name=f"w{width}-r{resolution}-d{depth}")


# A known per-kind law: fixed overhead + time per MAC + time per byte, different for every kind.
def law(unit):
    seed = sum(map(ord, unit.kind))
    return 0.01 + (seed % 7) * 1e-3 + unit.macs * (1 + seed % 5) * 1e-9 + unit.bytes * (1 + seed % 3) * 1e-9


NETWORK_SCALE, NETWORK_OVERHEAD = 1.3, 0.7
MEMBERS = [scaled(0.5, 96), scaled(0.75, 128, 0.8), scaled(1.0, 160), scaled(1.25, 192, 1.2)]


def synthetic_profile(unit_time=law, member_time=None, **overrides) -> DeviceProfile:
    plan = Plan(widths=(0.5, 1.0, 1.5), resolutions=(96, 160, 224), members=(), grid_budget_s=0,
                member_budget_s=0, peak_budget_s=0, passes=1, matmul_size=0, conv_size=(0, 0), bandwidth_mib=0)
    layers = [{**u.to_dict(), "median_ms": unit_time(u)} for u in grid_units(plan, "fp32")]
    if member_time is None:
        def member_time(spec):
            return NETWORK_SCALE * sum(law(u) for u in network_units(spec)) + NETWORK_OVERHEAD
    members = []
    for spec in MEMBERS:
        t = member_time(spec)
        members.append({"name": spec.name, "spec": spec.to_text(), "batch": 1, "macs": effscale.cost(spec).macs,
                        "median_ms": t, "p25_ms": t, "p75_ms": t})
    fields = dict(machine=machine_description(), threads=1, precision="fp32", channels_last=True,
                  peak_flops=1e11, bandwidth=2e10, layers=layers, members=members, affine=fit_affine(members),
                  calibration=fit_calibration(LayerTable.fit(layers), members, "fp32"), quick=True,
                  created="2026-01-01T00:00:00+00:00")
    fields.update(overrides)
    return DeviceProfile(**fields)


@pytest.fixture(scope="module")
def profile():
    return synthetic_profile()


# -- predictors ----------------------------------------------------------------------------------
def test_fit_nonnegative_recovers_coefficients_and_clips_negative_ones():
    features = [[1.0, x, x * x] for x in (1.0, 2.0, 3.0, 5.0)]
    assert fit_nonnegative(features, [2 + 3 * x + 0.5 * x * x for _, x, _ in features]) == pytest.approx(
        [2, 3, 0.5])
    # The best unconstrained fit has a negative intercept; the constrained one drops it.
    coef = fit_nonnegative([[1.0, x] for x in (1.0, 2.0, 4.0)], [0.5, 1.5, 3.5])
    assert coef[0] == 0 and coef[1] > 0


def test_units_cover_the_analytic_cost_exactly():
    spec = scaled(0.75, 200, 1.3)
    units = network_units(spec, batch=2, precision="bf16")
    c = effscale.cost(spec, batch=2, dtype="bf16")
    assert sum(u.macs for u in units) == c.macs
    assert sum(u.bytes for u in units) == c.bytes_read + c.bytes_written
    kinds = {u.kind for u in units}
    assert kinds == {"conv_k3_s2", "pointwise", "pointwise_act", "depthwise_k3_s1", "depthwise_k3_s2",
                     "depthwise_k5_s1", "depthwise_k5_s2", "se", "residual", "classifier"}
    assert units[0].kind == "conv_k3_s2" and units[-1].kind == "classifier" and units[-1].out_channels == 1000
    assert sum(u.kind == "se" for u in units) == spec.num_blocks


def test_lut_recovers_a_linear_law_on_held_out_specs(profile):
    assert profile.calibration == pytest.approx({"scale": NETWORK_SCALE, "overhead_ms": NETWORK_OVERHEAD})
    for spec in (scaled(0.8, 136, 1.1), scaled(1.4, 216, 0.7), effscale.get_spec("efficientnet_b1")):
        expected = NETWORK_SCALE * sum(law(u) for u in network_units(spec)) + NETWORK_OVERHEAD
        assert profile.predict_latency(spec, method="lut") == pytest.approx(expected, rel=1e-6)
    assert profile.predict_latency(B0) == profile.predict_latency(B0, method="lut")  # the default


def test_lut_returns_measurements_on_measured_shapes_and_interpolates_between():
    # Timings no per-kind linear model fits: the table must still reproduce every measured shape.
    def bumpy(unit):
        return law(unit) * (1.5 if unit.in_channels % 16 else 0.8)

    table = LayerTable.fit(synthetic_profile(unit_time=bumpy).layers)
    units = grid_units(Plan(widths=(0.5, 1.0, 1.5), resolutions=(96, 160, 224), members=(), grid_budget_s=0,
                            member_budget_s=0, peak_budget_s=0, passes=1, matmul_size=0, conv_size=(0, 0), bandwidth_mib=0), "fp32")
    for unit in units[::7]:
        assert table.predict_unit(unit) == pytest.approx(bumpy(unit), rel=1e-9)
    # Between two measured resolutions of one layer the prediction lies between their times.
    low, high = (next(u for u in units if u.kind == "depthwise_k5_s1" and u.in_channels == 672 and u.hw == side)
                 for side in (6, 10))
    middle = type(low)(**{**low.to_dict(), "hw": 8, "macs": (low.macs + high.macs) // 2,
                          "bytes": (low.bytes + high.bytes) // 2})
    assert bumpy(low) < table.predict_unit(middle) < bumpy(high)


def test_affine_recovers_its_law():
    def affine_law(spec):
        return 4.0 * effscale.cost(spec).macs / effscale.cost(B0).macs + 1.5

    p = synthetic_profile(member_time=affine_law)
    assert p.affine["slope_ms"] == pytest.approx(4.0) and p.affine["intercept_ms"] == pytest.approx(1.5)
    spec = scaled(1.3, 280, 1.4)
    assert p.predict_latency(spec, method="affine") == pytest.approx(affine_law(spec))
    assert p.predict_latency(spec, batch=4, method="affine") == pytest.approx(
        4.0 * effscale.cost(spec, batch=4).macs / effscale.cost(B0).macs + 1.5)


@pytest.mark.parametrize("precision, itemsize", [("fp32", 4), ("bf16", 2)])
def test_roofline_arithmetic(precision, itemsize):
    p = synthetic_profile(precision=precision, peak_flops=2e11, bandwidth=1e10)
    spec = scaled(0.5, 96)
    expected = 0.0
    for row in effscale.cost(spec, batch=3).layers:
        moved = (row.bytes_read + row.bytes_written) / 4 * itemsize
        expected += max(2 * row.macs / 2e11, moved / 1e10)
    assert p.predict_latency(spec, batch=3, method="roofline") == pytest.approx(expected * 1e3)


def test_bad_prediction_arguments(profile):
    with pytest.raises(EffscaleError, match="'lutt' is unknown; did you mean lut"):
        profile.predict_latency(B0, method="lutt")
    with pytest.raises(EffscaleError, match="batch=0"):
        profile.predict_latency(B0, batch=0)
    with pytest.raises(TypeError, match="got int 42"):  # a wrong type is a TypeError naming it (issue 9)
        profile.predict_latency(42)
    assert profile.predict_latency("efficientnet_b0") == profile.predict_latency(B0)


# -- schema -------------------------------------------------------------------------------------
def test_round_trip(profile, tmp_path):
    path = profile.save(tmp_path / "sub" / "device.json")
    data = json.loads(path.read_text())
    assert list(data)[0] == "version" and data["version"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # measured "here": no mismatch warning
        loaded = load_profile(path)
    assert loaded == profile and loaded.compatibility() == []
    assert loaded.predict_latency(B0) == pytest.approx(profile.predict_latency(B0))


def _write(tmp_path, data, name="p.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("text, message", [
    ('{"version": 1, "machine": {', "is not valid JSON"),
    ("", "is empty"),
    ("\x00\x01binary", "is not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
])
def test_corrupt_files(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(EffscaleError, match=message) as error:
        load_profile(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(EffscaleError, match="does not exist.*effscale profile"):
        load_profile(tmp_path / "nope.json")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("bandwidth"), "field 'bandwidth' is missing"),
    (lambda d: d.update(version=2), "profile version 2 is not supported .*reads version 1"),
    (lambda d: d.update(version="1"), 'profile version "1" is not supported'),
    (lambda d: d.update(threads="4"), "field 'threads' must be an integer >= 1, got \"4\""),
    (lambda d: d.update(threads=True), "field 'threads' must be an integer"),
    (lambda d: d.update(precision="fp16"), "field 'precision' must be one of fp32, bf16"),
    (lambda d: d.update(peak_flops=-1), "field 'peak_flops' must be a number > 0"),
    (lambda d: d.update(channels_last="yes"), "field 'channels_last' must be true or false"),
    (lambda d: d.update(layers=[]), "field 'layers' must be a non-empty list"),
    (lambda d: d["layers"][3].update(median_ms=0), r"layers\[3\]: field 'median_ms' must be a number > 0"),
    (lambda d: d["layers"][0].pop("kind"), r"layers\[0\]: field 'kind' is missing"),
    (lambda d: d["members"][1].update(spec="nonsense"), r"members\[1\]: field 'spec' must be a spec text"),
    (lambda d: d["machine"].pop("cpu"), "machine: field 'cpu' is missing"),
    (lambda d: d["affine"].update(slope_ms=None), "affine: field 'slope_ms' must be a finite number"),
    (lambda d: d.update(extra=1), "unknown field 'extra'"),
])
def test_validation_names_the_field(profile, tmp_path, change, message):
    data = profile.to_dict()
    change(data)
    with pytest.raises(EffscaleError, match=message):
        load_profile(_write(tmp_path, data))


def test_non_finite_number_is_rejected(profile, tmp_path):
    text = json.dumps(profile.to_dict()).replace('"bandwidth": 20000000000.0', '"bandwidth": NaN')
    with pytest.raises(EffscaleError, match=r"field 'bandwidth' must be a number > 0 \(bytes/s\), got nan"):
        load_profile(_write(tmp_path, text))


# -- mismatch warnings --------------------------------------------------------------------------
def test_warns_about_requested_threads_and_precision(profile, tmp_path):
    path = profile.save(tmp_path / "p.json")
    with pytest.warns(ProfileMismatchWarning, match="measured with 1 threads, this run uses 2"):
        load_profile(path, threads=2)
    with pytest.warns(ProfileMismatchWarning, match="measured in fp32, this run uses bf16"):
        load_profile(path, precision="bf16")
    with pytest.raises(EffscaleError, match="precision='fp16' is unknown; allowed: fp32, bf16, int8"):
        load_profile(path, precision="fp16")


def test_warns_about_another_machine(profile, tmp_path):
    data = profile.to_dict()
    data["machine"].update(cpu="Some Other CPU", torch="1.0")
    data["threads"] = 4096
    with pytest.warns(ProfileMismatchWarning) as caught:
        loaded = load_profile(_write(tmp_path, data))
    messages = [str(w.message) for w in caught]
    assert any("measured on 'Some Other CPU'" in m for m in messages)
    assert any("measured with torch 1.0" in m for m in messages)
    assert any("4096 threads, this machine has only" in m for m in messages)
    assert len(loaded.compatibility()) == 3


# -- running as profiled ------------------------------------------------------------------------
TINY = scaled(0.25, 32, 0.5)


@pytest.mark.parametrize("precision, channels_last", [("fp32", True), ("bf16", True), ("fp32", False)])
def test_prepare_runs_the_model_as_profiled(precision, channels_last):
    profile = synthetic_profile(precision=precision, channels_last=channels_last)
    torch.manual_seed(0)
    model = prepare(TINY, profile, num_classes=10)
    torch.manual_seed(0)
    reference = effscale.create_model(TINY, num_classes=10).eval()
    assert not model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # folded
    assert any(type(m) is InplaceSqueezeExcite for m in model.modules())
    weight = model.stem.conv.weight
    assert weight.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        out, expected = model(x), reference(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, rtol=0.05 if precision == "bf16" else 1e-4,
                          atol=0.05 if precision == "bf16" else 1e-4)


def test_measure_latency_uses_the_profiles_settings():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled(),
                         x.is_contiguous(memory_format=torch.channels_last), tuple(x.shape)))
            return x.sum()

    before = torch.get_num_threads()
    profile = synthetic_profile(threads=before + 1)
    m = measure_latency(Probe(), profile, batch=2, repeats=3, warmup=1, resolution=8)
    assert torch.get_num_threads() == before
    assert len(m.samples) == 3 and len(seen) == 4
    assert set(seen) == {(before + 1, True, True, (2, 3, 8, 8))}
    assert m.p25_ms <= m.median_ms <= m.p75_ms
    with pytest.raises(EffscaleError, match="needs resolution="):
        measure_latency(Probe(), profile)


def test_measure_latency_of_a_spec_is_adaptive():
    profile = synthetic_profile()
    m = measure_latency(TINY, profile, budget_s=0.05)
    assert len(m.samples) >= 5 and m.median_ms > 0
    with pytest.raises(EffscaleError, match="repeats=0"):
        measure_latency(TINY, profile, repeats=0)


# -- a real (tiny) profile and the command line --------------------------------------------------
def test_run_profile_tiny_is_real_and_loadable(tmp_path):
    profile = run_profile(threads=1, quick=True, progress=False, _tiny=True)
    assert profile.threads == 1 and profile.quick and profile.machine == machine_description()
    assert profile.peak_flops > 1e8 and profile.bandwidth > 1e8
    kinds = {row["kind"] for row in profile.layers}
    assert {"conv_k3_s2", "pointwise", "pointwise_act", "depthwise_k3_s1", "depthwise_k3_s2", "depthwise_k5_s1",
            "depthwise_k5_s2", "se", "residual", "classifier"} <= kinds
    assert all(row["median_ms"] > 0 for row in profile.layers) and len(profile.members) == 2
    loaded = load_profile(profile.save(tmp_path / "tiny.json"), threads=1, precision="fp32")
    for method in ("lut", "affine", "roofline"):
        assert math.isfinite(loaded.predict_latency(TINY, method=method)) and loaded.predict_latency(TINY) > 0
    with pytest.raises(EffscaleError, match="precision='fp16' is not one the torch profile measures"):
        run_profile(precision="fp16", progress=False, _tiny=True)
    with pytest.raises(EffscaleError, match="threads=0"):
        run_profile(threads=0, progress=False, _tiny=True)


def test_in_context_timer_times_every_unit_inside_the_network():
    timer = InContextTimer(TINY, synthetic_profile())
    assert [u.kind for u in timer.units] == [u.kind for u in network_units(TINY)]
    with torch.inference_mode():
        timer()  # warm-up: not committed
        start = time.perf_counter()
        timer()
        wall_ms = (time.perf_counter() - start) * 1e3
    timer.commit()
    assert all(len(s) == 1 and s[0] > 0 for s in timer.samples)
    assert sum(s[0] for s in timer.samples) < wall_ms  # nested parts (residual = block - children) not double-counted
    pooled = pool_units([timer, timer])
    assert len(pooled) == len({shape_key(u) for u in timer.units}) < len(timer.units)
    repeated = next(m for u, m in pooled if u.kind == "residual")
    assert len(repeated.samples) >= 2  # every occurrence of a shape, in both timers


def test_cli_profile_json_and_show(tmp_path, capsys):
    out = tmp_path / "device.json"
    assert main(["profile", "--tiny", "--threads", "1", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == 1 and printed == json.loads(out.read_text())
    assert main(["profile", "--show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert str(out) in shown and "tiny-a" in shown and "lut" in shown


def test_cli_corrupt_profile_is_one_line_exit_2(tmp_path, capsys):
    bad = _write(tmp_path, '{"version": 1, "threads": ')
    assert main(["profile", "--show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("effscale: error: profile ") and str(bad) in err
