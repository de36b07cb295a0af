"""The sweep's configuration: ``conf/sweep/<name>.yaml`` and the search ranges of the
strategy files' ``search:`` blocks, typed and checked like the experiment config; and a study's
:class:`Settings`, the protocol record every worker reads back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.compose import build, describe, load_yaml, merge, strategy_file
from pipeline.errors import ConfigError, require

SEARCH_TYPES = ("float", "int", "categorical")


@dataclass
class SearchParam:
    """One hyperparameter's search range (a ``search:`` entry of a strategy or sweep file).

    Attributes:
        type: ``float``, ``int`` or ``categorical``.
        low, high: bounds of ``float`` and ``int`` (inclusive).
        log: sample ``float``/``int`` on a log scale (strengths and learning rates).
        choices: the values of a ``categorical``.
    """

    type: str = MISSING
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    def check(self, key: str) -> None:
        require(self.type in SEARCH_TYPES, key, f"type '{self.type}' is not one of {SEARCH_TYPES}")
        if self.type == "categorical":
            require(bool(self.choices), key, "a categorical needs a non-empty 'choices' list")
            return
        require(
            self.low is not None and self.high is not None and self.low <= self.high,
            key,
            f"needs low <= high, got low={self.low} high={self.high}",
        )
        assert self.low is not None
        require(not self.log or self.low > 0, key, "a log range needs low > 0")
        if self.type == "int":
            require(
                float(self.low).is_integer() and float(self.high or 0).is_integer(),
                key,
                "an int range needs integer bounds",
            )

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this range (a default outside it cannot be enqueued)."""
        if self.type == "categorical":
            return value in (self.choices or [])
        assert self.low is not None and self.high is not None
        return isinstance(value, int | float) and self.low <= value <= self.high


OBJECTIVES = ("pareto", "accuracy")
PROTOCOLS = ("validation", "prefix")
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("median", "halving", "none")


@dataclass
class SweepConfig:
    """An Optuna search over one experiment and strategy (``conf/sweep/<name>.yaml``).

    Attributes:
        name: the sweep file's name.
        trials: trials to complete (pruned and recorded failures count; crashed ones are
            retried).
        objective: ``pareto``: maximise plasticity and the second objective ``stability``
            (a Pareto front; Optuna cannot prune multi-objective studies); ``accuracy``: the
            final average accuracy alone, with pruning after each task.
        stability: second objective of ``pareto``: ``retention`` (mean final accuracy on the
            earlier tasks, maximised) or ``forgetting`` (max-based, minimised).
        protocol: ``validation``: every trial runs the whole sequence and is scored on the
            validation splits; ``prefix``: trials run only the first ``prefix_tasks`` tasks
            (hyperparameters frozen afterwards for the whole sequence). The test split is never
            read by a trial, only by ``make best``'s final evaluation.
        prefix_tasks: tasks a trial sees under the ``prefix`` protocol (>= 2).
        sampler: ``tpe`` (multi-objective TPE for ``pareto``), ``random`` or ``nsga2``.
        seed: sampler seed (reproducible with one worker only).
        startup_trials: random trials before TPE models the results.
        pruner: ``median`` or ``halving`` (successive halving) for ``accuracy``; ``none``.
        pruner_startup_trials: trials completed before the median pruner stops any.
        space: search ranges that replace or add to the strategy files' ``search:`` blocks, keyed
            by config path (``optim.lr``, ``strategies.ewc.lam``); ``null`` drops one.
        defaults_first: enqueue the strategy's default hyperparameters as the first trial, so the
            front can be compared with them.
        overrides: ``key=value`` overrides applied to every trial (and to ``make best``).
        heartbeat_s: how often a running trial says it is alive (in the study storage).
        grace_s: a trial silent this long (or whose process died) was cut off by a crash: it is
            marked failed and its parameters are retried.
    """

    name: str = MISSING
    description: str = ""
    trials: int = 30
    objective: str = "pareto"
    stability: str = "retention"
    protocol: str = "validation"
    prefix_tasks: int = 2
    sampler: str = "tpe"
    seed: int = 0
    startup_trials: int = 8
    pruner: str = "median"
    pruner_startup_trials: int = 4
    space: dict[str, Any] = field(default_factory=dict)
    defaults_first: bool = True
    overrides: list[str] = field(default_factory=list)
    heartbeat_s: float = 20.0
    grace_s: float = 120.0

    def check(self) -> None:
        require(self.trials >= 1, "trials", "must be >= 1")
        require(self.objective in OBJECTIVES, "objective", f"choose from {', '.join(OBJECTIVES)}")
        require(
            self.stability in ("retention", "forgetting"),
            "stability",
            "choose retention or forgetting",
        )
        require(self.protocol in PROTOCOLS, "protocol", f"choose from {', '.join(PROTOCOLS)}")
        require(self.prefix_tasks >= 2, "prefix_tasks", "needs >= 2 (forgetting needs two tasks)")
        require(self.sampler in SAMPLERS, "sampler", f"choose from {', '.join(SAMPLERS)}")
        require(self.pruner in PRUNERS, "pruner", f"choose from {', '.join(PRUNERS)}")
        require(self.startup_trials >= 0, "startup_trials", "must be >= 0")
        require(self.pruner_startup_trials >= 0, "pruner_startup_trials", "must be >= 0")
        require(self.heartbeat_s > 0, "heartbeat_s", "must be > 0")
        require(self.grace_s > self.heartbeat_s, "grace_s", "must exceed heartbeat_s")
        for key, spec in self.space.items():
            if spec is not None:
                search_param(spec, f"space.{key}")


def search_param(spec: Any, key: str) -> SearchParam:
    """Validate one search range (a mapping) into a :class:`SearchParam`."""
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SearchParam), spec))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {describe(e)}") from e
    assert isinstance(obj, SearchParam)
    obj.check(key)
    return obj


def compose_sweep(name: str, overrides: Sequence[str] = ()) -> SweepConfig:
    """Build the validated sweep config ``conf/sweep/<name>.yaml`` with ``key=value`` overrides.

    Raises:
        ConfigError: unknown key, wrong type, bad value or missing file (one line).
    """
    body = load_yaml("sweep", name)
    cfg = merge(OmegaConf.structured(SweepConfig), {"name": name}, "name")
    cfg = merge(cfg, body, f"conf/sweep/{name}.yaml")
    obj = build(cfg, overrides, "sweep", SweepConfig)
    try:
        obj.check()
    except ConfigError as e:
        raise ConfigError(f"conf/sweep/{name}.yaml: {e}") from None
    return obj


def strategy_search(name: str) -> dict[str, SearchParam]:
    """A strategy's search ranges (``search:`` of ``conf/strategy/<name>.yaml``), keyed by
    config path (``strategies.<name>.<param>``)."""
    raw = strategy_file(name).get("search") or {}
    return {
        f"strategies.{name}.{k}": search_param(v, f"conf/strategy/{name}.yaml: {k}")
        for k, v in raw.items()
    }


SCORE_UNIT = "percent"


@dataclass
class Settings:
    """Everything a worker needs to run trials, recorded in the study (the protocol record).

    A resumed or parallel worker reads these from the storage, so every trial of a study uses
    the same experiment, overrides, search space, objectives and protocol. Where things live
    is not part of it: each worker uses its own ``paths`` (its machine's data and stores).
    """

    experiment: str
    strategy: list[str]
    sweep: dict[str, Any]
    overrides: list[str]
    space: dict[str, dict[str, Any]]
    objectives: list[dict[str, str]]
    defaults: dict[str, Any]
    mlflow_experiment: str
    tasks: list[str]
    store: str = ""  # the creator's tracking store, for the record (no password)
    # The scores' unit: trials' values and user attributes are in percent since 2026-12
    # (studies of older versions recorded fractions; :func:`pipeline.sweep.study.load_settings`
    # refuses them rather than mix the two).
    unit: str = SCORE_UNIT
    commit: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    @property
    def config(self) -> SweepConfig:
        return SweepConfig(**self.sweep)

    @property
    def params(self) -> dict[str, SearchParam]:
        return {k: SearchParam(**v) for k, v in self.space.items()}

    @property
    def names(self) -> list[str]:
        """The objectives' names, in the study's order."""
        return [o["name"] for o in self.objectives]

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
