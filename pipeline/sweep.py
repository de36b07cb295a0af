"""Optuna sweeps: search the hyperparameters that trade plasticity against forgetting.

A study searches one experiment and strategy. Its search space is the strategy's ``search:``
block (``conf/strategy/<name>.yaml``) plus the sweep file's ``space`` (``conf/sweep/<name>.yaml``:
the learning rate, and any range to replace or drop). Every trial is one run of the task
sequence, an MLflow child run of the study's parent run, scored on the **validation** splits
only: trials never evaluate a test split (:func:`pipeline.runner.run_sequence` with
``splits=("val",)``); the test split is read once, by ``make best``, after the choice is made.

Objectives (``SweepConfig.objective``):

- ``pareto`` (default): plasticity (mean accuracy on each task right after learning it) and
  retention (mean final accuracy on the earlier tasks), or forgetting: a Pareto front. Optuna
  cannot prune multi-objective studies, so every trial runs to the end.
- ``accuracy``: final average accuracy, with pruning: the runner reports the running average
  after each task and the pruner (median or successive halving) stops a poor trial early.

Storage and resuming: the study lives in the tracking store (``mlruns/optuna/journal.log``, an
Optuna journal file: several worker processes of one machine may share it) or in an RDB URL
(PostgreSQL for several machines). Running the same sweep again resumes it: finished trials are
kept; a trial whose worker died (its process is gone, or its heartbeat is older than
``grace_s``) is marked failed with the reason and its parameters are enqueued again; the sweep
stops when ``trials`` trials have finished (complete, pruned, or failed for a reason of their
own, such as a diverging loss). On one machine, asking for a trial and counting the finished
ones happen under one file lock, so parallel workers never overshoot the total.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from pipeline import metrics
from pipeline.config import (
    REPORTS_DIR,
    ConfigError,
    ExperimentConfig,
    SearchParam,
    SweepConfig,
    compose,
    compose_sweep,
    search_param,
    strategy_search,
    to_dict,
)
from pipeline.tracking import Run, client_for, ensure_experiment, git_commit

SETTINGS_ATTR = "pipeline.settings"  # study user attribute: the protocol record
PARENT_ATTR = "pipeline.parent_run_id"
# Trial states that count towards the requested number of trials. A failure counts when the
# trial itself failed (its loss diverged, its config was refused); a failure recorded because
# the worker died does not: its parameters are retried.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_CONSECUTIVE_ERRORS = 3  # a worker gives up when this many trials in a row raise


def say(message: str) -> None:
    """Print a progress line at once (workers' stdout is a pipe or a file, block-buffered)."""
    print(message, flush=True)


@dataclass
class Objective:
    """One objective: the summary metric of the validation matrix it reads, and its direction."""

    name: str
    direction: str  # "maximize" | "minimize"


def objectives(sweep: SweepConfig) -> list[Objective]:
    """The study's objectives for a sweep config."""
    if sweep.objective == "accuracy":
        return [Objective("avg_acc", "maximize")]
    second = "minimize" if sweep.stability == "forgetting" else "maximize"
    return [Objective("plasticity", "maximize"), Objective(sweep.stability, second)]


@dataclass
class Settings:
    """Everything a worker needs to run trials, recorded in the study (the protocol record).

    A resumed or parallel worker reads these from the storage, so every trial of a study uses
    the same experiment, overrides, search space, objectives and protocol.
    """

    experiment: str
    strategy: list[str]
    sweep: dict[str, Any]
    overrides: list[str]
    space: dict[str, dict[str, Any]]
    objectives: list[dict[str, str]]
    defaults: dict[str, Any]
    store: str
    mlflow_experiment: str
    tasks: list[str]
    commit: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    @property
    def config(self) -> SweepConfig:
        return SweepConfig(**self.sweep)

    @property
    def params(self) -> dict[str, SearchParam]:
        return {k: SearchParam(**v) for k, v in self.space.items()}

    def comparable(self) -> dict[str, Any]:
        """What must match for a sweep to resume this study (not the trial count or times)."""
        keep = dict(self.sweep)
        for key in ("trials", "description", "heartbeat_s", "grace_s"):
            keep.pop(key, None)
        return {
            "experiment": self.experiment,
            "strategy": self.strategy,
            "sweep": keep,
            "overrides": self.overrides,
            "space": self.space,
        }


def search_space(strategy: Sequence[str], sweep: SweepConfig) -> dict[str, SearchParam]:
    """The strategies' ranges, then the sweep file's ``space`` (which may replace or drop)."""
    space: dict[str, SearchParam] = {}
    for name in strategy:
        space.update(strategy_search(name))
    for key, spec in sweep.space.items():
        parts = key.split(".")
        if parts[0] == "strategies" and (len(parts) != 3 or parts[1] not in strategy):
            raise ConfigError(
                f"conf/sweep/{sweep.name}.yaml: space.{key}: not a parameter of the swept "
                f"strategies ({', '.join(strategy)})"
            )
        if spec is None:
            space.pop(key, None)
        else:
            space[key] = search_param(spec, f"conf/sweep/{sweep.name}.yaml: space.{key}")
    if not space:
        raise ConfigError(f"the search space of {'+'.join(strategy)} is empty: nothing to tune")
    return space


def distribution(p: SearchParam) -> BaseDistribution:
    """The Optuna distribution of a search range."""
    if p.type == "categorical":
        return CategoricalDistribution(list(p.choices or []))
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log)
    return FloatDistribution(float(p.low), float(p.high), log=p.log)


def override_value(v: Any) -> str:
    """A parameter value as the right-hand side of a ``key=value`` override."""
    return v if isinstance(v, str) else json.dumps(v)


def lookup(cfg: ExperimentConfig, key: str) -> Any:
    """The value at a dotted config path (``optim.lr``, ``strategies.ewc.lam``)."""
    node: Any = to_dict(cfg)
    for part in key.split("."):
        node = node[part]
    return node


def trial_config(
    settings: Settings,
    params: dict[str, Any],
    *,
    prefix: bool = True,
    threads: int = 0,
) -> ExperimentConfig:
    """The experiment config of one trial (or of ``make best``'s evaluation).

    Args:
        settings: the study's settings.
        params: the trial's hyperparameters, keyed by config path.
        prefix: apply the prefix protocol's truncation (trials do; the final run does not).
        threads: torch threads when the experiment leaves them at 0 (workers share the cores).
    """
    overrides = [
        f"strategy=[{','.join(settings.strategy)}]",
        *settings.overrides,
        *(f"{k}={override_value(v)}" for k, v in params.items()),
    ]
    cfg = compose(settings.experiment, overrides)
    sweep = settings.config
    if prefix and sweep.protocol == "prefix":
        cfg.data.tasks = cfg.data.tasks[: sweep.prefix_tasks]
        cfg.data.benchmark = ""  # the saved config lists the tasks it ran
    if threads and not cfg.trainer.threads:
        cfg.trainer.threads = threads
    cfg.trainer.progress_bar = False  # trial lines, not bars, report a sweep's progress
    return cfg


def default_storage(store: str) -> str:
    """The journal file of the tracking store, where studies live by default."""
    return str(Path(store) / "optuna" / "journal.log")


def open_storage(url: str) -> BaseStorage:
    """An RDB URL (``postgresql://...``, ``sqlite:///...``) or a journal file path."""
    if "://" in url:
        return RDBStorage(url)
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


@contextlib.contextmanager
def ask_lock(url: str) -> Iterator[None]:
    """Serialise "count the finished trials, then ask for one" among this machine's workers.

    Journal files are local, so a file lock covers every worker. An RDB study may have workers on
    several machines: there the count and the ask are not atomic, and a study can overshoot its
    total by at most (workers - 1) trials.
    """
    if "://" in url:
        yield
        return
    with open(f"{url}.ask.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- worker identity and liveness ---------------------------------------------------------


def _start_time(pid: int) -> str:
    """Start time of a process (clock ticks since boot), to tell a reused pid from the worker."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def worker_id() -> str:
    """``host:pid:start``: enough to tell, on the same host, whether the worker still runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def worker_alive(trial: FrozenTrial, grace_s: float, now: float | None = None) -> bool:
    """Whether the worker running ``trial`` is still there.

    On this host the process table answers; for a worker on another host (an RDB study), its
    heartbeat must be younger than ``grace_s``.
    """
    now = time.time() if now is None else now
    owner = str(trial.user_attrs.get("worker", ""))
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, another user's
        return not start or _start_time(int(pid)) in ("", start)
    beat = trial.user_attrs.get("heartbeat")
    if beat is None:  # died between being asked for and saying who runs it
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started < grace_s
    return now - float(beat) < grace_s


class Heartbeat:
    """Writes the time into a running trial every ``interval`` seconds (a daemon thread)."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is not worth failing a trial
                self.trial.set_user_attr("heartbeat", time.time())

    def __enter__(self) -> Heartbeat:
        self.trial.set_user_attr("heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the study ------------------------------------------------------------------------------


def load_settings(study: optuna.Study) -> Settings:
    raw = study.user_attrs.get(SETTINGS_ATTR)
    if raw is None:
        raise ConfigError(f"study '{study.study_name}' was not created by `make sweep`")
    return Settings(**raw)


def load_study(name: str, storage: str) -> optuna.Study:
    """An existing study, or a one-line error listing the studies of the storage."""
    if "://" not in storage and not Path(storage).is_file():
        raise ConfigError(f"no study storage at {storage} (run `make sweep` first)")
    st = open_storage(storage)
    try:
        return optuna.load_study(study_name=name, storage=st)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(st)) or "none"
        raise ConfigError(f"no study '{name}' in {storage} (studies: {names})") from None


def _set_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    # A FrozenTrial has no setter, and the trial may belong to a dead worker: write through the
    # storage (Optuna's own RetryFailedTrialCallback works on the storage the same way).
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def trial_run_id(settings: Settings, study: str, number: int) -> str | None:
    """The MLflow child run of a trial, by its tags."""
    client = client_for(settings.store)
    exp = client.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`sweep.study` = '{study}' and tags.`sweep.trial` = '{number}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def abandon(study: optuna.Study, trial: FrozenTrial, settings: Settings, reason: str) -> None:
    """Mark a trial cut off by a crash or an interrupt as failed and enqueue its parameters.

    Its MLflow run, if it is still marked running, is marked failed with the reason.
    """
    _set_attr(study, trial, "crashed", True)
    _set_attr(study, trial, "fail_reason", reason)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    attrs = {"retry_of": trial.number}
    if trial.user_attrs.get("default"):
        attrs["default"] = True
    study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)
    run_id = trial_run_id(settings, study.study_name, trial.number)
    if run_id is not None:
        client = client_for(settings.store)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "error", reason)
            client.set_terminated(run_id, status="FAILED")
        client.set_tag(run_id, "optuna.state", "FAIL")


def reap(study: optuna.Study, settings: Settings, log: Callable[[str], None]) -> None:
    """Fail and re-enqueue the running trials whose worker has died."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not worker_alive(t, settings.config.grace_s):
            reason = f"crashed: worker {t.user_attrs.get('worker', '?')} stopped mid-trial"
            abandon(study, t, settings, reason)
            log(f"trial {t.number}: {reason}; its parameters are queued again")


def counted(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count towards the total: finished, running, or failed on their own."""
    return sum(
        1 for t in trials if t.state in (*FINISHED, TrialState.RUNNING) or _failed_on_its_own(t)
    )


def make_sampler(sweep: SweepConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The sampler, seeded with ``seed + offset`` (offset: trials so far and worker index, so
    a resumed or parallel worker does not repeat another's random startup points)."""
    seed = sweep.seed + offset
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=sweep.startup_trials,
            multivariate=True,
            constant_liar=True,  # parallel workers: pending trials count as bad, not as unknown
        )


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.objective != "accuracy" or sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    if sweep.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials)


def study_name(experiment: str, strategy: Sequence[str], sweep: str) -> str:
    """Default study name: ``<experiment>-<strategy>`` (``-<sweep>`` unless the default)."""
    base = f"{experiment}-{'+'.join(strategy)}"
    return base if sweep == "default" else f"{base}-{sweep}"


def create_or_resume(
    experiment: str,
    strategy: Sequence[str],
    sweep: SweepConfig,
    overrides: Sequence[str],
    name: str,
    storage: str,
    log: Callable[[str], None] = say,
) -> tuple[optuna.Study, Settings]:
    """Validate everything, then create the study and its MLflow parent run (or resume both).

    Runs in the launching process before any worker starts, so the MLflow database, the
    experiment and the study exist before parallel writers touch them.

    Raises:
        ConfigError: a bad experiment, override, sweep file or range; a study of that name with
            other settings.
        DataError: the data is missing.
    """
    space = search_space(strategy, sweep)
    overrides = [*sweep.overrides, *overrides]
    base = compose(experiment, [f"strategy=[{','.join(strategy)}]", *overrides])
    if sweep.protocol == "prefix" and sweep.prefix_tasks > len(base.data.tasks):
        raise ConfigError(
            f"prefix_tasks={sweep.prefix_tasks}, but {experiment} has {len(base.data.tasks)} tasks"
        )
    if sweep.protocol == "validation" and len(base.data.tasks) < 2 and sweep.objective == "pareto":
        raise ConfigError(f"{experiment} has one task: there is nothing to forget")
    defaults = {k: lookup(base, k) for k in space}
    settings = Settings(
        experiment=experiment,
        strategy=list(strategy),
        sweep=asdict(sweep),
        overrides=list(overrides),
        space={k: asdict(p) for k, p in space.items()},
        objectives=[asdict(o) for o in objectives(sweep)],
        defaults=defaults,
        store=base.tracking.store,
        mlflow_experiment=base.tracking.experiment or base.name,
        tasks=[t.name for t in base.data.tasks],
        commit=git_commit(),
    )
    for params in _corner_params(space):  # every range's ends must make a valid config
        trial_config(settings, params)
    from pipeline.data.datamodule import ContinualDataModule

    ContinualDataModule(base.data, base.seed, 1, base.scenario).setup()  # DataError now

    st = open_storage(storage)
    directions: list[Any] = [o.direction for o in objectives(sweep)]
    study = optuna.create_study(
        study_name=name, storage=st, directions=directions, load_if_exists=True
    )
    old = study.user_attrs.get(SETTINGS_ATTR)
    if old is not None:
        previous = Settings(**old)
        if previous.comparable() != settings.comparable():
            diff = [k for k, v in settings.comparable().items() if previous.comparable()[k] != v]
            raise ConfigError(
                f"study '{name}' exists in {storage} with other settings ({', '.join(diff)}): "
                "resume it with the same ones, or name a new study with STUDY=<name>"
            )
        if previous.sweep["trials"] != sweep.trials:
            previous.sweep["trials"] = sweep.trials
            study.set_user_attr(SETTINGS_ATTR, asdict(previous))
        client = client_for(previous.store)
        client.update_run(study.user_attrs[PARENT_ATTR], status="RUNNING")
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in FINISHED or _failed_on_its_own(t) for t in trials)
        log(f"resuming study '{name}': {done} of {sweep.trials} trials finished so far")
        return study, previous

    client = client_for(settings.store)
    exp_id = ensure_experiment(client, settings.mlflow_experiment, settings.store)
    parent = client.create_run(
        exp_id,
        run_name=f"sweep {name}",
        tags={
            "kind": "sweep",
            "sweep.study": name,
            "strategy": "+".join(strategy),
            "mlflow.source.git.commit": settings.commit,
        },
    ).info.run_id
    run = Run(client, parent, exp_id)
    run.log_params(
        {
            "study": name,
            "experiment": experiment,
            "strategy": "+".join(strategy),
            "objectives": ", ".join(f"{o.name} ({o.direction})" for o in objectives(sweep)),
            "protocol": sweep.protocol
            + (f" (first {sweep.prefix_tasks} tasks)" if sweep.protocol == "prefix" else ""),
            "splits_read_by_trials": "val",
            "sampler": sweep.sampler,
            "sampler_seed": sweep.seed,
            "pruner": make_pruner(sweep).__class__.__name__,
            "trials": sweep.trials,
            "storage": storage,
            "overrides": " ".join(overrides),
            "tasks": " -> ".join(settings.tasks),
            **{f"space.{k}": json.dumps(v) for k, v in settings.space.items()},
            **{f"default.{k}": v for k, v in defaults.items()},
        }
    )
    run.log_json(asdict(settings), "sweep_settings.json")
    study.set_user_attr(SETTINGS_ATTR, asdict(settings))
    study.set_user_attr(PARENT_ATTR, parent)
    if sweep.defaults_first:
        outside = [k for k, v in defaults.items() if not space[k].contains(v)]
        if outside:
            log(f"defaults not enqueued: {', '.join(outside)} outside the search range")
        else:
            study.enqueue_trial(defaults, user_attrs={"default": True})
    log(f"created study '{name}' in {storage}; MLflow parent run {parent}")
    return study, settings


def _corner_params(space: dict[str, SearchParam]) -> list[dict[str, Any]]:
    """Two parameter sets: every range at its low end, and at its high end (first choices, last
    choices), to reject a range a strategy refuses before any trial runs."""
    out = []
    for end in (0, -1):
        params: dict[str, Any] = {}
        for k, p in space.items():
            if p.type == "categorical":
                params[k] = (p.choices or [None])[end]
            else:
                v = p.low if end == 0 else p.high
                params[k] = int(v) if p.type == "int" and v is not None else v
        out.append(params)
    return out


# --- running trials ---------------------------------------------------------------------------


@dataclass
class Outcome:
    state: TrialState
    values: list[float] | None
    seconds: float
    note: str = ""


def run_trial(
    study: optuna.Study, trial: optuna.Trial, settings: Settings, threads: int
) -> Outcome:
    """Run one trial's sequence as an MLflow child run and turn it into an outcome.

    A diverging loss or a refused config fails the trial with its reason; a prune signal
    prunes it; an interrupt or a missing dataset propagates (the caller abandons the trial).
    """
    from pipeline.module import DivergenceError
    from pipeline.runner import run_sequence

    sweep = settings.config
    names = [o["name"] for o in settings.objectives]
    started = time.perf_counter()
    params = {k: trial.params[k] for k in settings.space}

    def on_task(index: int, rows: dict[str, np.ndarray]) -> None:
        if sweep.objective != "accuracy":
            return  # multi-objective studies cannot prune (Optuna raises NotImplementedError)
        value = metrics.average_accuracy(rows["val"], index)
        trial.report(value, index)
        if index < len(rows["val"][0]) - 1 and trial.should_prune():
            raise optuna.TrialPruned(
                f"val average accuracy {value * 100:.1f}% after task {index} is below "
                f"the {sweep.pruner} pruner's threshold"
            )

    tags = {"sweep.study": study.study_name, "sweep.trial": str(trial.number), "kind": "trial"}
    try:
        cfg = trial_config(settings, params, threads=threads)
        cfg.tracking.run_name = f"trial {trial.number}"
        parent = study.user_attrs[PARENT_ATTR]
        result = run_sequence(cfg, parent, splits=("val",), on_task=on_task, tags=tags)
    except optuna.TrialPruned as e:
        _end_child(settings, study.study_name, trial.number, "KILLED", "PRUNED", str(e))
        trial.set_user_attr("prune_reason", str(e))
        return Outcome(TrialState.PRUNED, None, time.perf_counter() - started, str(e))
    except (DivergenceError, ConfigError) as e:
        reason = f"{type(e).__name__}: {e}"
        trial.set_user_attr("fail_reason", reason)
        _end_child(settings, study.study_name, trial.number, None, "FAIL", reason)
        return Outcome(TrialState.FAIL, None, time.perf_counter() - started, reason)
    summary = result.summary["val"]
    for key, value in summary.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("mlflow_run_id", result.run_id)
    values = [summary[n] for n in names]
    if not all(math.isfinite(v) for v in values):
        reason = f"non-finite objective {values}"
        trial.set_user_attr("fail_reason", reason)
        return Outcome(TrialState.FAIL, None, time.perf_counter() - started, reason)
    client_for(settings.store).set_tag(result.run_id, "optuna.state", "COMPLETE")
    return Outcome(TrialState.COMPLETE, values, time.perf_counter() - started)


def _end_child(
    settings: Settings, study: str, number: int, status: str | None, state: str, reason: str
) -> None:
    """Record a trial's state on its MLflow run (the runner marked it FAILED on the exception;
    a pruned trial was stopped on purpose: KILLED)."""
    run_id = trial_run_id(settings, study, number)
    if run_id is None:
        return
    client = client_for(settings.store)
    client.set_tag(run_id, "optuna.state", state)
    client.set_tag(run_id, "error" if state == "FAIL" else "prune_reason", reason[:5000])
    if status:
        client.set_terminated(run_id, status=status)


def run_worker(
    name: str,
    storage: str,
    index: int = 0,
    workers: int = 1,
    log: Callable[[str], None] = say,
) -> int:
    """Run trials of study ``name`` until the study has its total; returns trials run here.

    Several workers (processes) may run this on one study at once.

    Raises:
        DataError: a dataset is missing (the trial is abandoned first, so it is retried).
        KeyboardInterrupt: the same.
    """
    from pipeline.runner import quiet_lightning

    quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = load_study(name, storage)
    settings = load_settings(probe)
    sweep = settings.config
    distributions = {k: distribution(p) for k, p in settings.params.items()}
    threads = max(1, (os.cpu_count() or 1) // workers)
    offset = len(probe.get_trials(deepcopy=False)) + 1000 * index
    study = optuna.load_study(
        study_name=name,
        storage=open_storage(storage),
        sampler=make_sampler(sweep, offset),
        pruner=make_pruner(sweep),
    )
    prefix = f"[worker {index}] " if workers > 1 else ""
    ran = errors = 0
    while True:
        with ask_lock(storage):
            reap(study, settings, lambda m: log(prefix + m))
            if counted(study.get_trials(deepcopy=False)) >= sweep.trials:
                break
            trial = study.ask(distributions)
            trial.set_user_attr("worker", worker_id())
        try:
            with Heartbeat(trial, sweep.heartbeat_s):
                outcome = run_trial(study, trial, settings, threads)
        except BaseException as e:
            frozen = study._storage.get_trial(trial._trial_id)
            # Lightning turns Ctrl-C into SystemExit(1) and SIGTERM into SIGTERMException (a
            # SystemExit): all of them stop the worker, and the trial is retried on resume.
            if isinstance(e, KeyboardInterrupt | SystemExit):
                why = "terminated" if type(e).__name__ == "SIGTERMException" else "interrupted"
                abandon(study, frozen, settings, f"{why}: the sweep was stopped mid-trial")
                raise
            from pipeline.data.tasks import DataError

            if isinstance(e, DataError):
                abandon(study, frozen, settings, f"DataError: {e}")
                raise
            errors += 1
            reason = f"{type(e).__name__}: {e}"
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL)
            log(f"{prefix}trial {trial.number} FAILED: {reason}")
            if errors >= MAX_CONSECUTIVE_ERRORS:
                log(f"{prefix}stopping: {errors} trials in a row raised")
                raise
            continue
        errors = 0
        try:
            if outcome.state == TrialState.COMPLETE:
                study.tell(trial, outcome.values)
            else:
                study.tell(trial, state=outcome.state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker took this one for dead (no heartbeat within grace_s) and queued
            # its parameters again; the retry will count, this result does not.
            log(f"{prefix}trial {trial.number} was marked failed meanwhile; result dropped")
            continue
        ran += 1
        log(prefix + progress_line(study, settings, trial.number, outcome, workers))
    return ran


def _pct(v: float) -> str:
    return f"{v * 100:.1f}"


def progress_line(
    study: optuna.Study, settings: Settings, number: int, outcome: Outcome, workers: int
) -> str:
    """``trial 7 COMPLETE (71 s): plasticity 97.3, retention 88.1 | 8/30 ... ~20 min left``."""
    names = [o["name"] for o in settings.objectives]
    total = settings.config.trials
    trials = study.get_trials(deepcopy=False)
    what = outcome.state.name
    if outcome.values is not None:
        what += ": " + ", ".join(
            f"{n} {_pct(v)}" for n, v in zip(names, outcome.values, strict=True)
        )
    elif outcome.note:
        what += f": {outcome.note}"
    done = [t for t in trials if t.state in FINISHED or _failed_on_its_own(t)]
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


def _failed_on_its_own(t: FrozenTrial) -> bool:
    # Failures recorded as "SystemExit"/"SIGTERMException" were interrupts inside Lightning that
    # studies of an earlier version took for the trial's own failure: they do not count either.
    interrupted = str(t.user_attrs.get("fail_reason", "")).startswith(
        ("SystemExit", "SIGTERMException")
    )
    return t.state == TrialState.FAIL and not t.user_attrs.get("crashed") and not interrupted


def spawn_workers(name: str, storage: str, workers: int) -> list[int]:
    """Run ``workers`` worker processes on the study; their exit codes."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline",
                "sweep-worker",
                name,
                "--storage",
                storage,
                "--index",
                str(i),
                "--workers",
                str(workers),
            ]
        )
        for i in range(workers)
    ]
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:  # they got the same SIGINT from the terminal; wait for their cleanup
            p.wait()
        raise


def sweep(
    experiment: str,
    strategy: Sequence[str],
    sweep_name: str = "default",
    sweep_overrides: Sequence[str] = (),
    overrides: Sequence[str] = (),
    *,
    study: str = "",
    storage: str = "",
    workers: int = 1,
    log: Callable[[str], None] = say,
) -> optuna.Study:
    """Start or resume a study and run it to its number of trials, then write its report.

    Args:
        experiment: file of ``conf/experiment/``.
        strategy: strategy names (their ``search:`` blocks make the space).
        sweep_name: file of ``conf/sweep/``.
        sweep_overrides: ``key=value`` on the sweep config (``trials=10``).
        overrides: ``key=value`` on the experiment config, for every trial.
        study: study name (default :func:`study_name`).
        storage: journal file or RDB URL (default: the tracking store's journal).
        workers: worker processes (1: this process).
    """
    cfg = compose_sweep(sweep_name, sweep_overrides)
    if workers < 1:
        raise ConfigError("workers: must be >= 1")
    name = study or study_name(experiment, strategy, sweep_name)
    store = compose(experiment, [f"strategy=[{','.join(strategy)}]", *overrides]).tracking.store
    storage = storage or default_storage(store)
    st, settings = create_or_resume(experiment, strategy, cfg, overrides, name, storage, log)
    if cfg.objective == "pareto":
        log("note: Optuna does not prune multi-objective studies; every trial runs to the end")
    parent = st.user_attrs[PARENT_ATTR]
    status = "FAILED"
    try:
        if workers == 1:
            run_worker(name, storage, 0, 1, log)
            status = "FINISHED"
        else:
            codes = spawn_workers(name, storage, workers)
            if any(codes):
                raise RuntimeError(f"a sweep worker failed (exit codes {codes})")
            status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        # The report of what finished is written even when the sweep stops early.
        result = load_study(name, storage)
        try:
            finalize(result, settings, log)
        finally:
            client_for(settings.store).set_terminated(parent, status=status)
    return result


# --- the study's report -------------------------------------------------------------------------


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front (or, for one objective, the best trial)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def default_trial(study: optuna.Study) -> FrozenTrial | None:
    """The complete trial that ran the strategy's default hyperparameters, if any."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("default"):
            return t
    return None


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    sign = [1.0 if d == "maximize" else -1.0 for d in directions]
    ge = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    gt = any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))
    return ge and gt


def finalize(study: optuna.Study, settings: Settings, log: Callable[[str], None] = say) -> Path:
    """Tag every trial's MLflow run (state, Pareto membership) and write the study's report:
    Pareto front, optimisation history and parameter importances (optuna.visualization's
    matplotlib backend), the trials table and a summary, to reports/ and the parent run.

    Returns:
        The report folder.
    """
    client = client_for(settings.store)
    parent = study.user_attrs[PARENT_ATTR]
    exp_id = client.get_run(parent).info.experiment_id
    run = Run(client, parent, exp_id)
    best = {t.number for t in front(study)}
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        run_id = t.user_attrs.get("mlflow_run_id") or trial_run_id(
            settings, study.study_name, t.number
        )
        if run_id:
            client.set_tag(run_id, "optuna.state", t.state.name)
            client.set_tag(run_id, "pareto", str(t.number in best).lower())
    out = REPORTS_DIR / f"sweep-{study.study_name}"
    out.mkdir(parents=True, exist_ok=True)
    summary = study_summary(study, settings)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    run.log_json(summary, "summary.json")
    if trials:
        frame = study.trials_dataframe()
        frame.to_csv(out / "trials.csv", index=False)
        run.log_text(frame.to_csv(index=False), "trials.csv")
    for fname, fig in study_figures(study, settings):
        fig.savefig(out / fname, dpi=120, bbox_inches="tight")
        run.log_figure(fig, fname)
    states = [t.state for t in trials]
    run.log_metrics(
        {
            "trials/complete": states.count(TrialState.COMPLETE),
            "trials/pruned": states.count(TrialState.PRUNED),
            "trials/failed": states.count(TrialState.FAIL),
            "front/size": len(best),
        }
    )
    log(f"study report: {out}/ (and the MLflow parent run {parent})")
    return out


def study_summary(study: optuna.Study, settings: Settings) -> dict[str, Any]:
    """The study as JSON: settings, trial counts, the front, the default trial."""
    names = [o["name"] for o in settings.objectives]

    def describe(t: FrozenTrial) -> dict[str, Any]:
        return {
            "number": t.number,
            "params": t.params,
            "values": dict(zip(names, t.values or [], strict=False)),
            "default": bool(t.user_attrs.get("default")),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        }

    trials = study.get_trials(deepcopy=False)
    d = default_trial(study)
    return {
        "study": study.study_name,
        "settings": asdict(settings),
        "states": {s.name: sum(t.state == s for t in trials) for s in TrialState},
        "front": [describe(t) for t in front(study)],
        "default": describe(d) if d else None,
        "front_dominates_default": (
            any(
                dominates(t.values, d.values, [o["direction"] for o in settings.objectives])
                for t in front(study)
            )
            if d and d.number not in {t.number for t in front(study)}
            else False
        ),
    }


def study_figures(study: optuna.Study, settings: Settings) -> list[tuple[str, Any]]:
    """(file name, figure) pairs from ``optuna.visualization.matplotlib``; a figure that needs
    more complete trials than the study has is left out."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    names = [o["name"] for o in settings.objectives]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    figs: list[tuple[str, Any]] = []
    if not complete:
        return figs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(names) == 2:
            ax = ovm.plot_pareto_front(study, target_names=[f"{n} (val)" for n in names])
            d = default_trial(study)
            if d is not None:
                x, y = d.values
                ax.scatter([x], [y], marker="*", s=220, c="black", zorder=5, label="defaults")
                ax.legend(loc="best")
            ax.set_title(f"{study.study_name}: Pareto front ({len(complete)} complete trials)")
            figs.append(("pareto_front.png", ax.figure))
        for i, n in enumerate(names):

            def target(t: FrozenTrial, i: int = i) -> float:
                return float(t.values[i])

            ax = ovm.plot_optimization_history(study, target=target, target_name=n)
            figs.append((f"history_{n}.png", ax.figure))
            if len(complete) >= 2:
                try:
                    ax = ovm.plot_param_importances(study, target=target, target_name=n)
                except (ValueError, RuntimeError):
                    continue  # too few distinct trials for an importance estimate
                figs.append((f"importances_{n}.png", ax.figure))
    return figs
