"""The fallback for a cell whose published hyperparameters do not reproduce (``tune:`` in
``conf/table/``): before the cell's runs, an Optuna study on the validation split chooses the
method's own hyperparameters, with ``make sweep``'s machinery (one objective, the final average
accuracy; trial 0 runs the published values), and the cell's runs take the best trial's. The
test split is never read to choose. The study is named after the table and the cell, so a
reproduction resumed finds it again and runs only the trials it lacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.errors import ConfigError
from pipeline.reproduce.spec import Cell, Table
from pipeline.sweep import sweep
from pipeline.sweep.config import compose_sweep
from pipeline.sweep.space import override_value


def study_of(table: Table, cell: Cell) -> str:
    """The cell's study: ``reproduce-<table>-<cell>``."""
    return f"reproduce-{table.name}-{cell.key}"


def check(cell: Cell) -> None:
    """The cell's sweep file exists and has one objective (the best trial is the choice).

    Raises:
        ConfigError: a bad sweep file, or one of two objectives (a Pareto front has no best).
    """
    assert cell.tune is not None
    sweep_cfg = compose_sweep(cell.tune.sweep, [])
    if sweep_cfg.objective != "accuracy":
        raise ConfigError(
            f"tune.sweep: conf/sweep/{cell.tune.sweep}.yaml has objective "
            f"'{sweep_cfg.objective}'; a cell takes the best trial of one objective (accuracy)"
        )


def tune(
    table: Table,
    cell: Cell,
    overrides: Sequence[str],
    jobs: int,
    log: Callable[[str], None],
) -> tuple[list[str], str]:
    """Run (or resume) the cell's study: the best trial's values as overrides, and the line
    the report writes beside the cell.

    Args:
        table: the table.
        cell: a cell with ``tune`` set.
        overrides: every run's overrides (after the cell's own).
        jobs: the study's worker processes.
        log: progress lines.
    """
    assert cell.tune is not None
    name = study_of(table, cell)
    every = [*cell.overrides, *overrides, f"scenario={cell.scenario}", f"seed={cell.tune.seed}"]
    log(f"{cell.key}: choosing its hyperparameters on validation (study {name})")
    study = sweep(
        table.experiment,
        cell.strategy,
        cell.tune.sweep,
        [f"trials={cell.tune.trials}"],
        every,
        study=name,
        workers=jobs,
        log=log,
    )
    best = study.best_trial
    chosen = [f"{k}={override_value(v)}" for k, v in sorted(best.params.items())]
    which = (
        "trial 0, the published values"
        if best.user_attrs.get("default")
        else (f"trial {best.number}")
    )
    why = (
        f"tuned: an Optuna study on the validation split ({cell.tune.trials} trials, study "
        f"{name}) chose {', '.join(chosen)} ({which}; validation average accuracy "
        f"{best.value:.1f})"
    )
    return chosen, why
