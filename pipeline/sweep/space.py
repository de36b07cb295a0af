"""What a study searches and optimises: the search space (the strategies' ``search:`` blocks
plus the sweep file's ``space``), Optuna's distributions, the objectives, and the experiment
config of one trial."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from pipeline.config.paths import PathsConfig
from pipeline.config.schema import ExperimentConfig, to_dict
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.sweep.config import SearchParam, Settings, SweepConfig, search_param, strategy_search


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
    paths: PathsConfig | None = None,
    *,
    prefix: bool = True,
    threads: int = 0,
) -> ExperimentConfig:
    """The experiment config of one trial (or of ``make best``'s evaluation).

    Args:
        settings: the study's settings.
        params: the trial's hyperparameters, keyed by config path.
        paths: where this worker's data and stores are (a study's settings hold none: its
            workers may run on several machines); ``None`` keeps the experiment's.
        prefix: apply the prefix protocol's truncation (trials do; the final run does not).
        threads: torch threads when the experiment leaves them at 0 (workers share the cores).
    """
    overrides = [
        f"strategy=[{','.join(settings.strategy)}]",
        *settings.overrides,
        *(f"{k}={override_value(v)}" for k, v in params.items()),
    ]
    cfg = compose(settings.experiment, overrides)
    if paths is not None:
        cfg.paths = paths
    sweep = settings.config
    if prefix and sweep.protocol == "prefix":
        cfg.data.tasks = cfg.data.tasks[: sweep.prefix_tasks]
        cfg.data.benchmark = ""  # the saved config lists the tasks it ran
    if threads and not cfg.trainer.threads:
        cfg.trainer.threads = threads
    cfg.trainer.progress_bar = False  # trial lines, not bars, report a sweep's progress
    return cfg


def corner_params(space: dict[str, SearchParam]) -> list[dict[str, Any]]:
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


def study_name(experiment: str, strategy: Sequence[str], sweep: str) -> str:
    """Default study name: ``<experiment>-<strategy>`` (``-<sweep>`` unless the default)."""
    base = f"{experiment}-{'+'.join(strategy)}"
    return base if sweep == "default" else f"{base}-{sweep}"
