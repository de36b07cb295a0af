"""Choose a trial from a study, write it as an experiment config, evaluate it once on test.

The choice reads only what the trials recorded: validation scores. Rules:

- ``knee`` (default for two objectives): the point of the Pareto front farthest from the line
  through the front's two extremes: the point where giving up a little of one objective stops
  buying much of the other. Both objectives are accuracies on the same scale, so they are not
  rescaled (rescaling over the front would blow tiny differences up). A front of two points
  gives the one nearer the ideal point (the best value of each objective).
- ``max:<metric>`` with optional constraints, ``max:plasticity,forgetting<=5``: the complete
  trial with the highest ``<metric>`` among those meeting every constraint. Metrics are the
  validation summary of each trial (``plasticity``, ``retention``, ``forgetting``,
  ``avg_acc``, ``bwt``); constraint values are in percent.
- ``best``: the best trial of a single-objective study (its default rule).

``make best`` then writes ``conf/experiment/best/<study>.yaml`` (the study's experiment, its
overrides and the chosen hyperparameters, on the whole sequence for the prefix protocol), runs it
once with the test split evaluated, and runs the strategy's defaults the same way beside it.
That folder is git-ignored: a generated file is never a tracked one (a tracked file rewritten by
a command would tag every later run with a ``-dirty`` commit). The chosen run's model is then
registered in the MLflow Model Registry under the study's name, alias ``champion``
(:mod:`pipeline.registry`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState
from typing_extensions import override

from pipeline.config import compose as conf
from pipeline.config.compose import split_overrides
from pipeline.config.paths import PathsConfig
from pipeline.config.schema import ExperimentConfig
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.metrics import percent
from pipeline.registry import check_name, default_name, register
from pipeline.store import Store
from pipeline.sweep.config import Settings
from pipeline.sweep.report import default_trial, front
from pipeline.sweep.space import lookup, override_value, trial_config
from pipeline.sweep.study import PARENT_ATTR, load_settings, load_study
from pipeline.sweep.workers import say
from pipeline.tracking import Run

METRICS = ("plasticity", "retention", "forgetting", "avg_acc", "bwt", "fwt")
_CONSTRAINT = re.compile(r"^\s*([a-z_]+)\s*(<=|>=)\s*(-?[0-9.]+)\s*$")


@dataclass
class Rule:
    """A parsed choice rule: ``knee``, ``best``, or maximise ``metric`` under constraints."""

    kind: str
    metric: str = ""
    constraints: tuple[tuple[str, str, float], ...] = ()

    @override
    def __str__(self) -> str:
        if self.kind != "max":
            return self.kind
        parts = [f"{m}{op}{v:g}" for m, op, v in self.constraints]
        return ",".join([f"max:{self.metric}", *parts])


def parse_rule(text: str) -> Rule:
    """``knee`` | ``best`` | ``max:<metric>[,<metric><=X|>=X ...]`` (X in percent).

    Raises:
        ConfigError: anything else, one line naming the accepted forms.
    """
    text = text.strip()
    if text in ("knee", "best"):
        return Rule(text)
    usage = "RULE: expected knee, best, or max:<metric>[,<metric><=X] (metrics: " + ", ".join(
        METRICS
    )
    if not text.startswith("max:"):
        raise ConfigError(f"{usage}), got '{text}'")
    head, *rest = text[4:].split(",")
    if head.strip() not in METRICS:
        raise ConfigError(f"{usage}), got metric '{head.strip()}'")
    constraints = []
    for part in rest:
        m = _CONSTRAINT.match(part)
        if not m or m.group(1) not in METRICS:
            raise ConfigError(f"{usage}), got constraint '{part.strip()}'")
        constraints.append((m.group(1), m.group(2), float(m.group(3))))
    return Rule("max", head.strip(), tuple(constraints))


def knee(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> FrozenTrial:
    """The knee of a two-objective front (see the module docstring)."""
    if len(trials) == 1:
        return trials[0]
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    v = np.array([t.values for t in trials]) * sign  # both objectives: higher is better
    a, b = v[v[:, 0].argmax()], v[v[:, 1].argmax()]
    line = b - a
    if len(trials) == 2 or not line.any():
        return trials[int(np.linalg.norm(v.max(0) - v, axis=1).argmin())]
    # Perpendicular distance from each point to the line through the two extremes; the
    # front bulges towards the ideal point, so the knee is the farthest point.
    dist = np.abs(line[0] * (v[:, 1] - a[1]) - line[1] * (v[:, 0] - a[0])) / np.linalg.norm(line)
    return trials[int(dist.argmax())]


def choose(study: optuna.Study, rule: Rule) -> FrozenTrial:
    """The trial a rule picks.

    Raises:
        ConfigError: no complete trial, a rule that does not fit the study, no trial meeting the
            constraints.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"study '{study.study_name}' has no complete trial yet")
    directions = [d.name.lower() for d in study.directions]
    if rule.kind == "best" and len(directions) > 1:
        raise ConfigError(
            f"RULE=best: study '{study.study_name}' has {len(directions)} objectives and no "
            "single best trial; use knee or max:<metric>"
        )
    if rule.kind == "best" or (rule.kind == "knee" and len(directions) == 1):
        return front(study)[0]
    if rule.kind == "knee":
        return knee(front(study), directions)

    def ok(t: FrozenTrial) -> bool:
        for metric, op, bound in rule.constraints:
            value = t.user_attrs.get(metric)
            if value is None or not (value <= bound if op == "<=" else value >= bound):
                return False
        return rule.metric in t.user_attrs

    eligible = [t for t in complete if ok(t)]
    if not eligible:
        raise ConfigError(f"no complete trial of '{study.study_name}' meets {rule}")
    return max(eligible, key=lambda t: float(t.user_attrs[rule.metric]))


#: The sub-folder of ``conf/experiment/`` that ``make best`` writes (in .gitignore).
BEST_FOLDER = "best"


def config_name(study: str) -> str:
    """The experiment ``make best`` writes for a study: ``best/<study>`` (``make run EXP=``)."""
    return f"{BEST_FOLDER}/" + re.sub(r"[^A-Za-z0-9_-]", "_", study)


def write_experiment(
    settings: Settings,
    study: str,
    trial: FrozenTrial,
    rule: Rule,
    directory: Path | None = None,
) -> Path:
    """Write the chosen trial as ``conf/experiment/best/<study>.yaml`` (atomically).

    The file is the study's experiment file with its overrides and the trial's
    hyperparameters merged in, so ``make run EXP=best/<study>`` reruns it (the whole sequence:
    a prefix protocol's truncation is not carried over).
    """
    directory = directory or conf.CONF_DIR / "experiment"  # read now: tests point it elsewhere
    base = OmegaConf.load(directory / f"{settings.experiment}.yaml")
    assert isinstance(base, DictConfig)
    choices, dotlist = split_overrides(settings.overrides)
    defaults = base.get("defaults") or OmegaConf.create({})
    for group, choice in choices.items():
        if group != "strategy":
            defaults[group] = choice
    if defaults:
        base["defaults"] = defaults
    params = [f"{k}={override_value(v)}" for k, v in trial.params.items()]
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist([*dotlist, *params]))
    assert isinstance(merged, DictConfig)
    base = merged
    base["strategy"] = list(settings.strategy)
    base["description"] = (
        f"{settings.experiment} with {'+'.join(settings.strategy)} tuned by study {study}"
    )
    tracking = base.get("tracking") or OmegaConf.create({})
    tracking["experiment"] = settings.mlflow_experiment  # beside the study's runs in the UI
    base["tracking"] = tracking
    values = ", ".join(f"{k} {v:.1f}" for k, v in _val_metrics(trial).items())
    header = (
        f"# Written by `make best STUDY={study} RULE={rule}`: trial {trial.number}.\n"
        f"# Validation scores of the trial: {values}.\n"
        f"# Rerun: make run EXP={config_name(study)}\n"
    )
    path = directory / f"{config_name(study)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(header + OmegaConf.to_yaml(base))
    os.replace(tmp, path)
    return path


def _val_metrics(trial: FrozenTrial) -> dict[str, float]:
    return {m: float(trial.user_attrs[m]) for m in METRICS if m in trial.user_attrs}


def best(
    name: str,
    paths: PathsConfig,
    rule_text: str = "knee",
    *,
    evaluate: bool = True,
    with_default: bool = True,
    log: Callable[[str], None] = say,
) -> dict[str, Any]:
    """Choose, write the config, evaluate on test (the only test read of the whole protocol).

    Args:
        name: the study.
        paths: where the study storage (``paths.studies``) and the tracking store are.
        rule_text: the choice rule (module docstring).
        evaluate: run the chosen trial (and the defaults) once with the test split.
        with_default: run the defaults beside it.
        log: progress lines.

    Returns:
        ``trial``, ``config`` (path), ``params``, ``defaults``, ``val`` (chosen and default
        validation scores), ``test`` (chosen and default test summaries, when evaluated),
        ``registered`` (the chosen test run's model in the Model Registry, under the study's
        name: ``name``, ``version``, ``uri``; empty when not evaluated).
    """
    model = check_name(default_name(name))  # before any training: a name the registry takes
    study = load_study(name, paths.studies_uri())
    settings = load_settings(study)
    rule = parse_rule(rule_text)
    trial = choose(study, rule)
    path = write_experiment(settings, name, trial, rule)
    cfg = compose(config_name(name))
    cfg.paths = paths
    for key, value in trial.params.items():  # the file must rerun exactly this trial
        if lookup(cfg, key) != value:
            raise ConfigError(f"{path}: {key} reads back as {lookup(cfg, key)}, not {value}")
    default = default_trial(study)
    out: dict[str, Any] = {
        "trial": trial.number,
        "rule": str(rule),
        "config": str(path),
        "params": dict(trial.params),
        "defaults": dict(settings.defaults),
        "val": {"chosen": _val_metrics(trial), "default": _val_metrics(default) if default else {}},
        "test": {},
        "registered": {},
    }
    if evaluate:
        runs = [("chosen", cfg)]
        if with_default:
            runs.append(("default", trial_config(settings, settings.defaults, paths, prefix=False)))
        out["test"] = evaluate_on_test(study, runs, log)
        out["registered"] = register_chosen(model, cfg, out["test"]["chosen"], log)
    study.set_user_attr("pipeline.best", out)
    return out


def evaluate_on_test(
    study: optuna.Study,
    runs: Sequence[tuple[str, ExperimentConfig]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Run each labelled config once with the test split, as children of the study's parent
    run; each one's test summary and final accuracies."""
    from pipeline.runner import run_sequence

    parent = study.user_attrs[PARENT_ATTR]
    out: dict[str, Any] = {}
    for label, cfg in runs:
        log(f"evaluating the {label} hyperparameters once on the test split ...")
        cfg.tracking.run_name = f"best {label} (test)"
        tags = {"sweep.study": study.study_name, "kind": f"best-{label}"}
        result = run_sequence(cfg, Run.of(cfg, parent, tags))
        out[label] = {
            **{k: percent(v) for k, v in result.summary["test"].items()},
            "final": {
                d: percent(a)
                for d, a in zip(result.displays, result.matrix["test"][-1], strict=True)
            },
            "mlflow_run_id": result.run_id,
        }
    return out


def register_chosen(
    model: str, cfg: ExperimentConfig, chosen: dict[str, Any], log: Callable[[str], None]
) -> dict[str, str]:
    """Register the chosen test run's model as a new version of ``model`` (alias
    ``champion``: :func:`pipeline.registry.register`); what was registered (empty when the
    run logged no checkpoint)."""
    if not cfg.tracking.log_checkpoints:
        log("not registered: the chosen run logged no checkpoint (tracking.log_checkpoints)")
        return {}
    done = register(Store.of(cfg.paths), chosen["mlflow_run_id"], model)
    log(f"registered the chosen model as version {done.version} of '{done.name}' (champion)")
    return {"name": done.name, "version": done.version, "uri": done.uri}


def format_best(out: dict[str, Any]) -> str:
    """The chosen trial beside the strategy's defaults: hyperparameters, validation scores
    (from the study) and test scores (from the one evaluation)."""
    rows = [("", f"chosen (trial {out['trial']})", "defaults")]
    for k, v in out["params"].items():
        rows.append((k, f"{v:.4g}" if isinstance(v, float) else str(v), str(out["defaults"][k])))
    for split in ("val", "test"):
        chosen, default = out[split].get("chosen", {}), out[split].get("default", {})
        for m in METRICS:
            if m in chosen:
                d = f"{default[m]:.1f}" if m in default else "-"
                rows.append((f"{split} {m} (%)", f"{chosen[m]:.1f}", d))
        for task, acc in chosen.get("final", {}).items():
            d = default.get("final", {}).get(task)
            rows.append(
                (f"{split} final {task} (%)", f"{acc:.1f}", f"{d:.1f}" if d is not None else "-")
            )
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a:<{width[0]}}  {b:>{width[1]}}  {c:>{width[2]}}" for a, b, c in rows]
    registered = out.get("registered") or {}
    model = [f"model: {registered['uri']} (version {registered['version']})"] if registered else []
    return "\n".join(
        [f"rule {out['rule']}: trial {out['trial']}", *lines, f"config: {out['config']}", *model]
    )
