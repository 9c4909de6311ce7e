"""Search alpha, beta, gamma on your base and data, through Optuna and its storage.

The paper's procedure (Tan & Le 2019, sec. 3.3): fix phi = 1, so the scaled model costs
`target` (2) times the base, and search alpha (depth) and beta (width) over a small grid,
gamma (resolution) solved from alpha * beta^2 * gamma^2 = target, keeping alpha, beta,
gamma >= 1. Every candidate is trained with the same proxy recipe and ranked by top-1 on a
minival split carved from the training data. A sampler mode (Optuna's TPE) explores the same
constrained space without a grid.

Trials live in an Optuna storage: a SQLite file in the output directory by default, any
SQLAlchemy URL otherwise, so several `effscale search` processes (or machines) given the same
`--storage` and `--study-name` share the work. Guarantees, in grid mode:
- every grid point ends with exactly one COMPLETE trial: points are enqueued once (under a
  file lock for SQLite), a worker that draws a point another worker already finished or is
  running prunes its trial as a duplicate, and the study stops when every point is complete;
- a killed worker's trial stops sending heartbeats, is marked failed once stale, and is
  re-enqueued (Optuna's RetryFailedTrialCallback) for another worker;
- a stopped search, run again with the same arguments, resumes: complete trials are kept and
  only missing points run.
Candidates that round to the same spec are trained once; the others reuse that result.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EffscaleError, require
from ..progress import ProgressBar
from ..scaling import Coefficients, ScalingRule, scale_any
from .family import fit_to_task, resolve_base
from .proxy import get_budget, train_proxy
from .strategies import LAB_RESOLUTION_MULTIPLE, check_targets, macs_of
from .task import load_task

GRIDS = {  # default (alpha range, beta range) per budget, as "start:stop:step"
    "tiny": ("1.0:1.4:0.4", "1.0:1.2:0.2"),
    "short": ("1.0:1.4:0.4", "1.0:1.2:0.2"),
    "quick": ("1.0:1.4:0.2", "1.0:1.2:0.1"),
    "standard": ("1.0:1.4:0.1", "1.0:1.3:0.05"),
}
SAMPLERS = ("grid", "tpe")
HEARTBEAT_S = 10
GRACE_S = 30
MAX_RETRY = 3


def parse_range(text: str, name: str) -> tuple[float, ...]:
    """'1.0:1.4:0.1' -> (1.0, 1.1, 1.2, 1.3, 1.4); '1.0,1.2,1.35' -> those values."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = tuple(round(start + i * step, 6) for i in range(count))
        else:
            values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EffscaleError(f"{name} grid {text!r} must be START:STOP:STEP with STEP > 0 and STOP >= START, "
                            "or a comma-separated list of numbers") from None
    if not values:
        raise EffscaleError(f"{name} grid {text!r} is empty; give START:STOP:STEP or a list of numbers")
    bad = [v for v in values if not math.isfinite(v) or v < 1]
    if bad:
        raise EffscaleError(f"{name} grid {text!r} has {bad[0]:g} < 1; {name} must be >= 1")
    return values


def solve_gamma(alpha: float, beta: float, target: float) -> float:
    return math.sqrt(target / (alpha * beta ** 2))


def grid_points(alphas, betas, target: float) -> list[tuple[float, float, float]]:
    """(alpha, beta, gamma) with gamma solved from the constraint; points needing gamma < 1 dropped."""
    points = [(a, b, round(solve_gamma(a, b, target), 6)) for a in alphas for b in betas]
    feasible = [p for p in points if p[2] >= 1 - 1e-9]
    if not feasible:
        smallest = min(a * b * b for a in alphas for b in betas)
        raise EffscaleError(f"no grid point meets alpha*beta^2*gamma^2 = {target:g} with gamma >= 1: the smallest "
                            f"alpha*beta^2 in the grid is {smallest:.3f} > {target:g}; lower the alpha/beta grids "
                            "or raise --target")
    return [(a, b, max(1.0, g)) for a, b, g in feasible]


def point_key(alpha: float, beta: float) -> str:
    return f"a{alpha:.4f}-b{beta:.4f}"


@dataclass
class SearchConfig:
    model: str
    data: str
    out: str
    phi: float | None = None
    target: float = 2.0
    budget: str = "quick"
    sampler: str = "grid"
    trials: int | None = None  # tpe: complete trials wanted
    alpha_grid: str | None = None
    beta_grid: str | None = None
    storage: str | None = None
    study_name: str | None = None
    seed: int = 0
    heartbeat_s: int = HEARTBEAT_S
    grace_s: int = GRACE_S
    progress: bool = True
    base: object = field(default=None, repr=False)  # a Scalable, instead of `model`
    spectrum: str | None = None  # a spectrum report (analyze spectrum): bounds gamma from below


def _open_storage(url: str, heartbeat_s: int, grace_s: int):
    optuna = require("optuna", "lab")
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and stale-trial retry are marked experimental; they are what makes workers safe to kill.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except Exception as error:  # SQLAlchemy raises many kinds; all mean "cannot open"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EffscaleError(f"cannot open the storage {url!r}: {first}") from None


@contextlib.contextmanager
def _enqueue_lock(url: str):
    """A file lock next to a SQLite database, so two workers starting together enqueue once."""
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
    if not path:
        yield
        return
    import fcntl

    with open(path + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CoefficientSearch:
    """One worker of a search; `run()` works until the study is done and returns the result."""

    def __init__(self, config: SearchConfig):
        self.config = config
        self.budget = get_budget(config.budget)
        if config.sampler not in SAMPLERS:
            raise EffscaleError(f"sampler={config.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
        (self.target,) = check_targets([config.target])
        if config.sampler == "tpe" and (not isinstance(config.trials, int) or config.trials < 1):
            raise EffscaleError(f"trials={config.trials!r}: the tpe sampler needs --trials N (an integer >= 1)")
        if config.sampler == "grid" and config.trials is not None:
            raise EffscaleError(f"trials={config.trials!r} applies to the tpe sampler only; the grid sampler runs every "
                                "grid point once (set its size with --alpha-grid / --beta-grid, or use --sampler tpe)")
        default_alpha, default_beta = GRIDS[self.budget.name] if self.budget.name in GRIDS else GRIDS["quick"]
        self.alphas = parse_range(config.alpha_grid or default_alpha, "alpha")
        self.betas = parse_range(config.beta_grid or default_beta, "beta")
        self.points = grid_points(self.alphas, self.betas, self.target)
        self.base = resolve_base(config.base if config.base is not None else config.model, config.phi)
        self.task = load_task(config.data, seed=config.seed)
        self.task.check_spec(self.base)
        self.base = fit_to_task(self.base, self.task)
        self.gamma_min, self.gamma_reason = self._gamma_floor()
        self.candidates = {point_key(a, b): self._candidate(a, b, g) for a, b, g in self.points}
        self._check_trainable()
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.storage_url = config.storage or f"sqlite:///{(self.out / 'search.db').resolve()}"
        self.study_name = config.study_name or f"search-{self.base.name}-t{self.target:g}-{self.budget.name}" + (
            f"-gmin{self.gamma_min:.3f}" if self.gamma_reason else "")  # a bounded search is another study
        self.storage = _open_storage(self.storage_url, config.heartbeat_s, config.grace_s)
        self.study = self._open_study()

    # -- set-up ----------------------------------------------------------------------------------
    def _gamma_floor(self) -> tuple[float, str | None]:
        """With --spectrum: the least gamma the data's spectrum calls for; grid points below it are
        dropped (the tpe sampler's alpha and beta ranges shrink to match)."""
        if not self.config.spectrum:
            return 1.0, None
        from ..analysis.spectrum import gamma_floor
        from ..spec import NetworkSpec

        if not isinstance(self.base, NetworkSpec):
            raise EffscaleError(f"--spectrum bounds an image model's resolution; {self.base.name} is not an image "
                                "network")
        floor, why = gamma_floor(self.config.spectrum, self.config.data, self.base.resolution, self.target)
        kept = [p for p in self.points if p[2] >= floor - 1e-6]
        if not kept:
            raise EffscaleError(f"--spectrum: {why}, and no grid point has gamma that high (largest "
                                f"{max(p[2] for p in self.points):.3f}); lower the alpha / beta grids")
        self.points = kept
        return floor, why

    def _candidate(self, alpha: float, beta: float, gamma: float):
        spec = scale_any(self.base, Coefficients(alpha, beta, gamma), name=f"{self.base.name}-a{alpha:g}-b{beta:g}",
                         resolution_multiple=LAB_RESOLUTION_MULTIPLE)
        return spec

    def _check_trainable(self) -> None:
        """Refuse, before any training, a base whose candidates (about `target` x its MACs) are
        beyond what effscale trains (MAX_TRAIN_MACS)."""
        from ..spec import check_trainable_macs

        check_trainable_macs(macs_of(self.base, self.task.num_classes, self.task.in_chans) * self.target,
                             f"the candidates of {self.base.name} at target {self.target:g} have about",
                             "per example", "use a smaller base (or --phi) or target")

    def fingerprint(self) -> dict:
        return {"base": self.base.to_text(), "data": self.config.data, "target": self.target,
                "budget": self.budget.to_dict(), "seed": self.config.seed, "sampler": self.config.sampler,
                "alphas": list(self.alphas), "betas": list(self.betas)}

    def _open_study(self):
        import optuna

        sampler = (optuna.samplers.TPESampler(seed=self.config.seed) if self.config.sampler == "tpe"
                   else optuna.samplers.RandomSampler(seed=self.config.seed))
        study = optuna.create_study(storage=self.storage, study_name=self.study_name, direction="maximize",
                                    sampler=sampler, load_if_exists=True)
        with _enqueue_lock(self.storage_url):
            stored = study.user_attrs.get("fingerprint")
            mine = json.loads(json.dumps(self.fingerprint()))
            if stored is None:
                study.set_user_attr("fingerprint", mine)
            elif stored != mine:
                differing = sorted(k for k in mine if stored.get(k) != mine[k])
                raise EffscaleError(f"study {self.study_name!r} in {self.storage_url} was created with other "
                                    f"settings ({', '.join(differing)} differ); resume it with the same arguments "
                                    "or choose another --study-name")
        return study

    # -- the work ----------------------------------------------------------------------------------
    def _trials(self, *states):
        return self.study.get_trials(deepcopy=False, states=states or None)

    def _enqueue_missing(self) -> None:
        """Enqueue every grid point without a complete, waiting or running trial (or a recorded error)."""
        from optuna.trial import TrialState

        with _enqueue_lock(self.storage_url):
            covered = set()
            for trial in self._trials():
                alive = trial.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
                if "point" in trial.user_attrs and (alive or "error" in trial.user_attrs):
                    covered.add(trial.user_attrs["point"])
            for alpha, beta, _ in self.points:
                if point_key(alpha, beta) not in covered:
                    self.study.enqueue_trial({"alpha": alpha, "beta": beta},
                                             user_attrs={"point": point_key(alpha, beta)})

    def _objective(self, trial):
        import optuna
        from optuna.trial import TrialState

        if self.config.sampler == "grid":
            if "point" not in trial.user_attrs:  # the queue ran dry after our check: not a grid point
                trial.set_user_attr("placeholder", True)
                raise optuna.TrialPruned("no grid point waiting")
            # Enqueued values come back fixed from suggest_*.
            alpha = trial.suggest_float("alpha", min(self.alphas), max(self.alphas))
            beta = trial.suggest_float("beta", min(self.betas), max(self.betas))
        else:
            room = self.target / self.gamma_min ** 2  # alpha * beta^2 may use at most this
            alpha = trial.suggest_float("alpha", min(self.alphas), max(min(self.alphas), min(max(self.alphas), room)))
            beta_high = min(max(self.betas), math.sqrt(room / alpha))
            fraction = trial.suggest_float("beta_fraction", 0.0, 1.0)
            beta = round(min(self.betas) + fraction * max(0.0, beta_high - min(self.betas)), 4)
            alpha = round(alpha, 4)
        gamma = max(self.gamma_min, solve_gamma(alpha, beta, self.target))
        key = point_key(alpha, beta)
        trial.set_user_attr("point", key)
        if self.config.sampler == "grid":
            for other in self._trials(TrialState.COMPLETE, TrialState.RUNNING):
                if other.number != trial.number and other.user_attrs.get("point") == key and (
                        other.state == TrialState.COMPLETE or other.number < trial.number):
                    trial.set_user_attr("duplicate_of", other.number)
                    raise optuna.TrialPruned(f"grid point {key} is already taken by trial {other.number}")
        # Optuna's heartbeat thread writes its first beat asynchronously; a worker killed before it
        # would leave a RUNNING trial that never goes stale. Beat once now, before any work.
        self.storage.record_heartbeat(trial._trial_id)
        spec = self.candidates.get(key) or self._candidate(alpha, beta, gamma)
        text = spec.to_text()
        attrs = {"alpha": alpha, "beta": beta, "gamma": round(gamma, 6), "spec": text,
                 "resolution": spec.resolution}
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        for other in self._trials(TrialState.COMPLETE):
            if other.user_attrs.get("spec") == text:  # rounds to a spec already trained
                for name in ("macs", "params", "seconds"):
                    trial.set_user_attr(name, other.user_attrs.get(name))
                trial.set_user_attr("same_spec_as", other.number)
                return other.value
        try:
            result = train_proxy(spec, self.task, self.budget, seed=self.config.seed, split="minival")
        except EffscaleError as error:
            trial.set_user_attr("error", str(error))
            raise optuna.TrialPruned(str(error)) from None
        for name in ("macs", "params", "seconds"):
            trial.set_user_attr(name, getattr(result, name))
        return result.top1

    def _status(self) -> tuple[set, int, int]:
        from optuna.trial import TrialState

        done = {t.user_attrs.get("point") for t in self._trials(TrialState.COMPLETE)}
        done |= {t.user_attrs.get("point") for t in self._trials(TrialState.PRUNED) if "error" in t.user_attrs}
        return done, len(self._trials(TrialState.WAITING)), len(self._trials(TrialState.RUNNING))

    def run(self) -> dict:
        from optuna.storages import fail_stale_trials

        with ProgressBar(self.config.progress, label="search") as bar:
            progress = bar.task("search", total=self._total())
            if self.config.sampler == "grid":
                self._enqueue_missing()
                wanted = {point_key(a, b) for a, b, _ in self.points}
                while True:
                    fail_stale_trials(self.study)  # a dead worker's trial -> failed -> re-enqueued
                    done, waiting, running = self._status()
                    progress.update(len(done & wanted))
                    if wanted <= done:
                        break
                    if waiting == 0:
                        if running == 0:
                            self._enqueue_missing()
                        else:
                            time.sleep(min(2.0, self.config.heartbeat_s))
                        continue
                    self.study.optimize(self._objective, n_trials=1, gc_after_trial=False)
            else:
                from optuna.study import MaxTrialsCallback
                from optuna.trial import TrialState

                while len(self._trials(TrialState.COMPLETE)) < self.config.trials:
                    self.study.optimize(self._objective, n_trials=1, callbacks=[
                        MaxTrialsCallback(self.config.trials, states=(TrialState.COMPLETE,))])
                    progress.update(len(self._trials(TrialState.COMPLETE)))
        return self.result()

    def _total(self) -> int:
        return len(self.points) if self.config.sampler == "grid" else self.config.trials

    def result(self) -> dict:
        from optuna.trial import TrialState

        rows = []
        for trial in self._trials(TrialState.COMPLETE):
            a = trial.user_attrs
            rows.append({"number": trial.number, "alpha": a["alpha"], "beta": a["beta"], "gamma": a["gamma"],
                         "top1": trial.value, "macs": a.get("macs"), "params": a.get("params"),
                         "resolution": a.get("resolution"), "seconds": a.get("seconds"),
                         "same_spec_as": a.get("same_spec_as")})
        failed = [{"number": t.number, "point": t.user_attrs.get("point"), "error": t.user_attrs["error"]}
                  for t in self._trials(TrialState.PRUNED) if "error" in t.user_attrs]
        if not rows:
            raise EffscaleError(f"study {self.study_name!r} has no complete trial"
                                + (f"; first error: {failed[0]['error']}" if failed else ""))
        rows.sort(key=lambda r: (-r["top1"], r["macs"] or 0))
        base_macs = macs_of(self.base, self.task.num_classes, self.task.in_chans)
        for row in rows:
            row["macs_ratio"] = round(row["macs"] / base_macs, 4) if row["macs"] else None
        best = rows[0]
        result = {"alpha": best["alpha"], "beta": best["beta"], "gamma": best["gamma"], "top1": best["top1"],
                  "target": self.target, "base": self.base.name, "base_macs": base_macs, "data": self.config.data,
                  "budget": self.budget.name, "sampler": self.config.sampler, "storage": self.storage_url,
                  "study_name": self.study_name, "trials": rows, "failed": failed,
                  **({"gamma_min": round(self.gamma_min, 6), "gamma_min_reason": self.gamma_reason}
                     if self.gamma_reason else {})}
        (self.out / "search.json").write_text(json.dumps(result, indent=2) + "\n")
        return result


def search(config: SearchConfig) -> dict:
    """Run (or join, or resume) a coefficient search; returns the result also written to out/search.json."""
    return CoefficientSearch(config).run()


def rule_from(result: dict) -> ScalingRule:
    return ScalingRule(result["alpha"], result["beta"], result["gamma"])


