"""A study's report, computed: the front, the default trial, the summary, the figures, the
tags of each trial's run. Nothing is written here (:func:`pipeline.sweep.finalize` does)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import optuna
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from pipeline import runfiles
from pipeline.config.compose import compose_paths
from pipeline.config.paths import ENV_STUDIES, redact, uri_scheme
from pipeline.sweep.config import Settings


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


def study_summary(study: optuna.Study, settings: Settings) -> dict[str, Any]:
    """The study as JSON: settings, trial counts, the front, the default trial."""
    names = settings.names

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


def study_figures(study: optuna.Study, settings: Settings) -> list[tuple[str, Figure]]:
    """(file name, figure) pairs from ``optuna.visualization.matplotlib``; a figure that needs
    more complete trials than the study has is left out."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    names = settings.names
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    figs: list[tuple[str, Figure]] = []
    if not complete:
        return figs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(names) == 2:
            ax = ovm.plot_pareto_front(study, target_names=[f"{n} (val, %)" for n in names])
            d = default_trial(study)
            if d is not None:
                x, y = d.values
                ax.scatter([x], [y], marker="*", s=220, c="black", zorder=5, label="defaults")
                ax.legend(loc="best")
            ax.set_title(f"{study.study_name}: Pareto front ({len(complete)} complete trials)")
            figs.append((runfiles.PARETO_FIGURE, _root(ax)))
        for i, n in enumerate(names):

            def target(t: FrozenTrial, i: int = i) -> float:
                return float(t.values[i])

            ax = ovm.plot_optimization_history(study, target=target, target_name=f"{n} (val, %)")
            figs.append((runfiles.history_figure(n), _root(ax)))
            if len(complete) >= 2:
                try:
                    ax = ovm.plot_param_importances(study, target=target, target_name=n)
                except (ValueError, RuntimeError):
                    continue  # too few distinct trials for an importance estimate
                figs.append((runfiles.importances_figure(n), _root(ax)))
    return figs


def _root(ax: Any) -> Figure:
    """The figure an optuna.visualization axes is drawn in."""
    fig = ax.get_figure(root=True)
    assert isinstance(fig, Figure)
    return fig


def trial_tags(study: optuna.Study) -> dict[str, dict[str, str]]:
    """The tags of each trial's MLflow run (by run id): its state and Pareto membership."""
    best = {t.number for t in front(study)}
    return {
        str(t.user_attrs["mlflow_run_id"]): {
            "optuna.state": t.state.name,
            "pareto": str(t.number in best).lower(),
        }
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("mlflow_run_id")
    }


def state_counts(study: optuna.Study) -> dict[str, float]:
    """The parent run's metrics: trials per state, the size of the front."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "trials/complete": states.count(TrialState.COMPLETE),
        "trials/pruned": states.count(TrialState.PRUNED),
        "trials/failed": states.count(TrialState.FAIL),
        "front/size": len(front(study)),
    }


def closing_hint(study: str, overrides: Sequence[str]) -> str:
    """The line a sweep ends with: how to choose, and where to browse in the mode that the
    ``paths.`` overrides among ``overrides`` (and the environment) set.

    A tracking server shows the runs at its own URL (``make ui`` would open an empty local
    store); a study in PostgreSQL reaches ``make dashboard`` only through ``STORAGE=`` unless
    ``$OPTUNA_STORAGE`` already names it.
    """
    paths = compose_paths([o for o in overrides if o.startswith("paths.")])
    store = paths.store_uri()
    runs = f"the runs at {redact(store)}" if uri_scheme(store) in ("http", "https") else "make ui"
    studies = paths.studies_uri()
    dashboard = "make dashboard"
    if uri_scheme(studies) == "postgresql" and os.environ.get(ENV_STUDIES) != studies:
        dashboard += f" STORAGE={redact(studies)}"
    return f"choose and test: make best STUDY={study}; browse: {dashboard}, {runs}"
