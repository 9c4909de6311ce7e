"""`effscale demo`: the whole instrument on the bundled data, in minutes on a laptop CPU.

1. search alpha, beta, gamma (target 2) around the lab's scaled-down B0, with the proxy recipe;
2. the family phi = 0..3 under the found rule, trained briefly, and the same MACs reached by
   depth-only, width-only and resolution-only scaling (a study at targets 2, 4, 8 = phi 1, 2, 3);
3. the best of those models under a latency budget on this machine, checked by measurement;
4. its weights, ready for `effscale predict` / `effscale eval`, and a report with the commands
   that reproduce every number;
5. that model shipped: exported fp32 and INT8 (OpenVINO + NNCF where installed, else ONNX Runtime)
   with the INT8 accuracy drop on the held-out split and the speed-up over fp32 on the same
   runtime (export/compare.py). Skipped, and said so in the report, without the export extra.
Every step writes its results as it goes; running the demo again with the same --out resumes.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EffscaleError

DATA = "fashion-mnist"
SHIP_TIMING = {"budget_s": 2.0, "passes": 4}  # step 5's fp32 / INT8 timing (export/compare.py)


@dataclass(frozen=True)
class DemoSettings:
    budget: str
    alpha_grid: str
    beta_grid: str
    targets: tuple
    seeds: int = 1


FULL = DemoSettings(budget="quick", alpha_grid="1.0,1.15,1.3", beta_grid="1.0,1.1", targets=(2, 4, 8))
QUICK = DemoSettings(budget="short", alpha_grid="1.0,1.4", beta_grid="1.0,1.2", targets=(2, 4))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pick_under_latency(rows: list[dict], latency_ms: float) -> dict:
    """The family member (base or compound row) with the best top-1 among those whose measured
    latency fits; a clear error naming the fastest one when none fits."""
    family = sorted((r for r in rows if r["strategy"] in ("base", "compound") and r["seed"] == 0),
                    key=lambda r: r["target"])
    fitting = [r for r in family if r["latency_ms"] <= latency_ms]
    if not fitting:
        fastest = min(family, key=lambda r: r["latency_ms"])
        raise EffscaleError(f"no family member fits {latency_ms:g} ms: the smallest model takes "
                            f"{fastest['latency_ms']:.2f} ms here")
    return max(fitting, key=lambda r: (r["top1"], -r["macs"]))


def plan_with_profile(device, budget_ms: float, rows: list[dict], rule, base, task, settings,
                      weights_path: Path, progress: bool):
    """The hardware planner on the found rule and the study's accuracy rows; trains its pick.
    `device` is a profile path or a loaded DeviceProfile."""
    from ..hardware import load_profile
    from ..hardware.plan import plan
    from ..spec import NetworkSpec
    from .proxy import train_proxy
    from .study import _save_model

    profile = load_profile(device) if isinstance(device, (str, Path)) else device  # a path, or loaded already
    planned = plan(profile, latency_ms=budget_ms, base=base, rule=rule, accuracy=rows,
                   verify=True, progress=progress).to_dict()
    spec = NetworkSpec.from_text(planned["spec"])
    result, model = train_proxy(spec, task, settings.budget, seed=0, split="test", return_model=True)
    weights = _save_model(model, task, weights_path)
    base_macs = next(r["macs"] for r in rows if r["strategy"] == "base")
    chosen = {"strategy": "planned", "target": round(result.macs / base_macs, 3), "macs": result.macs,
              "params": result.params, "top1": result.top1, "latency_ms": planned["measured_ms"],
              "resolution": spec.resolution, "spec": planned["spec"], "weights": weights}
    return chosen, planned


DEFAULT_TIME_BUDGET_S = {False: 600.0, True: 120.0}  # the promise: 10 minutes, --quick about 2


def _size_to_machine(settings: DemoSettings, time_budget_s: float, device: str | None, record: Path):
    """Time a few proxy steps here and scale the settings down to fit the time budget (sizing.py).

    The sizing is kept in `record`: a demo run again into the same folder resumes with the same
    settings (timing noise must not change the budget under a half-finished study)."""
    from dataclasses import replace

    from .family import fit_to_task, lab_base
    from .sizing import Sizing, size_demo
    from .task import load_task

    if record.is_file():
        try:
            saved = json.loads(record.read_text())
            if saved.get("time_budget_s") == time_budget_s and saved.get("defaults") == settings.__dict__ | {
                    "targets": list(settings.targets)}:
                sizing = Sizing(budget=saved["budget"], targets=tuple(saved["targets"]), estimated_s=saved["estimated_s"],
                                step_s=dict(saved["step_s"]), notes=tuple(saved["notes"]) + ("resumed",), seconds=0.0)
                return replace(settings, budget=sizing.budget, targets=sizing.targets), sizing
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: size again
    task = load_task(DATA)
    search_points = len(settings.alpha_grid.split(",")) * len(settings.beta_grid.split(","))
    sizing = size_demo(fit_to_task(lab_base(), task), task, budget_name=settings.budget, targets=settings.targets,
                       seeds=settings.seeds, search_points=search_points, time_budget_s=time_budget_s,
                       extra_runs=1 if device else 0)
    record.write_text(json.dumps({**sizing.to_dict(), "time_budget_s": time_budget_s,
                                  "defaults": settings.__dict__ | {"targets": list(settings.targets)}}) + "\n")
    return replace(settings, budget=sizing.budget, targets=sizing.targets), sizing


def run_demo(out: str | Path | None = None, *, quick: bool = False, latency_ms: float | None = None,
             device: str | None = None, progress: bool = True, time_budget_s: float | None = None,
             ship: bool = True) -> dict:
    """The demo (module docstring). `time_budget_s` (default 600, `quick` 120): the proxy budget and
    targets are scaled down to finish within it on this machine (sizing.py; 0 or less is refused,
    None the default); the result's `sizing` says what was scaled down.
    `ship=False` skips step 5 (INT8)."""
    from .coefficients import SearchConfig, rule_from, search
    from .family import LAB_BASE
    from .study import StudyConfig, measure_latency_ms, run_study

    settings = QUICK if quick else FULL
    out = Path(out or ("effscale-demo-quick" if quick else "effscale-demo"))
    if latency_ms is not None and not latency_ms > 0:
        raise EffscaleError(f"latency budget {latency_ms!r} ms must be > 0")
    if time_budget_s is None:
        time_budget_s = DEFAULT_TIME_BUDGET_S[bool(quick)]
    elif isinstance(time_budget_s, bool) or not isinstance(time_budget_s, (int, float)) or not time_budget_s > 0:
        raise EffscaleError(f"time budget {time_budget_s!r} s must be a number > 0 (default "
                            f"{DEFAULT_TIME_BUDGET_S[bool(quick)]:g})")
    profile = None
    if device:  # a missing or broken profile is an error now, not after minutes of searching and training
        from ..hardware import load_profile

        profile = load_profile(device)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings = {}

    _say(f"[0/5] sizing the demo to this machine (time budget {time_budget_s:g} s)")
    settings, sizing = _size_to_machine(settings, float(time_budget_s), device, out / "sizing.json")
    probes = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in sizing.step_s.items() if k != "base")
    _say(f"      a proxy step takes {sizing.step_s['base'] * 1e3:.0f} ms here (~4x MACs by {probes}); "
         + (f"scaled down: {'; '.join(sizing.notes)}" if sizing.notes else "nothing scaled down")
         + f"; estimated {sizing.estimated_s:.0f} s")
    timings["sizing"] = sizing.seconds

    _say(f"[1/5] searching alpha, beta, gamma around {LAB_BASE} on {DATA} (budget {settings.budget})")
    step = time.perf_counter()
    found = search(SearchConfig(model=LAB_BASE, data=DATA, out=str(out / "search"), target=2.0,
                                budget=settings.budget, alpha_grid=settings.alpha_grid,
                                beta_grid=settings.beta_grid, progress=progress))
    rule = rule_from(found)
    timings["search"] = time.perf_counter() - step
    _say(f"      best: alpha={rule.alpha:g} beta={rule.beta:g} gamma={rule.gamma:.4g} "
         f"(top-1 {found['top1']:.2f} % on minival)")

    targets = ",".join(f"{t:g}" for t in settings.targets)
    _say(f"[2/5] family phi=0..{len(settings.targets)} and single-dimension scaling at {targets}x MACs")
    step = time.perf_counter()
    study_command = _command("study", "--model", LAB_BASE, "--data", DATA, "--targets", targets,
                             "--seeds", str(settings.seeds), "--budget", settings.budget, "--alpha", f"{rule.alpha:g}",
                             "--beta", f"{rule.beta:g}", "--gamma", f"{rule.gamma:.6g}", "--out", str(out / "study"))
    study = run_study(StudyConfig(model=LAB_BASE, data=DATA, out=str(out / "study"), targets=settings.targets,
                                  seeds=settings.seeds, budget=settings.budget, rule=rule, progress=progress,
                                  command=study_command, keep_weights=("base", "compound")))
    timings["study"] = time.perf_counter() - step

    _say("[3/5] best model under a latency budget on this machine")
    step = time.perf_counter()
    base_row = next(r for r in study["rows"] if r["strategy"] == "base")
    budget_ms = latency_ms if latency_ms is not None else round(2.0 * base_row["latency_ms"], 3)
    from ..spec import NetworkSpec
    from .family import fit_to_task, lab_base
    from .task import load_task

    task = load_task(DATA)
    planned = None
    if device:
        chosen, planned = plan_with_profile(profile, budget_ms, study["rows"], rule, fit_to_task(lab_base(), task),
                                            task, settings, out / "study" / "models" / "planned.safetensors",
                                            progress)
        spec = NetworkSpec.from_text(chosen["spec"])
        remeasured, fits = planned["measured_ms"], bool(planned["fits"])
    else:
        chosen = pick_under_latency(study["rows"], budget_ms)
        spec = NetworkSpec.from_text(chosen["spec"])
        remeasured = measure_latency_ms(spec, task)
        fits = remeasured <= budget_ms
    timings["plan"] = time.perf_counter() - step
    _say(f"      {spec.name}: {chosen['macs'] / 1e6:.2f} M MACs, {chosen['latency_ms']:.2f} ms "
         f"(re-measured {remeasured:.2f} ms; budget {budget_ms:g} ms{'' if fits else ': OVER it now'}), "
         f"top-1 {chosen['top1']:.2f} %")

    _say("[4/5] weights")
    weights = Path(chosen["weights"])
    final = out / "model.safetensors"
    final.write_bytes(weights.read_bytes())
    (out / "model_spec.txt").write_text(chosen["spec"] + "\n")
    (out / "base_spec.txt").write_text(fit_to_task(lab_base(), task).to_text() + "\n")
    step = time.perf_counter()
    shipped = _ship_int8(final, out / "shipped") if ship else {"skipped": "ship=False (--no-ship)"}
    timings["ship"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started
    result = {
        "out": str(out), "quick": quick, "settings": settings.__dict__, "sizing": sizing.to_dict(),
        "time_budget_s": time_budget_s, "rule": {"alpha": rule.alpha,
                                                                               "beta": rule.beta, "gamma": rule.gamma},
        "search": found, "study": {k: study[k] for k in ("rows", "summary", "budget", "targets", "seeds")},
        "latency_budget_ms": budget_ms, "chosen": {**{k: chosen[k] for k in ("strategy", "target", "macs", "params",
                                                                             "top1", "latency_ms", "resolution")},
                                                   "remeasured_ms": remeasured, "fits": fits, "name": spec.name},
        "weights": str(final), "seconds": {k: round(v, 1) for k, v in timings.items()},
        "peak_rss_bytes": peak_rss_bytes(),
        "plan": planned, "device": device, "shipped": shipped,
        "commands": {
            "search": _command("search", "--model", LAB_BASE, "--data", DATA, "--target", "2", "--budget",
                               settings.budget, "--alpha-grid", settings.alpha_grid, "--beta-grid",
                               settings.beta_grid, "--out", str(out / "search")),
            "study": study_command,
            "demo": _command("demo", *(["--quick"] if quick else []), "--out", str(out),
                             "--time-budget", f"{time_budget_s:g}",
                             *(["--latency-ms", f"{latency_ms:g}"] if latency_ms is not None else []),
                             *(["--device", device] if device else [])),
            "plan": _command("plan", "--device", device or "device.json", "--latency-ms", f"{budget_ms:g}",
                             "--base", str(out / "base_spec.txt"), "--alpha", f"{rule.alpha:g}", "--beta",
                             f"{rule.beta:g}", "--gamma", f"{rule.gamma:.6g}", "--accuracy-from",
                             str(out / "study" / "results.json")),
            "eval": _command("eval", str(final), "--data", DATA),
            "quantize": _command("quantize", str(final), "--format", shipped.get("format") or "openvino", "--calib",
                                 DATA, "--out", str(out / "shipped" / "int8")),
            "train_longer": _command("train", "--model", str(out / "model_spec.txt"), "--data", DATA,
                                     "--out", str(out / "trained")),
        },
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    from .report import write_demo_report

    result["report"] = str(write_demo_report(result, out, study_dir=out / "study"))
    _say(f"done in {timings['total']:.0f} s: {result['report']}")
    return result


def _ship_int8(weights: Path, out: Path) -> dict:
    """Step 5: the chosen model exported fp32 and INT8, accuracy drop and speed-up (export/compare.py)."""
    from ..export.compare import available_format, int8_versus_fp32

    format = available_format()
    if format is None:
        from ..export.runtimes import EXTRA_HINT

        _say(f"[5/5] INT8: skipped (the export extra is not installed: {EXTRA_HINT})")
        return {"skipped": f"the export extra is not installed ({EXTRA_HINT})"}
    _say(f"[5/5] shipping it: fp32 and INT8 {format} artifacts, accuracy drop and speed-up")
    shipped = int8_versus_fp32(weights, out, DATA, format=format, **SHIP_TIMING)
    accuracy, fast = shipped["accuracy"], shipped["timings"]
    _say(f"      INT8 top-1 {accuracy['int8_top1']:.2f} % vs fp32 {accuracy['fp32_top1']:.2f} % (drop "
         f"{accuracy['drop']:.2f} points on {accuracy['samples']} held-out images); speed-up over fp32 on "
         f"{shipped['runtime']}: " + ", ".join(f"{r['speedup']:.2f}x at batch {r['batch']}" for r in fast))
    return shipped


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size so far (getrusage ru_maxrss), in bytes; None where the
    platform has no getrusage. The demo runs in one process (no subprocesses), so this is its peak,
    plus whatever the process held before `run_demo` was called (for `effscale demo`: the imports)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes; Linux, BSDs: KiB


def _command(*args: str) -> str:
    return "effscale " + " ".join(shlex.quote(a) for a in args)


