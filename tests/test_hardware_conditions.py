"""Profiles that know how quiet the machine was, predictions re-anchored to the machine as it is now,
and energy budgets that step down like latency ones."""
import json
import subprocess
import sys
import time
import warnings

import pytest

from effscale import EffscaleError, NetworkSpec, cost
from effscale.hardware import budgets, load_profile, run_profile
from effscale.hardware.conditions import CpuReading, assess, member_spread, others_between, sample_others
from effscale.hardware.plan import plan
from effscale.hardware.profile import DeviceProfile, ProfileInterferenceWarning

TINY = NetworkSpec.from_text("""
network tiny res=32 stem=16 head=128 act=swish dropout=0.1 drop_path=0
mbconv r1 k3 s1 e1 c16 se0.25
mbconv r2 k3 s2 e6 c24 se0.25
""")
QUIET = {"threads": 2, "others_cores": 0.01, "steal_fraction": 0.0, "load_avg_end": 2.0, "member_spread": 0.03,
         "peak_flops_start": 100e9, "peak_flops_end": 98e9, "nominal_peak_flops": 160e9}
BURN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"


@pytest.fixture(scope="module")
def tiny_profile():
    with warnings.catch_warnings():  # the suite's own processes may count as interference here
        warnings.simplefilter("ignore", ProfileInterferenceWarning)
        return run_profile(threads=1, _tiny=True, progress=False)


@pytest.fixture
def burner():
    """A pure-Python busy loop in another process: one core's worth of 'other processes'."""
    process = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=20)])
    time.sleep(0.3)  # let it start running
    yield process
    process.kill()
    process.wait()


# -- interference ------------------------------------------------------------------------------------
def test_quiet_readings_have_no_problems_and_each_sign_is_named():
    assert assess(QUIET) == []
    busy = assess({**QUIET, "others_cores": 1.1, "load_avg_end": 3.1})
    assert len(busy) == 1 and "other processes used 1.10 CPU cores" in busy[0] and "load average 3.10" in busy[0]
    assert "steal" in assess({**QUIET, "steal_fraction": 0.2})[0]
    assert "spread by 40%" in assess({**QUIET, "member_spread": 0.4})[0]
    assert "from 100 G at the start to 60 G at the end" in assess({**QUIET, "peak_flops_end": 60e9})[0]
    assert "16% of this CPU's nominal" in assess({**QUIET, "peak_flops_start": 25e9, "peak_flops_end": 25e9})[0]


def test_other_processes_cpu_time_is_busy_minus_our_own():
    before = CpuReading(wall_s=10.0, busy_s=100.0, steal_s=1.0, own_s=5.0, cpus=2)
    after = CpuReading(wall_s=12.0, busy_s=104.0, steal_s=1.2, own_s=7.0, cpus=2)  # we used 2 of the 4 s
    seen = others_between(before, after)
    assert seen["others_cores"] == pytest.approx(1.0) and seen["steal_fraction"] == pytest.approx(0.05)
    assert member_spread([{"median_ms": 10, "p25_ms": 9, "p75_ms": 11}, {"median_ms": 2, "p25_ms": 1.9,
                                                                         "p75_ms": 2.1}]) == pytest.approx(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_busy_process_is_seen_and_strict_refuses_before_measuring(burner):
    assert sample_others(0.5)["others_cores"] > 0.5
    with pytest.raises(EffscaleError, match="other processes are using .* CPU cores right now.*nothing was measured"):
        run_profile(threads=1, _tiny=True, progress=False, strict=True)


def test_profile_records_conditions_and_load_warns_about_a_busy_one(tiny_profile, tmp_path):
    assert {"others_cores", "member_spread", "peak_flops_start", "peak_flops_end", "problems"} <= \
        set(tiny_profile.conditions)
    data = tiny_profile.to_dict()
    data["conditions"] = {**data["conditions"], "problems": ["other processes used 1.20 CPU cores"]}
    busy = tmp_path / "busy.json"
    busy.write_text(json.dumps(data))
    with pytest.warns(ProfileInterferenceWarning, match="busy machine .*1.20 CPU cores"):
        load_profile(busy)
    del data["conditions"]  # a profile from before conditions were recorded still loads, silently
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileInterferenceWarning)
        assert load_profile(old).conditions is None


def test_a_profile_with_an_unknown_layer_kind_is_refused(tiny_profile, tmp_path):
    data = tiny_profile.to_dict()
    data["layers"][0] = {**data["layers"][0], "kind": "transformer_block"}
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(data))
    with pytest.raises(EffscaleError, match=r"layers\[0\]: field 'kind' must be a unit kind.*got \"transformer_block\""):
        load_profile(path)


# -- re-anchoring ------------------------------------------------------------------------------------
def test_reanchor_scales_fitted_predictions_by_measured_over_profiled(tiny_profile):
    # The profile claims its networks took twice what they take: re-timed now, the factor is ~1/2.
    data = tiny_profile.to_dict()
    data["members"] = [{**m, "median_ms": 2 * m["median_ms"], "p25_ms": 2 * m["p25_ms"], "p75_ms": 2 * m["p75_ms"]}
                       for m in data["members"]]
    slow = DeviceProfile(**data)
    anchored = slow.reanchor(budget_s=0.05)
    factor = anchored.anchor.factor
    assert 0.2 < factor < 0.8, anchored.anchor.describe()
    assert [m["name"] for m in anchored.anchor.members] == [m["name"] for m in sorted(slow.members,
                                                                                        key=lambda m: m["macs"])][:2]
    for method in ("lut", "affine"):
        assert anchored.predict_latency(TINY, method=method) == pytest.approx(factor * slow.predict_latency(TINY, method=method))
    assert anchored.predict_latency(TINY, method="roofline") == slow.predict_latency(TINY, method="roofline")
    assert slow.anchor is None and "anchor" not in anchored.to_dict()  # a run-time state, never saved
    planned = plan(anchored, latency_ms=1e3, base=TINY, verify=False)  # a level far from 1 is pointed out
    assert any(note.startswith(f"this machine runs {factor:.2f}x the profiled time now") for note in planned.notes)


def test_plan_reanchors_and_records_it_unless_told_not_to(tiny_profile):
    budget = 1e3 * tiny_profile.predict_latency(TINY)
    anchored = plan(tiny_profile, latency_ms=budget, base=TINY, verify=False)
    assert anchored.anchor["factor"] > 0 and len(anchored.anchor["members"]) == 2
    assert anchored.to_dict()["anchor"] == anchored.anchor
    plain = plan(tiny_profile, latency_ms=budget, base=TINY, verify=False, anchor=False)
    assert plain.anchor is None and any("not re-anchored" in note for note in plain.notes)


# -- energy ------------------------------------------------------------------------------------------
def test_a_frozen_rapl_counter_measures_nothing(tmp_path, tiny_profile, monkeypatch):
    monkeypatch.setattr(budgets, "RAPL_MIN_SECONDS", 0.0)
    package = tmp_path / "intel-rapl:0"
    package.mkdir()
    (package / "energy_uj").write_text("1000\n")  # never advances
    (package / "max_energy_range_uj").write_text("100000\n")
    counter = budgets.RaplCounter(tmp_path)
    with pytest.raises(EffscaleError, match="did not advance over 3 calls"):
        budgets.rapl_energy(lambda: None, counter, min_seconds=0, min_calls=3)
    energy = budgets.energy_per_inference(TINY, tiny_profile, rapl_root=tmp_path)
    assert energy.method == "analytic" and "did not advance" in energy.note


def test_a_measured_energy_overshoot_steps_down_like_latency(monkeypatch, tiny_profile):
    def rapl_three_times_analytic(spec, profile, *, batch=1, **kwargs):
        analytic = budgets.analytic_energy(spec, profile, batch=batch)
        return budgets.EnergyEstimate(total_mj=3 * analytic.total_mj, method="rapl", batch=batch)

    monkeypatch.setattr(budgets, "energy_per_inference", rapl_three_times_analytic)
    first_choice = plan(tiny_profile, energy_mj=2.0, base=TINY, verify=False, anchor=False)
    result = plan(tiny_profile, energy_mj=2.0, base=TINY, anchor=False)
    assert result.fits and result.energy.method == "rapl" and result.energy.total_mj <= 2.0
    assert len(result.attempts) >= 2 and result.attempts[0]["name"] == first_choice.name
    assert result.attempts[0]["energy_mj"] > 2.0 and not result.attempts[0]["fits"]
    assert cost(result.spec).macs < first_choice.macs


def test_an_unwritable_spec_out_fails_before_any_work(tiny_profile, monkeypatch, tmp_path):
    from effscale.hardware import profile as profile_module

    monkeypatch.setattr(profile_module.DeviceProfile, "reanchor", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(EffscaleError, match="spec_out '/nonexistent-folder/x.spec': folder '/nonexistent-folder' "
                                            "does not exist"):
        plan(tiny_profile, latency_ms=5.0, base=TINY, spec_out="/nonexistent-folder/x.spec")
    with pytest.raises(EffscaleError, match="is a folder"):
        plan(tiny_profile, latency_ms=5.0, base=TINY, spec_out=tmp_path)
