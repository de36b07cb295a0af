"""The study: created once (its settings recorded, its parent run opened, the defaults queued)
and resumed or joined with the same settings. Where it is stored and the lock its workers
share: :mod:`pipeline.sweep.storage`; how its trials count and are drawn:
:mod:`pipeline.sweep.trials`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import optuna
from mlflow.exceptions import MlflowException

from pipeline import runfiles
from pipeline.config.paths import PathsConfig, redact, uri_scheme
from pipeline.config.schema import ExperimentConfig
from pipeline.data.datamodule import ContinualDataModule
from pipeline.errors import ConfigError
from pipeline.experiment import compose, require_one_process
from pipeline.provenance import git_commit
from pipeline.store import Store
from pipeline.sweep.config import SCORE_UNIT, Settings, SweepConfig
from pipeline.sweep.space import corner_params, lookup, objectives, search_space, trial_config
from pipeline.sweep.storage import open_storage, storage_lock
from pipeline.sweep.trials import finished, make_pruner, quiet_optuna
from pipeline.tracking import Run

SETTINGS_ATTR = "pipeline.settings"  # study user attribute: the protocol record
PARENT_ATTR = "pipeline.parent_run_id"


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
