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

Storage and resuming: the study lives in ``paths.studies`` (an Optuna journal file in the
tracking store by default, for the workers of one machine; ``postgresql://`` for workers on many
machines: :mod:`pipeline.sweep.storage`). Running the same sweep again, on this machine or
another, resumes or joins it: finished trials are kept; a trial whose worker died is marked
failed with the reason and its parameters are enqueued again (:mod:`pipeline.sweep.workers`);
the sweep stops when ``trials`` trials have finished (complete, pruned, or failed for a reason
of their own, such as a diverging loss). Counting the finished trials and asking for one more
happen under the storage's lock, so workers never overshoot the total.

The package: :mod:`~pipeline.sweep.config` (the sweep file), :mod:`~pipeline.sweep.space` (the
search space, objectives and a trial's config), :mod:`~pipeline.sweep.storage` (storages and
their lock), :mod:`~pipeline.sweep.trials` (counting, samplers, pruners),
:mod:`~pipeline.sweep.study` (creation and resuming), :mod:`~pipeline.sweep.workers` (trials,
liveness, the worker loop), :mod:`~pipeline.sweep.report` (the report, computed) and, here,
:func:`sweep` and :func:`finalize`, which writes the report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna

from pipeline import runfiles
from pipeline.config.paths import PathsConfig
from pipeline.disk import room_for
from pipeline.errors import ConfigError, RunFailed
from pipeline.store import Store
from pipeline.sweep.config import Settings, compose_sweep
from pipeline.sweep.report import state_counts, study_figures, study_summary, trial_tags
from pipeline.sweep.space import study_name
from pipeline.sweep.study import PARENT_ATTR, create_or_resume, load_settings, load_study
from pipeline.sweep.trials import finished
from pipeline.sweep.workers import run_worker, say, spawn_workers
from pipeline.tracking import Run

__all__ = ["SweepError", "finalize", "load_settings", "load_study", "run_worker", "sweep"]


class SweepError(RunFailed):
    """The workers stopped before the study had its total (exit code 1)."""


def sweep(
    experiment: str,
    strategy: Sequence[str],
    sweep_name: str = "default",
    sweep_overrides: Sequence[str] = (),
    overrides: Sequence[str] = (),
    *,
    study: str = "",
    workers: int = 1,
    log: Callable[[str], None] = say,
) -> optuna.Study:
    """Start, resume or join a study, run it to its number of trials, then write its report.

    Args:
        experiment: file of ``conf/experiment/``.
        strategy: strategy names (their ``search:`` blocks make the space).
        sweep_name: file of ``conf/sweep/``.
        sweep_overrides: ``key=value`` on the sweep config (``trials=10``).
        overrides: ``key=value`` on the experiment config, for every trial; ``paths.*`` ones
            (where this machine's data and stores are) are not part of the study.
        study: study name (default :func:`pipeline.sweep.space.study_name`).
        workers: worker processes on this machine (1: this process).

    Raises:
        ConfigError: bad input, before any study or run exists.
        DataError: the data is missing.
    """
    cfg = compose_sweep(sweep_name, sweep_overrides)
    if workers < 1:
        raise ConfigError("workers: must be >= 1")
    name = study or study_name(experiment, strategy, sweep_name)
    check_study_name(name)
    _, settings, paths = create_or_resume(experiment, strategy, cfg, overrides, name, log)
    if cfg.objective == "pareto":
        log("note: Optuna does not prune multi-objective studies; every trial runs to the end")
    store = Store.of(paths)
    status = "FAILED"
    try:
        _run_workers(name, paths, workers, log)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        result = load_study(name, paths.studies_uri())
        if status == "FINISHED" and finished(result.get_trials(deepcopy=False)) < cfg.trials:
            status = "FAILED"  # the workers gave up before the study had its total
        try:
            # The report of what finished is written when the sweep ends or fails; not when it
            # is stopped, which must take seconds (`timeout -k` kills what lingers): the next
            # `make sweep` resumes the study and writes it.
            if status != "KILLED":
                finalize(result, settings, store, paths.reports_dir(), log)
        finally:
            Run.get(store, result.user_attrs[PARENT_ATTR]).end(status)
    if status == "FAILED":
        raise SweepError(f"study '{name}' stopped short of {cfg.trials} trials (see above)")
    return result


def _run_workers(name: str, paths: PathsConfig, workers: int, log: Callable[[str], None]) -> None:
    """Run the study's trials: here (one worker) or in ``workers`` worker processes."""
    if workers == 1:
        run_worker(name, paths, 0, 1, log)
        return
    codes = spawn_workers(name, paths, workers)
    if any(codes):
        log(f"worker exit codes {codes}")


STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$")


def check_study_name(name: str) -> None:
    """A study name is a folder name of the reports and a file name of ``make best``: letters,
    digits and ``_ . + -``, starting with a letter or digit, at most 100 characters.

    Raises:
        ConfigError: anything else (``../x``, quotes, spaces).
    """
    if not STUDY_NAME.match(name):
        raise ConfigError(
            f"study: '{name}' must be letters, digits and _ . + - (first a letter or a digit), "
            "at most 100 characters"
        )


def finalize(
    study: optuna.Study,
    settings: Settings,
    store: Store,
    reports: Path,
    log: Callable[[str], None] = say,
) -> Path:
    """Tag every trial's MLflow run (state, Pareto membership) and write the study's report:
    Pareto front, optimisation history and parameter importances (optuna.visualization's
    matplotlib backend), the trials table and a summary, to ``reports/sweep-<study>/`` and the
    parent run.

    Returns:
        The report folder.
    """
    parent = Run.get(store, study.user_attrs[PARENT_ATTR])
    for run_id, tags in trial_tags(study).items():
        try:
            Run.get(store, run_id).set_tags(tags)
        except LookupError:
            log(f"warning: trial run {run_id} is not in the store {store}")
    out = reports / f"sweep-{study.study_name}"
    files = [out / runfiles.SWEEP_SUMMARY_FILE]
    with room_for(out, "the study's report"):
        out.mkdir(parents=True, exist_ok=True)
        files[0].write_text(json.dumps(study_summary(study, settings), indent=2))
        if study.get_trials(deepcopy=False):
            study.trials_dataframe().to_csv(out / runfiles.TRIALS_FILE, index=False)
            files.append(out / runfiles.TRIALS_FILE)
        for fname, fig in study_figures(study, settings):
            fig.savefig(out / fname, dpi=120, bbox_inches="tight")
            files.append(out / fname)
    runfiles.log_report_files(parent, files)
    parent.log_metrics(state_counts(study))
    log(f"study report: {out}/ (and the MLflow parent run {parent.run_id})")
    return out
