"""``fedtext tune``: a hyperparameter search over federated simulations, with Optuna.

The flow of a study, top to bottom (:func:`tune`):

1. check everything a trial needs before anything starts: the base config,
   the search space against it, the data and the model (one line and exit 2
   on a problem), the storage (an SQLite file that can be written);
2. open the study in its storage, or create it. A stored study is resumed only
   with the same space, objective, mode and base config; its trials that were
   running when a previous tuner died are marked failed and queued again, so
   no completed trial is lost and none is half-counted. A lock file keeps a
   second tuner off the same storage;
3. for federated trials, start one Flower run that executes every trial of
   the study (``trials.FederationRunner``): one SuperLink, one Ray head, one
   ServerApp and one set of warm client actors;
4. until the study holds ``--trials`` finished trials: ask the sampler for
   parameters, run the trial (``simulations.tuning.trials``) reporting its
   objective after every round, let the pruner stop it, tell the study;
   print one line per trial as it goes and rewrite the outputs;
5. evaluate the best trial's model on the server's test set (the only test
   figures of the study) and write ``best.toml``, ``best.json``, the trials
   table and the plots (``simulations.tuning.report``).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import FedTextConfig, to_key
from common.errors import ConfigError, FedTextError
from simulations.tuning.space import SearchSpace, build_space
from simulations.tuning.trials import OBJECTIVES, FederationRunner, StopTrial, TrialRun, run_centralized

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "halving", "threshold:VALUE", "none")
# Keys that differ between trials by design, or do not describe the study.
NOT_COMPARED = ("out", "resume", "central-eval")
CONSECUTIVE_FAILURES = 3


@dataclass(frozen=True)
class TuneOptions:
    """How to search (the base config says what each trial trains).

    Attributes
    ----------
    out : Path
        Study folder: trials/, the storage by default, the outputs.
    trials : int
        Finished (completed or pruned) trials the study should hold.
    storage : str
        SQLite file (or ``sqlite:///`` URL) of the study.
    study_name : str
        Name of the study in the storage.
    sampler, pruner, objective : str
        See :data:`SAMPLERS`, :data:`PRUNERS`, ``trials.OBJECTIVES``.
    centralized : bool
        Trials are centralized runs (the baseline, tuned with the same budget).
    seed : int
        Seed of the sampler.
    params : list[str]
        ``--param KEY=SPEC`` flags.
    space_file : str, optional
        ``--space FILE``.
    """

    out: Path
    trials: int = 20
    storage: str = ""
    study_name: str = "fedtext"
    sampler: str = "tpe"
    pruner: str = "median"
    objective: str = "accuracy"
    centralized: bool = False
    seed: int = 42
    params: list[str] = field(default_factory=list)
    space_file: str | None = None

    def storage_path(self) -> Path:
        """The SQLite file of the study."""
        text = self.storage or str(self.out / "study.db")
        return Path(text.removeprefix("sqlite:///")).expanduser().resolve()


def check_options(options: TuneOptions) -> None:
    """One line naming the first bad tuning flag."""
    if options.trials < 1:
        raise ConfigError(f"--trials: expected >= 1, got {options.trials}")
    if options.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler: expected {' | '.join(SAMPLERS)}, got {options.sampler!r}")
    if options.pruner not in PRUNERS and _threshold(options.pruner) is None:
        raise ConfigError(f"--pruner: expected {' | '.join(PRUNERS)}, got {options.pruner!r}")
    if options.objective not in OBJECTIVES:
        raise ConfigError(f"--objective: expected {' | '.join(OBJECTIVES)}, got {options.objective!r}")
    if options.storage and "://" in options.storage and not options.storage.startswith("sqlite:///"):
        raise ConfigError(f"--storage '{options.storage}': expected an SQLite file or sqlite:/// URL")
    if not options.study_name.strip():
        raise ConfigError("--study-name: expected a name")


def check_base(base: FedTextConfig, options: TuneOptions) -> None:
    """The objective needs validation rows, and federated trials must evaluate on every client."""
    if base.client_eval_fraction <= 0:
        raise ConfigError("config key 'client-eval-fraction': tuning measures its objective on the "
                          "clients' held-out rows; expected > 0, got 0")
    if not options.centralized and base.fraction_evaluate < 1.0:
        raise ConfigError("config key 'fraction-evaluate': tuning measures its objective on every "
                          f"client's held-out rows; expected 1, got {base.fraction_evaluate:g}")


def study_fingerprint(base: FedTextConfig, space: SearchSpace, options: TuneOptions) -> dict[str, str]:
    """What a stored study must match to be resumed."""
    config = {k: v for k, v in base.to_mapping().items() if k not in NOT_COMPARED}
    return {
        "space": space.to_json(),
        "objective": options.objective,
        "mode": "centralized" if options.centralized else "federated",
        "base": json.dumps(config, sort_keys=True),
    }


# --- the storage ---------------------------------------------------------------------------


class StudyLock:
    """An exclusive lock next to the storage: one tuner per study file at a time."""

    def __init__(self, storage: Path) -> None:
        self.path = storage.with_name(storage.name + ".lock")
        self._file: Any = None

    def __enter__(self) -> StudyLock:
        import fcntl

        try:
            self._file = self.path.open("w")
        except OSError as exc:
            raise ConfigError(f"--storage '{self.path.with_suffix('')}': cannot write there "
                              f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise ConfigError(f"--storage '{self.path.with_suffix('')}': another `fedtext tune` is using "
                              f"this study (lock {self.path})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def open_storage(path: Path) -> Any:
    """An Optuna RDB storage on ``path``; one line if it cannot be created or written."""
    import sqlite3

    import optuna

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as db:  # creates the file, proves it is writable SQLite
            db.execute("CREATE TABLE IF NOT EXISTS fedtext_probe (x INTEGER)")
            db.execute("DROP TABLE fedtext_probe")
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"--storage '{path}': cannot write an SQLite study there ({exc})") from None
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def load_study(storage: Any, options: TuneOptions, fingerprint: dict[str, str], space: SearchSpace) -> Any:
    """The stored study (checked against this one's fingerprint), or a new one."""
    import optuna

    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if options.study_name in names:
        study = optuna.load_study(study_name=options.study_name, storage=storage,
                                  sampler=make_sampler(options, space), pruner=make_pruner(options))
        stored = study.user_attrs
        for key, value in fingerprint.items():
            if stored.get(key) != value:
                raise ConfigError(
                    f"--study-name '{options.study_name}': the study in '{options.storage_path()}' was "
                    f"made with another {key} ({_difference(key, stored.get(key), value)}); "
                    "use another --study-name or --storage"
                )
        return study
    direction = "maximize" if OBJECTIVES[options.objective] else "minimize"
    study = optuna.create_study(study_name=options.study_name, storage=storage, direction=direction,
                                sampler=make_sampler(options, space), pruner=make_pruner(options))
    for key, value in fingerprint.items():
        study.set_user_attr(key, value)
    return study


def _difference(key: str, stored: str | None, current: str) -> str:
    if key == "base" and stored:
        old, new = json.loads(stored), json.loads(current)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            k = changed[0]
            return f"'{k}': stored {old.get(k)!r}, now {new.get(k)!r}"
    return f"stored {stored}, now {current}"


def make_sampler(options: TuneOptions, space: SearchSpace) -> Any:
    import optuna

    if options.sampler in ("grid", "random"):
        # A grid is enqueued point by point (enqueue_grid); its sampler is never asked.
        # (Optuna's GridSampler stops the study from inside optimize(), which
        # an ask-and-tell loop does not run.)
        return optuna.samplers.RandomSampler(seed=options.seed)
    return optuna.samplers.TPESampler(seed=options.seed, n_startup_trials=5)


def make_pruner(options: TuneOptions) -> Any:
    import optuna

    if options.pruner == "median":
        # Pruning starts with the second round: round 1 of every trial is noisy.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if options.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if options.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    threshold = _threshold(options.pruner)
    if threshold is not None:
        # A trial whose objective is worse than VALUE after any round stops there
        # (e.g. a run stuck at the majority class).
        bound = {"lower": threshold} if OBJECTIVES[options.objective] else {"upper": threshold}
        return optuna.pruners.ThresholdPruner(**bound)
    return optuna.pruners.NopPruner()


def _threshold(pruner: str) -> float | None:
    kind, _, value = pruner.partition(":")
    if kind != "threshold":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def requeue_interrupted(study: Any, echo: Callable[[str], None]) -> None:
    """Trials left running by a tuner that died: mark them failed and run their parameters again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "status", "interrupted")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        echo(f"trial {trial.number} was interrupted; its parameters are queued again")


def enqueue_grid(study: Any, space: SearchSpace) -> None:
    """Queue every point of the grid the study has not run or queued yet."""
    import itertools

    grid = space.grid()
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        study.enqueue_trial(point, skip_if_exists=True)


# --- the loop ------------------------------------------------------------------------------


class TrialLine:
    """One line per trial, written as it goes: parameters, each round's value, the verdict."""

    def __init__(self, echo: Callable[..., None], number: int, params: dict[str, Any]) -> None:
        self.echo = echo
        text = " ".join(f"{k}={_short(v)}" for k, v in params.items())
        self.echo(f"trial {number}: {text} |", end="", flush=True)

    def value(self, value: float) -> None:
        self.echo(f" {value:.4f}", end="", flush=True)

    def end(self, verdict: str) -> None:
        self.echo(f" | {verdict}", flush=True)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def finished_trials(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def trial_config(base: FedTextConfig, params: dict[str, Any], folder: Path) -> FedTextConfig:
    """The base config with a trial's parameters, writing to its own folder, test set untouched."""
    changes = {k.replace("-", "_"): v for k, v in params.items()}
    return base.replace(**changes, out=str(folder), central_eval=False, resume="")


def tune(base: FedTextConfig, options: TuneOptions, echo: Callable[..., None] = print) -> int:
    """Run the study; return the exit code."""
    import optuna

    from common.model import check_model
    from common.splits import write_client_shares
    from simulations.simulate import check_data, check_sampling, prepare_config
    from simulations.tuning.report import evaluate_best, write_outputs

    session = Session(started=time.perf_counter())  # the share outside rounds counts the checks too
    check_options(options)
    base = prepare_config(base)
    check_sampling(base)
    check_base(base, options)
    space = build_space(base, options.params, options.space_file)
    target = options.trials
    if options.sampler == "grid":
        size = 1
        for values in space.grid().values():
            size *= len(values)
        target = min(target, size)
    labels, shares = check_data(base)
    write_client_shares(base, shares, labels)  # trials that keep the rows read them from here
    echo(f"fedtext tune: {'centralized' if options.centralized else 'federated'} trials, "
         f"objective {options.objective} on the clients' held-out rows; space: {space.describe()}")
    echo(f"model {base.model}: {check_model(base, len(labels))}")
    storage_path = options.storage_path()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna marks its matplotlib plots experimental, and says when importances
    # cannot tell parameters apart: neither says anything to a user.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Target and region quantiles", category=UserWarning)
    out = options.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    _mkdir(storage_path)
    with StudyLock(storage_path):
        storage = open_storage(storage_path)
        study = load_study(storage, options, study_fingerprint(base, space, options), space)
        echo(f"study '{options.study_name}' in {storage_path}: {len(finished_trials(study))} finished "
             f"trial(s) so far, target {target}")
        requeue_interrupted(study, echo)
        if options.sampler == "grid":
            enqueue_grid(study, space)
        runner = None
        try:
            if len(finished_trials(study)) < target and not options.centralized:
                runner = FederationRunner(out / ".flwr", base).start()
                session.setup_s = runner.started_s
            failures = 0
            while len(finished_trials(study)) < target:
                run = run_trial(study, space, base, options, out, runner, echo)
                session.add(run)
                failures = failures + 1 if run.status == "failed" else 0
                write_outputs(study, out, options, session, base, plots=False)
                if failures >= CONSECUTIVE_FAILURES:
                    raise FedTextError(f"{failures} trials in a row failed (last: {run.reason}); "
                                       f"see {out / 'trials'}")
        finally:
            if runner is not None:
                runner.stop()
        best = evaluate_best(study, base, out, echo)
        write_outputs(study, out, options, session, base, best)
    echo(f"wrote {out / 'best.toml'}, {out / 'trials.csv'}, {out / 'history.png'}; "
         f"optuna-dashboard sqlite:///{storage_path}")
    return 0


def _mkdir(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--storage '{path}': cannot create its folder ({exc.strerror or exc})") from None


@dataclass
class Session:
    """Wall time of this tuner's session, and how much of it went into rounds."""

    started: float
    setup_s: float = 0.0
    rounds_s: float = 0.0
    trials: int = 0
    trial_wall_s: float = 0.0

    def add(self, run: TrialRun) -> None:
        self.trials += 1
        self.rounds_s += run.rounds_s
        self.trial_wall_s += run.wall_s

    def summary(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        return {
            "wall_s": round(wall, 1),
            "rounds_s": round(self.rounds_s, 1),
            "outside_rounds_share": round(1.0 - self.rounds_s / wall, 4) if wall > 0 else 0.0,
            "setup_s": round(self.setup_s, 1),
            "trials_run": self.trials,
        }


def run_trial(study: Any, space: SearchSpace, base: FedTextConfig, options: TuneOptions, out: Path,
              runner: FederationRunner | None, echo: Callable[..., None]) -> TrialRun:
    """Ask, run, tell: one trial of the study."""
    from optuna.trial import TrialState

    trial = study.ask()
    params = space.suggest(trial)
    folder = out / "trials" / f"trial-{trial.number:03d}"
    line = TrialLine(echo, trial.number, params)
    trial.set_user_attr("folder", str(folder))
    try:
        cfg = trial_config(base, params, folder)
    except ConfigError as exc:  # a combination the config refuses (each bound alone was fine)
        study.tell(trial, state=TrialState.FAIL)
        line.end(f"failed: {exc}")
        return TrialRun(status="failed", reason=str(exc))

    def report(server_round: int, value: float) -> None:
        trial.report(value, server_round)
        line.value(value)
        if trial.should_prune():
            raise StopTrial

    execute = run_centralized if runner is None else runner.run
    run = execute(trial.number, params, cfg, options.objective, report)
    for key, value in (("status", run.status), ("values", run.values), ("wall_s", round(run.wall_s, 2)),
                       ("rounds_s", round(run.rounds_s, 2)), ("reason", run.reason)):
        trial.set_user_attr(key, value)
    if run.status == "completed" and run.values:
        study.tell(trial, run.values[-1])
    elif run.status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)
    best = _best(study)
    verdict = {"completed": f"completed {run.values[-1]:.4f}" if run.values else "completed",
               "pruned": f"pruned after round {len(run.values)}",
               "failed": f"failed: {run.reason}"}.get(run.status, run.status)
    line.end(f"{verdict} | {run.wall_s:.0f} s | best {best}")
    return run


def _best(study: Any) -> str:
    try:
        trial = study.best_trial
    except ValueError:
        return "none yet"
    return f"{trial.value:.4f} (trial {trial.number})"


def best_params(study: Any) -> dict[str, Any]:
    """Kebab-case key -> value of the best completed trial."""
    return {to_key(k.replace("-", "_")): v for k, v in study.best_trial.params.items()}
