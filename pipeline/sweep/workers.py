"""Sweep workers: processes (on one machine or many) that take trials from a study until it
has its total, each trial one run of the task sequence as an MLflow child run.

Liveness, for crash recovery: :mod:`pipeline.sweep.liveness`.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from pipeline import metrics
from pipeline.config.paths import PathsConfig
from pipeline.errors import ConfigError
from pipeline.processes import process_id
from pipeline.store import Store
from pipeline.sweep.config import Settings
from pipeline.sweep.liveness import Heartbeat, Liveness, abandon, reap
from pipeline.sweep.space import distribution, trial_config
from pipeline.sweep.storage import storage_lock
from pipeline.sweep.study import PARENT_ATTR, load_settings, load_study
from pipeline.sweep.trials import (
    FINISHED,
    claim_offset,
    counted,
    failed_on_its_own,
    finished,
    make_pruner,
    make_sampler,
    quiet_optuna,
)
from pipeline.tracking import Run, StopRun

MAX_CONSECUTIVE_ERRORS = 3  # a worker gives up when this many trials in a row raise
MAX_WAIT_S = 1.0  # how often an idle worker looks again while others finish the last trials


def say(message: str) -> None:
    """Print a progress line at once (workers' stdout is a pipe or a file, block-buffered)."""
    print(message, flush=True)


# -- one trial ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    state: TrialState
    values: list[float] | None
    seconds: float
    note: str = ""


class Pruned(StopRun):
    """The pruner stopped a trial after a task: its run ends KILLED, tagged PRUNED."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "KILLED", {"optuna.state": "PRUNED"})


class TrialRun:
    """Opens a trial's MLflow run (a child of the study's parent run) and records its id in the
    trial at once, so a worker that takes over after a crash finds the run without a search."""

    def __init__(self, trial: optuna.Trial, store: Store, settings: Settings, parent: str) -> None:
        self.trial, self.store, self.settings, self.parent = trial, store, settings, parent
        self.run: Run | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Run]:
        tags = {"sweep.study": self.trial.study.study_name, "kind": "trial"}
        tags["sweep.trial"] = str(self.trial.number)
        name = f"trial {self.trial.number}"
        with Run.start(self.store, self.settings.mlflow_experiment, name, self.parent, tags) as run:
            self.run = run
            self.trial.set_user_attr("mlflow_run_id", run.run_id)
            yield run

    def tag(self, tags: Mapping[str, str]) -> None:
        if self.run is not None:
            self.run.set_tags(tags)


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    settings: Settings,
    paths: PathsConfig,
    threads: int,
) -> Outcome:
    """Run one trial's sequence as an MLflow child run and turn it into an outcome.

    A diverging loss or a refused config fails the trial with its reason; a prune signal
    prunes it; an interrupt or a missing dataset propagates (the caller abandons the trial).
    """
    from pipeline.module import DivergenceError
    from pipeline.runner import run_sequence

    sweep = settings.config
    started = time.perf_counter()

    def on_task(index: int, rows: dict[str, np.ndarray]) -> None:
        if sweep.objective != "accuracy":
            return  # multi-objective studies cannot prune (Optuna raises NotImplementedError)
        value = metrics.percent(metrics.average_accuracy(rows["val"], index))
        trial.report(value, index)
        if index < len(rows["val"][0]) - 1 and trial.should_prune():
            raise Pruned(
                f"val average accuracy {value:.1f}% after task {index} is below "
                f"the {sweep.pruner} pruner's threshold"
            )

    open_run = TrialRun(trial, Store.of(paths), settings, study.user_attrs[PARENT_ATTR])
    try:
        cfg = trial_config(
            settings, {k: trial.params[k] for k in settings.space}, paths, threads=threads
        )
        result = run_sequence(cfg, open_run, splits=("val",), on_task=on_task)
    except Pruned as e:
        trial.set_user_attr("prune_reason", e.reason)
        return Outcome(TrialState.PRUNED, None, time.perf_counter() - started, e.reason)
    except (DivergenceError, ConfigError) as e:
        reason = f"{type(e).__name__}: {e}"
        trial.set_user_attr("fail_reason", reason)
        open_run.tag({"optuna.state": "FAIL"})
        return Outcome(TrialState.FAIL, None, time.perf_counter() - started, reason)
    # In percent, as MLflow shows them: the dashboard and `make best` read these.
    summary = {k: metrics.percent(v) for k, v in result.summary["val"].items()}
    for key, value in summary.items():
        trial.set_user_attr(key, value)
    values = [summary[n] for n in settings.names]
    if not all(math.isfinite(v) for v in values):
        reason = f"non-finite objective {values}"
        trial.set_user_attr("fail_reason", reason)
        open_run.tag({"optuna.state": "FAIL", "error": reason})
        return Outcome(TrialState.FAIL, None, time.perf_counter() - started, reason)
    open_run.tag({"optuna.state": "COMPLETE"})
    return Outcome(TrialState.COMPLETE, values, time.perf_counter() - started)


# -- the worker loop -------------------------------------------------------------------------
def run_worker(
    name: str,
    paths: PathsConfig,
    index: int = 0,
    workers: int = 1,
    log: Callable[[str], None] = say,
) -> int:
    """Run trials of study ``name`` until it has its total; returns the trials run here.

    Several workers (processes, on one machine or many) may run this on one study at once.
    While the last trials run in other workers, this one waits for them (or reaps them when
    their worker died) instead of leaving the study short.

    Raises:
        DataError: a dataset is missing (the trial is abandoned first, so it is retried).
        KeyboardInterrupt, SystemExit: the same.
    """
    from pipeline.trainer import quiet_lightning

    quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, store = paths.studies_uri(), Store.of(paths)
    study, settings = _open_for_worker(name, storage)
    sweep = settings.config
    prefix = f"[worker {index}] " if workers > 1 else ""
    liveness = Liveness(sweep.grace_s)
    threads = max(1, (os.cpu_count() or 1) // workers)
    ran = errors = 0
    while True:
        with storage_lock(storage, name):
            reap(study, store, liveness, lambda m: log(prefix + m))
            trials = study.get_trials(deepcopy=False)
            if finished(trials) >= sweep.trials:
                break
            trial = None
            if counted(trials) < sweep.trials:
                with quiet_optuna():
                    trial = study.ask({k: distribution(p) for k, p in settings.params.items()})
                trial.set_user_attr("worker", process_id())
        if trial is None:  # the rest are running elsewhere: wait for them (or for their death)
            time.sleep(min(MAX_WAIT_S, sweep.heartbeat_s))
            continue
        try:
            with Heartbeat(trial, sweep.heartbeat_s):
                outcome = run_trial(study, trial, settings, paths, threads)
        except BaseException as e:
            errors += 1
            _trial_raised(study, trial, store, e, errors, lambda m: log(prefix + m))
            continue
        errors = 0
        if _tell(study, trial, outcome, lambda m: log(prefix + m)):
            ran += 1
            log(prefix + progress_line(study, settings, trial.number, outcome, workers))
    return ran


def _open_for_worker(name: str, storage: str) -> tuple[optuna.Study, Settings]:
    """The study with this worker's sampler (seeded apart from the other workers') and the
    pruner, and its settings."""
    probe = load_study(name, storage)
    settings = load_settings(probe)
    with storage_lock(storage, name):
        offset = claim_offset(probe)
    study = optuna.load_study(
        study_name=name,
        storage=probe._storage,
        sampler=make_sampler(settings.config, offset),
        pruner=make_pruner(settings.config),
    )
    return study, settings


def _trial_raised(
    study: optuna.Study,
    trial: optuna.Trial,
    store: Store,
    e: BaseException,
    errors: int,
    log: Callable[[str], None],
) -> None:
    """An exception out of a trial: an interrupt or missing data abandons it (retried on resume)
    and stops the worker; anything else fails the trial, and stops the worker after
    :data:`MAX_CONSECUTIVE_ERRORS` in a row."""
    from pipeline.data.tasks import DataError

    frozen = study._storage.get_trial(trial._trial_id)
    # Lightning turns Ctrl-C into SystemExit(1) and SIGTERM into SIGTERMException (a
    # SystemExit): all of them stop the worker, and the trial is retried on resume.
    if isinstance(e, KeyboardInterrupt | SystemExit):
        why = "terminated" if type(e).__name__ == "SIGTERMException" else "interrupted"
        abandon(study, frozen, store, f"{why}: the sweep was stopped mid-trial")
        raise e
    if isinstance(e, DataError):
        abandon(study, frozen, store, f"DataError: {e}")
        raise e
    reason = f"{type(e).__name__}: {e}"
    trial.set_user_attr("fail_reason", reason)
    study.tell(trial, state=TrialState.FAIL)
    log(f"trial {trial.number} FAILED: {reason}")
    if errors >= MAX_CONSECUTIVE_ERRORS:
        log(f"stopping: {errors} trials in a row raised")
        raise e


def _tell(
    study: optuna.Study, trial: optuna.Trial, outcome: Outcome, log: Callable[[str], None]
) -> bool:
    """Report the outcome; False when another worker took the trial for dead meanwhile."""
    try:
        if outcome.state == TrialState.COMPLETE:
            study.tell(trial, outcome.values)
        else:
            study.tell(trial, state=outcome.state)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker took this one for dead (no heartbeat within grace_s) and queued its
        # parameters again; the retry will count, this result does not.
        log(f"trial {trial.number} was marked failed meanwhile; result dropped")
        return False
    return True


def _pct(v: float) -> str:
    return f"{v:.1f}"


def progress_line(
    study: optuna.Study, settings: Settings, number: int, outcome: Outcome, workers: int
) -> str:
    """``trial 7 COMPLETE (71 s): plasticity 97.3, retention 88.1 | 8/30 ... ~20 min left``."""
    names = settings.names
    total = settings.config.trials
    trials = study.get_trials(deepcopy=False)
    what = outcome.state.name
    if outcome.values is not None:
        what += ": " + ", ".join(
            f"{n} {_pct(v)}" for n, v in zip(names, outcome.values, strict=True)
        )
    elif outcome.note:
        what += f": {outcome.note}"
    done = [t for t in trials if t.state in FINISHED or failed_on_its_own(t)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(names) == 1 and complete:
        best = f"best {names[0]} {_pct(study.best_value)} (trial {study.best_trial.number})"
    elif complete:
        pareto = study.best_trials
        tops = []
        for i, o in enumerate(settings.objectives):
            pick = max if o["direction"] == "maximize" else min
            tops.append(f"{o['name']} {_pct(pick(t.values[i] for t in pareto))}")
        best = f"front {len(pareto)} trials, best " + ", ".join(tops)
    else:
        best = "no complete trial yet"
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in done
        if t.datetime_complete and t.datetime_start
    ]
    left = max(0, total - len(done))
    eta = np.mean(durations) * math.ceil(left / workers) if durations else float("nan")
    eta_text = f"~{eta / 60:.0f} min left" if math.isfinite(eta) else ""
    return (
        f"trial {number} {what} ({outcome.seconds:.0f} s) | {len(done)}/{total} done | "
        f"{best} | {eta_text}"
    ).rstrip(" |")


def spawn_workers(name: str, paths: PathsConfig, workers: int) -> list[int]:
    """Run ``workers`` worker processes on the study; their exit codes.

    The stores reach them through the environment (``MLFLOW_TRACKING_URI``,
    ``OPTUNA_STORAGE``), not the command line, where ``ps`` would show a URI's password.
    """
    from pipeline.config.paths import ENV_STORE, ENV_STUDIES

    env = {**os.environ, ENV_STORE: paths.store_uri(), ENV_STUDIES: paths.studies_uri()}
    args = [f"paths.data={paths.data}", f"paths.reports={paths.reports}"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline",
                "sweep-worker",
                name,
                "--index",
                str(i),
                "--workers",
                str(workers),
                *args,
            ],
            env=env,
        )
        for i in range(workers)
    ]
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:  # they got the same SIGINT from the terminal; wait for their cleanup
            p.wait()
        raise
    except BaseException:  # SIGTERM reached this process alone: pass it on, then wait
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
