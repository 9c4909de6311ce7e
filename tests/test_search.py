"""The scaling lab: grid, MAC matching, proxy training, Optuna search with shared storage, study, demo."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from effscale import EffscaleError, NetworkSpec, StageSpec, family_of
from effscale.search import (ProxyBudget, SearchConfig, StudyConfig, load_task, match, run_study, search,
                             train_proxy)
from effscale.search import coefficients as coefficients_module
from effscale.search.coefficients import grid_points, parse_range
from effscale.search.strategies import STRATEGIES, check_targets

MICRO = NetworkSpec(name="micro", stages=(
    StageSpec("mbconv", 1, 3, 2, 2, 8, 0.25), StageSpec("mbconv", 2, 3, 2, 4, 16, 0.25),
    StageSpec("mbconv", 1, 3, 2, 4, 24, 0.25)),
    stem_channels=8, head_channels=64, resolution=32, dropout=0.0, drop_path_rate=0.0, bn_momentum=0.1,
    divisor=4)
BUDGET = ProxyBudget("test", steps=6, batch_size=32, bn_samples=64, eval_samples=128)
GRID = {"alpha_grid": "1.0,1.4", "beta_grid": "1.0,1.2"}  # 3 feasible points at target 2


@pytest.fixture(scope="module")
def task():
    return load_task("fashion-mnist")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- grid and targets ------------------------------------------------------------------------------
def test_grid_solves_gamma_and_drops_infeasible_points():
    assert parse_range("1.0:1.4:0.1", "alpha") == (1.0, 1.1, 1.2, 1.3, 1.4)
    assert parse_range("1, 1.25", "beta") == (1.0, 1.25)
    points = grid_points((1.0, 1.2, 1.4), (1.0, 1.1, 1.2), 2.0)
    for alpha, beta, gamma in points:
        assert gamma >= 1 and alpha * beta ** 2 * gamma ** 2 == pytest.approx(2.0, rel=1e-5)
    assert (1.4, 1.2) not in [(a, b) for a, b, _ in points]  # 1.4 * 1.44 > 2: would need gamma < 1
    assert len(points) == 8


@pytest.mark.parametrize("text, message", [("1.4:1.0:0.1", "STOP >= START"), ("0.9,1.1", "must be >= 1"),
                                           ("", "empty"), ("a:b:c", "START:STOP:STEP")])
def test_bad_grids_name_the_problem(text, message):
    with pytest.raises(EffscaleError, match=message):
        parse_range(text, "alpha")


def test_constraint_that_the_grid_cannot_meet():
    with pytest.raises(EffscaleError, match="smallest alpha\\*beta\\^2 in the grid is 3.375"):
        grid_points((1.5,), (1.5,), 2.0)


@pytest.mark.parametrize("target", [0.5, -1, float("nan"), "x"])
def test_targets_below_one_are_refused(target):
    with pytest.raises(EffscaleError, match="target"):
        check_targets([target])


# -- MAC matching ------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_reach_the_target_macs(strategy):
    m = match(MICRO, strategy, 4, num_classes=10, in_chans=1)
    assert m.matched and abs(m.macs_ratio / 4 - 1) <= 0.05
    assert family_of(m.spec).cost(m.spec, num_classes=10, in_chans=1).macs == m.macs
    base = MICRO
    changed = {"depth": [s.repeats for s in m.spec.stages] != [s.repeats for s in base.stages],
               "width": [s.out_channels for s in m.spec.stages] != [s.out_channels for s in base.stages],
               "resolution": m.spec.resolution != base.resolution}
    if strategy != "compound":  # one dimension only
        assert changed == {k: k == strategy for k in changed}


def test_matching_reports_rather_than_hides_an_unreachable_target():
    shallow = MICRO.replace(stages=tuple(s.__class__(**{**s.__dict__, "repeats": 1}) for s in MICRO.stages))
    m = match(shallow, "depth", 1.5, num_classes=10, in_chans=1)  # a depth step doubles every stage
    assert not m.matched and m.macs_ratio > 1.5 * 1.05
    with pytest.raises(EffscaleError, match="strategy='height' is unknown"):
        match(MICRO, "height", 2)


# -- proxy training ------------------------------------------------------------------------------------
def test_proxy_training_is_deterministic_and_learns(task):
    first = train_proxy(MICRO, task, BUDGET, seed=3)
    again = train_proxy(MICRO, task, BUDGET, seed=3)
    assert first.top1 == again.top1 and first.final_loss == again.final_loss
    assert first.params == sum(p.numel() for p in family_of(MICRO).build(MICRO, 10, 1).parameters())
    longer = train_proxy(MICRO, task, ProxyBudget("longer", steps=60, batch_size=64, eval_samples=500), seed=0)
    assert longer.top1 > 40  # ten classes: chance is 10 %


def test_kind_mismatch_is_refused(task):
    from effscale.series import get_series_spec

    with pytest.raises(EffscaleError, match="takes series inputs but data 'fashion-mnist' is image data"):
        train_proxy(get_series_spec("series_b0"), task, BUDGET)


# -- search --------------------------------------------------------------------------------------------
def _config(out, **changes):
    return SearchConfig(**{"model": None, "base": MICRO, "data": "fashion-mnist", "out": str(out),
                           "budget": BUDGET, "progress": False, **GRID, **changes})


def _complete_points(db: str, study_name: str) -> list[str]:
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}")
    return sorted(t.user_attrs["point"] for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_search_runs_every_grid_point_once_and_resumes(tmp_path, monkeypatch):
    result = search(_config(tmp_path))
    assert {"alpha", "beta", "gamma", "trials"} <= result.keys()
    assert len(result["trials"]) == 3
    assert all({"alpha", "beta", "gamma", "top1", "macs"} <= t.keys() for t in result["trials"])
    best = max(result["trials"], key=lambda t: t["top1"])
    assert (result["alpha"], result["beta"]) == (best["alpha"], best["beta"])
    assert json.loads((tmp_path / "search.json").read_text())["alpha"] == result["alpha"]
    # Run again: everything is complete, nothing is trained.
    monkeypatch.setattr(coefficients_module, "train_proxy", lambda *a, **k: pytest.fail("retrained"))
    assert search(_config(tmp_path))["trials"] == result["trials"]


class Stop(Exception):
    """Stands in for Ctrl-C (pytest reserves KeyboardInterrupt for itself)."""


def test_interrupted_search_keeps_finished_trials_and_resumes(tmp_path, monkeypatch):
    real, calls, stopped = coefficients_module.train_proxy, [], []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and not stopped:
            stopped.append(1)
            raise Stop
        return real(*args, **kwargs)

    monkeypatch.setattr(coefficients_module, "train_proxy", interrupted)
    with pytest.raises(Stop):
        search(_config(tmp_path))
    first = _complete_points(str(tmp_path / "search.db"), "search-micro-t2-test")
    assert len(first) == 1
    calls.clear()
    result = search(_config(tmp_path))
    assert len(calls) == 2 and len(result["trials"]) == 3  # only the two missing points ran
    assert _complete_points(str(tmp_path / "search.db"), "search-micro-t2-test") == sorted(
        t for t in {coefficients_module.point_key(r["alpha"], r["beta"]) for r in result["trials"]})


def test_mismatched_resume_and_bad_storage_fail_before_training(tmp_path, monkeypatch):
    search(_config(tmp_path))
    monkeypatch.setattr(coefficients_module, "train_proxy", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(EffscaleError, match="other settings \\(alphas differ\\)"):
        search(_config(tmp_path, alpha_grid="1.0,1.2", study_name="search-micro-t2-test"))
    with pytest.raises(EffscaleError, match="cannot open the storage 'nosuchdb://x'"):
        search(_config(tmp_path / "b", storage="nosuchdb://x"))
    with pytest.raises(EffscaleError, match="unknown model 'efficientnet_b99'"):
        search(_config(tmp_path / "c", base=None, model="efficientnet_b99"))


# A long grace: a live worker's heartbeat (every second) is never late by 10 minutes, however busy
# the machine; the dead worker's trial is made stale by the test instead (see below).
WORKER = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_search import _config
    from effscale.search import coefficients, search
    if sys.argv[1] == "die":  # SIGKILL ourselves in the middle of the first trial
        coefficients.train_proxy = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    search(_config(sys.argv[2], storage=sys.argv[3], study_name="shared", heartbeat_s=1, grace_s=600))
""")


def _age_heartbeats(db, seconds: int) -> int:
    """Move every recorded heartbeat `seconds` into the past: what a worker that died that long ago
    leaves behind. Optuna keeps one row per running trial in its `trial_heartbeats` table."""
    import sqlite3

    with sqlite3.connect(db) as connection:
        return connection.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, ?)",
                                  (f"-{seconds} seconds",)).rowcount


def _worker(tmp_path, mode: str, out: str, storage: str) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=os.path.dirname(__file__)))
    return subprocess.Popen([sys.executable, str(script), mode, out, storage], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study_and_retry_a_killed_workers_trial(tmp_path):
    db = tmp_path / "shared.db"
    storage = f"sqlite:///{db}"
    dead = _worker(tmp_path, "die", str(tmp_path / "dead"), storage)
    assert dead.wait(timeout=120) == -9  # killed mid-trial: its trial stays RUNNING in the study
    # Its death is the event; staleness is Optuna's judgement from the heartbeat. Rather than wait out
    # a grace short enough to also catch a live worker slowed by a busy machine, date the dead one's
    # last beat past the grace.
    assert _age_heartbeats(db, 3600) == 1
    workers = [_worker(tmp_path, "work", str(tmp_path / f"w{i}"), storage) for i in range(2)]
    for worker in workers:
        output = worker.communicate(timeout=300)[0]
        assert worker.returncode == 0, output
    import optuna
    from optuna.trial import TrialState

    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    complete = sorted(t.user_attrs["point"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == sorted(set(complete)) and len(complete) == 3  # none lost, none duplicated
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["point"] in complete  # the killed trial, retried


# -- study -----------------------------------------------------------------------------------------------
def test_study_writes_rows_report_and_plots_and_resumes(tmp_path, monkeypatch):
    config = StudyConfig(model=None, base=MICRO, data="fashion-mnist", out=str(tmp_path), targets=(2,), seeds=2,
                         budget=BUDGET, progress=False)
    result = run_study(config)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(rows) == 2 * (1 + len(STRATEGIES))
    for row in rows:
        assert {"strategy", "target", "macs", "macs_ratio", "params", "top1", "seed", "latency_ms"} <= row.keys()
        assert row["latency_ms"] > 0
    assert {r["seed"] for r in rows} == {0, 1}
    assert all(abs(r["macs_ratio"] / 2 - 1) <= 0.05 for r in rows if r["strategy"] != "base" and r["matched"])
    report = (tmp_path / "report.md").read_text()
    assert "## Outcome" in report and "accuracy_vs_macs.png" in report
    for name in ("accuracy_vs_macs.png", "accuracy_vs_latency.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert len(result["summary"]) == 1 + len(STRATEGIES)
    from effscale.search import study as study_module

    monkeypatch.setattr(study_module, "train_proxy", lambda *a, **k: pytest.fail("retrained"))
    assert len(run_study(config)["rows"]) == len(rows)
    with pytest.raises(EffscaleError, match="other settings"):
        run_study(StudyConfig(model=None, base=MICRO.replace(head_channels=32), data="fashion-mnist",
                              out=str(tmp_path), targets=(2,), budget=BUDGET, progress=False))


def test_series_family_through_search_and_study(tmp_path):
    from effscale.series import get_series_spec

    base = get_series_spec("series_b0")
    result = search(SearchConfig(model=None, base=base, data="synthetic-series", out=str(tmp_path / "s"),
                                 budget=BUDGET, progress=False, alpha_grid="1.0", beta_grid="1.0,1.2"))
    assert len(result["trials"]) == 2
    # each recorded top-1 is what training that trial's spec gives (the proxy is deterministic in its
    # seed), not a placeholder: a lost or mixed-up result fails here
    import optuna
    from optuna.trial import TrialState

    from effscale.series import SeriesSpec

    task = load_task("synthetic-series")
    trials = optuna.load_study(study_name=result["study_name"], storage=result["storage"]).get_trials(
        states=(TrialState.COMPLETE,))
    recorded = {t["number"]: t["top1"] for t in result["trials"]}
    assert len({t.user_attrs["spec"] for t in trials}) == 2
    for trial in trials:
        again = train_proxy(SeriesSpec.from_text(trial.user_attrs["spec"]), task, BUDGET, seed=0)
        assert recorded[trial.number] == trial.value == again.top1
    study = run_study(StudyConfig(model=None, base=base, data="synthetic-series", out=str(tmp_path / "t"),
                                  targets=(2,), budget=BUDGET, progress=False, strategies=("compound", "resolution")))
    lengths = {r["strategy"]: r["resolution"] for r in study["rows"]}
    assert lengths["resolution"] > lengths["base"]  # resolution is the sequence length here


# -- command line ------------------------------------------------------------------------------------
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "effscale", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def test_cli_search_json_and_errors(tmp_path, capsys):
    spec = tmp_path / "micro.txt"
    spec.write_text(MICRO.to_text())
    done = _cli("search", "--model", str(spec), "--data", "fashion-mnist", "--budget", "tiny", "--alpha-grid", "1.0",
                "--beta-grid", "1.0,1.2", "--out", str(tmp_path / "out"), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {"alpha", "beta", "gamma", "trials"} <= data.keys() and len(data["trials"]) == 2
    from effscale.cli import main

    for args, message in [(("--target", "0.5"), "target 0.5 must be"),
                          (("--alpha-grid", "1.5", "--beta-grid", "1.5"), "no grid point meets"),
                          (("--alpha-grid", "1.4:1.0:0.1"), "alpha grid"),
                          (("--storage", "nosuchdb://x"), "cannot open the storage")]:
        capsys.readouterr()
        code = main(["search", "--model", str(spec), "--data", "fashion-mnist", "--budget", "tiny",
                     "--out", str(tmp_path / "bad"), *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_demo_runs_end_to_end_on_a_tiny_setting(tmp_path, monkeypatch):
    from effscale.search import demo as demo_module
    from effscale.weights import model_from_file

    monkeypatch.setattr(demo_module, "QUICK", demo_module.DemoSettings(budget="tiny", alpha_grid="1.0",
                                                                         beta_grid="1.0,1.2", targets=(2,)))
    monkeypatch.setattr(demo_module, "SHIP_TIMING", {"budget_s": 0.2, "passes": 1})  # ratios not asserted
    from effscale.hardware import run_profile

    device = run_profile(_tiny=True, progress=False).save(tmp_path / "device.json")
    result = demo_module.run_demo(tmp_path, quick=True, progress=False, device=str(device),
                                  latency_ms=1000.0)
    assert result["plan"]["fits"] and result["chosen"]["strategy"] == "planned"
    report = (tmp_path / "report.md").read_text()
    for heading in ("1. Coefficient search", "2. The family", "3. Best model under a latency budget",
                    "4. Weights", "effscale search", "effscale study"):
        assert heading in report
    assert result["chosen"]["latency_ms"] <= result["latency_budget_ms"] and "effscale plan" in report
    model = model_from_file(result["weights"])
    assert model.num_classes == 10 and model.in_chans == 1
    assert (tmp_path / "search.png").exists() and (tmp_path / "study" / "accuracy_vs_macs.png").exists()
    shipped = result["shipped"]  # step 5: the pick shipped INT8 beside fp32, with drop and speed-up
    assert "5. Shipped: INT8 against fp32" in report
    if "skipped" not in shipped:
        from effscale.export import load_exported, read_manifest

        accuracy = shipped["accuracy"]
        assert accuracy["samples"] > 0 and accuracy["drop"] == pytest.approx(
            accuracy["fp32_top1"] - accuracy["int8_top1"], abs=0.011)
        assert read_manifest(shipped["int8_dir"])["precision"] == "int8"
        assert load_exported(shipped["int8_dir"]).spec == model.spec
        assert [r["batch"] for r in shipped["timings"]] == [1, 32]
        assert all(r["speedup"] == pytest.approx(r["fp32_ms"] / r["int8_ms"]) for r in shipped["timings"])
        assert f"drop {accuracy['drop']:.2f} points" in report and "effscale quantize" in report
    recorded = json.loads((tmp_path / "demo.json").read_text())["peak_rss_bytes"]
    assert recorded == result["peak_rss_bytes"] and 50e6 < recorded < 1e12  # torch alone is > 50 MB


def test_latency_pick_takes_the_best_member_that_fits():
    from effscale.search.demo import pick_under_latency

    rows = [{"strategy": "base", "target": 1, "seed": 0, "latency_ms": 1.0, "top1": 70, "macs": 1},
            {"strategy": "compound", "target": 2, "seed": 0, "latency_ms": 2.0, "top1": 75, "macs": 2},
            {"strategy": "compound", "target": 4, "seed": 0, "latency_ms": 4.0, "top1": 74, "macs": 4},
            {"strategy": "width", "target": 2, "seed": 0, "latency_ms": 1.5, "top1": 90, "macs": 2}]
    assert pick_under_latency(rows, 5.0)["target"] == 2  # best accuracy, not the biggest
    assert pick_under_latency(rows, 1.9)["strategy"] == "base"  # width is not a family member
    with pytest.raises(EffscaleError, match="the smallest model takes 1.00 ms here"):
        pick_under_latency(rows, 0.5)


def test_a_spectrum_report_bounds_gamma_from_below(tmp_path):
    needed = math.ceil(1.3 * MICRO.resolution)  # the data needs 1.3x the base's input for 95 % of its energy
    report = {"sources": [{"source": "fashion-mnist", "min_resolution": {"95": needed, "99": needed}}]}
    (tmp_path / "spectrum.json").write_text(json.dumps(report))
    result = search(_config(tmp_path / "run", spectrum=str(tmp_path)))
    assert result["gamma_min"] == pytest.approx(needed / MICRO.resolution)
    assert [(t["alpha"], t["beta"]) for t in result["trials"]] == [(1.0, 1.0)]  # the only point with gamma >= 1.3
    assert f"needs {needed} px" in result["gamma_min_reason"]
    with pytest.raises(EffscaleError, match="no grid point has gamma that high"):
        search(_config(tmp_path / "other", spectrum=str(tmp_path), alpha_grid="1.2,1.4", beta_grid="1.0,1.1"))
    with pytest.raises(EffscaleError, match="analyses fashion-mnist, textures, not 'idx:x'"):
        from effscale.analysis.spectrum import gamma_floor
        report["sources"].append({"source": "textures", "min_resolution": {"95": 64}})
        (tmp_path / "spectrum.json").write_text(json.dumps(report))
        gamma_floor(tmp_path, "idx:x", 32, 2.0)
