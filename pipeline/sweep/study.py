"""The study: where it is stored, how it is created once and resumed, and how its trials count.

Storages (``paths.studies``, ``$OPTUNA_STORAGE`` or ``STORAGE=``):

- a journal file (the default, ``mlruns/optuna/journal.log``): several worker processes of one
  machine share it;
- ``sqlite:///<file>``: one process (Optuna's own advice);
- ``postgresql://...``: workers on many machines, the engine options a long sweep needs
  (connections checked before use, a bounded pool, recycled before a server or firewall drops
  them).

Optuna creates a study or an RDB schema without a lock, and counting the finished trials then
asking for one more is two steps: two workers doing them at once overshoot the total or race
the creation. Both happen under :func:`storage_lock`: a file lock beside a journal or SQLite
file, a PostgreSQL advisory lock for a study shared by many machines (the engines' own locks,
not a coordinator of ours).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import optuna
from mlflow.exceptions import MlflowException
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from pipeline import runfiles
from pipeline.config import ExperimentConfig
from pipeline.data.datamodule import ContinualDataModule
from pipeline.errors import ConfigError
from pipeline.experiment import compose, require_one_process
from pipeline.journal import GuardedJournal, StorageError, repair
from pipeline.locks import file_lock, pg_lock
from pipeline.paths import PathsConfig, redact, uri_scheme
from pipeline.provenance import git_commit
from pipeline.retry import patiently
from pipeline.sweep.config import SCORE_UNIT, Settings, SweepConfig
from pipeline.sweep.space import corner_params, lookup, objectives, search_space, trial_config
from pipeline.tracking import Run, Store

SETTINGS_ATTR = "pipeline.settings"  # study user attribute: the protocol record
PARENT_ATTR = "pipeline.parent_run_id"
WORKERS_ATTR = "pipeline.workers_started"  # seeds each new worker's sampler differently
# Trial states that count towards the requested number of trials. A failure counts when the
# trial itself failed (its loss diverged, its config was refused); a failure recorded because
# the worker died does not: its parameters are retried.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PG_ENGINE = {
    "pool_pre_ping": True,  # a connection the server dropped (idle, restarted) is replaced
    "pool_size": 2,  # a worker asks and tells one trial at a time, plus its heartbeat
    "max_overflow": 2,
    "pool_recycle": 300,  # seconds: before firewalls and servers drop idle connections
    "connect_args": {"connect_timeout": 10},
}


# -- storages ------------------------------------------------------------------------------------
# One storage per URL and process: an RDB storage holds a pool of connections, and opening
# one per call (a worker loads its study more than once, a test polls) exhausts the server's
# connection slots; a forked process must not share its parent's.
_STORAGES: dict[tuple[int, str], BaseStorage] = {}


def open_storage(url: str) -> BaseStorage:
    """A journal file path, ``sqlite:///...`` or ``postgresql://...`` (one per process).

    A journal whose last line is torn is repaired first (:mod:`pipeline.journal`).

    Raises:
        StorageError: an RDB that cannot be reached or refuses the credentials; a journal
            damaged before its last line.
    """
    key = (os.getpid(), url)
    if key not in _STORAGES:
        _STORAGES[key] = _open_storage(url)
    return _STORAGES[key]


def _open_storage(url: str) -> BaseStorage:
    scheme = uri_scheme(url)
    if not scheme:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        repair(path)
        return JournalStorage(GuardedJournal(str(path)))
    engine: dict[str, Any] = PG_ENGINE if scheme == "postgresql" else {"pool_pre_ping": True}
    try:
        with _schema_lock(url):  # Optuna creates its tables without a lock
            return PatientRDBStorage(url, engine_kwargs=dict(engine))
    except Exception as e:  # sqlalchemy's OperationalError and friends: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"study storage {redact(url)}: {redact(first)[:300]}") from None


class PatientRDBStorage(RDBStorage):
    """Optuna's RDB storage whose calls ride out a database that restarts or drops off the
    network for up to :data:`pipeline.retry.RETRY_S` (:func:`pipeline.retry.patiently`), so
    that a sweep's workers carry on through a PostgreSQL restart. Opening it still fails at
    once: a storage that is down when a command starts is bad input.

    Each call of Optuna's storage API is one transaction, rolled back when the connection
    drops, so calling it again does it once. Only the outermost call retries: one storage
    method calling another would otherwise multiply the waits.
    """

    _depth = threading.local()


def _patient(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def patient(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(PatientRDBStorage._depth, "n", 0)
        PatientRDBStorage._depth.n = depth + 1
        try:
            if depth:
                return method(self, *args, **kwargs)
            what = f"the study storage {redact(self.url)}"
            return patiently(lambda: method(self, *args, **kwargs), what)
        finally:
            PatientRDBStorage._depth.n = depth

    return patient


for _name in [n for n in vars(BaseStorage) if not n.startswith("_")]:
    if callable(getattr(RDBStorage, _name, None)):
        setattr(PatientRDBStorage, _name, _patient(_name))


# Beside a journal or SQLite file; not "<file>.lock", which Optuna's journal uses for its own
# (symlink) lock.
LOCK_SUFFIX = ".pipeline-lock"


def _schema_lock(url: str) -> AbstractContextManager[None]:
    if uri_scheme(url) == "postgresql":
        return pg_lock(url, "pipeline:optuna-schema")
    return file_lock(Path(url.partition(":///")[2] + LOCK_SUFFIX))


def storage_lock(url: str, study: str) -> AbstractContextManager[None]:
    """An exclusive lock on ``study`` among every worker of the storage (see the module
    docstring): a file lock for a journal or SQLite file, an advisory lock in PostgreSQL."""
    scheme = uri_scheme(url)
    if scheme == "postgresql":  # workers hold on through a PostgreSQL restart
        return pg_lock(url, f"pipeline:study:{study}", patient=True)
    path = url.partition(":///")[2] if scheme else url
    return file_lock(Path(path + LOCK_SUFFIX))


def load_settings(study: optuna.Study) -> Settings:
    """The study's protocol record (keys of older versions that are gone are ignored)."""
    raw = study.user_attrs.get(SETTINGS_ATTR)
    if raw is None:
        raise ConfigError(f"study '{study.study_name}' was not created by `make sweep`")
    if raw.get("unit") != SCORE_UNIT:
        raise ConfigError(
            f"study '{study.study_name}' records its scores as fractions (an older version made "
            "it): run the sweep again under a new name, STUDY=<name>"
        )
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in raw.items() if k in known})


def load_study(name: str, storage: str) -> optuna.Study:
    """An existing study, or a one-line error listing the studies of the storage."""
    if not uri_scheme(storage) and not Path(storage).is_file():
        raise ConfigError(f"no study storage at {storage} (run `make sweep` first)")
    st = open_storage(storage)
    try:
        return optuna.load_study(study_name=name, storage=st)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(st)) or "none"
        raise ConfigError(f"no study '{name}' in {redact(storage)} (studies: {names})") from None


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines ("A new study created...") and experimental warnings off."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


# -- counting --------------------------------------------------------------------------------------
def failed_on_its_own(t: FrozenTrial) -> bool:
    """A failure of the trial itself (a diverging loss, a refused config), not of its worker."""
    # Failures recorded as "SystemExit"/"SIGTERMException" were interrupts inside Lightning that
    # studies of an earlier version took for the trial's own failure: they do not count either.
    interrupted = str(t.user_attrs.get("fail_reason", "")).startswith(
        ("SystemExit", "SIGTERMException")
    )
    return t.state == TrialState.FAIL and not t.user_attrs.get("crashed") and not interrupted


def finished(trials: Sequence[FrozenTrial]) -> int:
    """Trials that are over and count towards the total."""
    return sum(1 for t in trials if t.state in FINISHED or failed_on_its_own(t))


def counted(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count towards the total: finished, or running."""
    return finished(trials) + sum(1 for t in trials if t.state == TrialState.RUNNING)


def make_sampler(sweep: SweepConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The sampler, seeded with ``seed + offset`` (see :func:`claim_offset`)."""
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


def claim_offset(study: optuna.Study) -> int:
    """A sampler seed offset no other worker of the study has (call under the storage lock):
    the count of workers started on it, times 1000. The first worker of a new study gets 0,
    so a sweep with one worker is reproducible; parallel and resumed workers, even started at
    the same moment on different machines, draw different random points."""
    n = int(study.user_attrs.get(WORKERS_ATTR, 0))
    study.set_user_attr(WORKERS_ATTR, n + 1)
    return 1000 * n


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.objective != "accuracy" or sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    if sweep.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials)


# -- creating and resuming -------------------------------------------------------------------------
def prepare(
    experiment: str,
    strategy: Sequence[str],
    sweep: SweepConfig,
    overrides: Sequence[str],
) -> tuple[Settings, ExperimentConfig]:
    """Validate everything a study needs before it or any run exists: the settings, and the
    config of the experiment (whose ``paths`` say where this machine's data and stores are).

    ``paths.*`` overrides apply to this machine only; the others are recorded in the settings.

    Raises:
        ConfigError: a bad experiment, override, sweep file or range.
        DataError: the data is missing.
    """
    space = search_space(strategy, sweep)
    overrides = [*sweep.overrides, *overrides]
    base = compose(experiment, [f"strategy=[{','.join(strategy)}]", *overrides])
    require_one_process(base, "sweep")
    if sweep.protocol == "prefix" and sweep.prefix_tasks > len(base.data.tasks):
        raise ConfigError(
            f"prefix_tasks={sweep.prefix_tasks}, but {experiment} has {len(base.data.tasks)} tasks"
        )
    if sweep.protocol == "validation" and len(base.data.tasks) < 2 and sweep.objective == "pareto":
        raise ConfigError(f"{experiment} has one task: there is nothing to forget")
    settings = Settings(
        experiment=experiment,
        strategy=list(strategy),
        sweep=asdict(sweep),
        overrides=[o for o in overrides if not o.startswith("paths.")],
        space={k: asdict(p) for k, p in space.items()},
        objectives=[asdict(o) for o in objectives(sweep)],
        defaults={k: lookup(base, k) for k in space},
        mlflow_experiment=base.tracking.experiment or base.name,
        tasks=[t.name for t in base.data.tasks],
        store=str(Store.of(base.paths)),
        commit=git_commit(),
    )
    for params in corner_params(space):  # every range's ends must make a valid config
        trial_config(settings, params)
    data = ContinualDataModule(base.data, base.seed, 1, base.scenario, base.paths.data_dir())
    data.setup()  # DataError now, not in a worker
    return settings, base


def create_or_resume(
    experiment: str,
    strategy: Sequence[str],
    sweep: SweepConfig,
    overrides: Sequence[str],
    name: str,
    log: Callable[[str], None] = print,
) -> tuple[optuna.Study, Settings, PathsConfig]:
    """Validate everything, then create the study and its MLflow parent run, or join them.

    Runs in the launching process before any worker starts, under :func:`storage_lock`, so the
    study, its settings and its parent run are created once even when sweeps start at the same
    moment on several machines; the later ones join (resume) it.

    Returns:
        The study, its settings (the creator's, when joining) and this machine's paths.

    Raises:
        ConfigError: a bad experiment, override, sweep file or range; a study of that name with
            other settings; a storage or store that cannot be used.
        DataError: the data is missing.
    """
    settings, base = prepare(experiment, strategy, sweep, overrides)
    paths, storage = base.paths, base.paths.studies_uri()
    st = open_storage(storage)  # StorageError now: the storage is down or refuses us
    store = Store.of(paths)
    store.client()  # StoreError now: the store is down or refuses us
    directions: list[Any] = [o.direction for o in objectives(sweep)]
    with quiet_optuna(), storage_lock(storage, name):
        study = optuna.create_study(
            study_name=name, storage=st, directions=directions, load_if_exists=True
        )
        if study.user_attrs.get(SETTINGS_ATTR) is not None:
            return study, _join(study, settings, store, log), paths
        _create(study, settings, store, sweep, log)
        log(
            f"created study '{name}' in {redact(storage)}; MLflow parent run "
            f"{study.user_attrs[PARENT_ATTR]}"
        )
    return study, settings, paths


def _join(
    study: optuna.Study, settings: Settings, store: Store, log: Callable[[str], None]
) -> Settings:
    """Resume (or join) an existing study with the same settings; its parent run runs again."""
    previous = load_settings(study)
    if previous.comparable() != settings.comparable():
        diff = [k for k, v in settings.comparable().items() if previous.comparable()[k] != v]
        raise ConfigError(
            f"study '{study.study_name}' exists with other settings ({', '.join(diff)}): "
            "resume it with the same ones, or name a new study with STUDY=<name>"
        )
    trials_wanted = settings.sweep["trials"]
    if previous.sweep["trials"] != trials_wanted:
        previous.sweep["trials"] = trials_wanted
        study.set_user_attr(SETTINGS_ATTR, asdict(previous))
    parent = study.user_attrs[PARENT_ATTR]
    try:
        store.client().update_run(parent, status="RUNNING")
    except MlflowException:
        raise ConfigError(
            f"study '{study.study_name}': its parent run {parent} is not in the store {store} "
            f"(the study's runs are in {previous.store or 'another store'}): point "
            "MLFLOW_TRACKING_URI at that store"
        ) from None
    done = finished(study.get_trials(deepcopy=False))
    log(f"resuming study '{study.study_name}': {done} of {trials_wanted} trials finished so far")
    return previous


def _create(
    study: optuna.Study,
    settings: Settings,
    store: Store,
    sweep: SweepConfig,
    log: Callable[[str], None],
) -> None:
    """Record the settings, name the objectives, open the parent run, enqueue the defaults."""
    name = study.study_name
    study.set_metric_names(settings.names)
    exp_id = store.experiment_id(settings.mlflow_experiment)
    tags = {
        "kind": "sweep",
        "sweep.study": name,
        "strategy": "+".join(settings.strategy),
        "mlflow.source.git.commit": settings.commit,
    }
    info = store.create_run(exp_id, f"sweep {name}", tags)
    run = Run(store, info.run_id, exp_id)
    run.log_params(parent_params(settings, sweep, name))
    run.log_json(asdict(settings), runfiles.SWEEP_SETTINGS_FILE)
    study.set_user_attr(SETTINGS_ATTR, asdict(settings))
    study.set_user_attr(PARENT_ATTR, info.run_id)
    if sweep.defaults_first:
        space = settings.params
        outside = [k for k, v in settings.defaults.items() if not space[k].contains(v)]
        if outside:
            log(f"defaults not enqueued: {', '.join(outside)} outside the search range")
        else:
            study.enqueue_trial(settings.defaults, user_attrs={"default": True})


def parent_params(settings: Settings, sweep: SweepConfig, name: str) -> dict[str, Any]:
    """The parent run's params: the protocol record, readable in the MLflow UI."""
    return {
        "study": name,
        "experiment": settings.experiment,
        "strategy": "+".join(settings.strategy),
        "objectives": ", ".join(f"{o['name']} ({o['direction']})" for o in settings.objectives),
        "protocol": sweep.protocol
        + (f" (first {sweep.prefix_tasks} tasks)" if sweep.protocol == "prefix" else ""),
        "splits_read_by_trials": "val",
        "sampler": sweep.sampler,
        "sampler_seed": sweep.seed,
        "pruner": make_pruner(sweep).__class__.__name__,
        "trials": sweep.trials,
        "overrides": " ".join(settings.overrides),
        "tasks": " -> ".join(settings.tasks),
        **{f"space.{k}": json.dumps(v) for k, v in settings.space.items()},
        **{f"default.{k}": v for k, v in settings.defaults.items()},
    }
