"""Typed experiment configuration, composed from the YAML files in ``conf/``.

An experiment file (``conf/experiment/<name>.yaml``) names one file per config group in its
``defaults`` block (``data``, ``model``) and overrides anything below it. Command-line overrides
come last, as ``key=value`` (dotted keys, YAML values) or ``group=choice`` to pick another file of
a group (``model=mlp``, ``data=synthetic``, ``strategy=[naive]``).

Every layer is merged into the dataclass schema below, so an unknown key, a wrong type or a bad
value fails here (type errors at merge, value rules in each
class's ``check``), before any data is read or any MLflow run exists, as one ``ConfigError`` line
that names the key and where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = Path(os.environ.get("PIPELINE_CONF_DIR", REPO_ROOT / "conf"))
REPORTS_DIR = Path("reports")  # reports of compare, sweeps and landscapes (relative: the cwd)
# Config groups that are folders of conf/ and can be picked by name (`model=mlp`).
GROUPS = ("data", "model")
SCENARIOS = ("task", "domain", "class")
BENCHMARKS = ("split_mnist", "permuted_mnist", "rotated_mnist")
DATASET_KINDS = ("mnist", "fashion_mnist", "synthetic")


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line (exit code 2)."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class TaskConfig:
    """One task of the sequence.

    Attributes:
        dataset: ``mnist``, ``fashion_mnist`` or ``synthetic``.
        name: key used in metric names and reports; derived from the other fields when empty
            (``mnist``, ``mnist_01``, ``mnist_perm3``, ``mnist_rot45``).
        classes: original labels the task keeps (Split MNIST); empty keeps all ten.
        permutation: seed of a fixed pixel permutation (Permuted MNIST); -1 for none.
        rotation: fixed rotation in degrees (Rotated MNIST).
        seed: for ``synthetic`` tasks, the seed of the task's class prototypes.
    """

    dataset: str = MISSING
    name: str = ""
    classes: list[int] = field(default_factory=list)
    permutation: int = -1
    rotation: float = 0.0
    seed: int = 0

    def check(self) -> None:
        _check(
            self.dataset in DATASET_KINDS,
            "data.tasks.dataset",
            f"'{self.dataset}' is not one of {', '.join(DATASET_KINDS)}",
        )
        _check(
            all(0 <= c < 10 for c in self.classes) and len(set(self.classes)) == len(self.classes),
            "data.tasks.classes",
            f"{self.classes}: classes must be distinct labels in 0..9",
        )
        if not self.name:
            self.name = self.dataset if self.dataset != "synthetic" else f"synthetic{self.seed}"
            if self.classes:
                self.name += "_" + "".join(str(c) for c in self.classes)
            if self.permutation >= 0:
                self.name += f"_perm{self.permutation}"
            if self.rotation:
                self.name += f"_rot{self.rotation:g}"
        _check(
            self.name.replace("_", "").replace("-", "").isalnum(),
            "data.tasks.name",
            f"'{self.name}' must be letters, digits, '_' or '-' (it becomes a metric key)",
        )


@dataclass
class SyntheticConfig:
    """Size of the synthetic tasks used by tests and smoke runs (no files needed)."""

    n_train: int = 1000
    n_test: int = 500
    noise: float = 0.35

    def check(self) -> None:
        _check(self.n_train >= 20, "data.synthetic.n_train", "must be >= 20")
        _check(self.n_test >= 1, "data.synthetic.n_test", "must be >= 1")
        _check(self.noise >= 0, "data.synthetic.noise", "must be >= 0")


@dataclass
class DataConfig:
    """The task sequence and how it is batched.

    Attributes:
        root: directory of the datasets in torchvision's layout (``make data`` fills it).
        tasks: the ordered task sequence.
        val_fraction: share of each task's training set held out for validation.
        split_seed: seed of the train/validation split; fixed apart from the experiment seed so
            that runs with different seeds are selected on the same validation samples.
        batch_size: training batch size.
        eval_batch_size: batch size of evaluation passes.
        benchmark: build ``tasks`` from a standard benchmark instead of listing them:
            ``split_mnist`` (``n_tasks`` tasks of consecutive digits), ``permuted_mnist``
            (``n_tasks`` fixed pixel permutations, seeds ``benchmark_seed + i``),
            ``rotated_mnist`` (rotations ``i * 180 / n_tasks`` degrees).
        stream: single pass: each training sample is seen once, in stream order (needs
            ``trainer.epochs=1``), for data that exists only once.
    """

    root: str = "data"
    tasks: list[TaskConfig] = field(default_factory=list)
    benchmark: str = ""
    n_tasks: int = 5
    benchmark_seed: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0
    batch_size: int = 128
    eval_batch_size: int = 1000
    stream: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def check(self) -> None:
        if self.benchmark:
            _check(
                self.benchmark in BENCHMARKS,
                "data.benchmark",
                f"'{self.benchmark}' is not one of {', '.join(BENCHMARKS)}",
            )
            _check(self.n_tasks >= 1, "data.n_tasks", "must be >= 1")
            _check(
                self.n_tasks <= 10 or self.benchmark != "split_mnist",
                "data.n_tasks",
                "Split MNIST has 1 to 10 tasks",
            )
            expanded = benchmark_tasks(self.benchmark, self.n_tasks, self.benchmark_seed)
            for task in expanded:
                task.check()
            # A resolved config (config.yaml of a run, a checkpoint) holds both: they must agree.
            _check(
                not self.tasks or self.tasks == expanded,
                "data.benchmark",
                "set data.benchmark or data.tasks, not both",
            )
            self.tasks = expanded
        _check(len(self.tasks) >= 1, "data.tasks", "the sequence needs at least one task")
        names = [t.name for t in self.tasks]
        _check(
            len(set(names)) == len(names),
            "data.tasks",
            f"task names must be unique, got {names} (set `name:` on repeated datasets)",
        )
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)")
        _check(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        _check(self.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")


def benchmark_tasks(benchmark: str, n_tasks: int, seed: int = 0) -> list[TaskConfig]:
    """The task list of a standard benchmark (see :class:`DataConfig`)."""
    if benchmark == "split_mnist":
        chunks = [list(map(int, c)) for c in np.array_split(np.arange(10), n_tasks)]
        return [TaskConfig(dataset="mnist", classes=c) for c in chunks]
    if benchmark == "permuted_mnist":
        return [TaskConfig(dataset="mnist", permutation=seed + i) for i in range(n_tasks)]
    return [TaskConfig(dataset="mnist", rotation=i * 180.0 / n_tasks) for i in range(n_tasks)]


@dataclass
class ModelConfig:
    """Network shape. The output head is shared by all tasks (domain-incremental).

    Attributes:
        name: ``cnn`` (LeNet-style) or ``mlp``.
        channels: CNN convolution channels, one 5x5 conv + 2x2 max-pool per entry.
        hidden: sizes of the fully connected hidden layers (after the convs for ``cnn``).
        dropout: dropout before each fully connected layer.
    """

    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    kernel_size: int = 5
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.0

    def check(self) -> None:
        _check(self.name in ("cnn", "mlp"), "model.name", f"'{self.name}' is not cnn or mlp")
        _check(all(c >= 1 for c in self.channels), "model.channels", "must be positive")
        _check(all(h >= 1 for h in self.hidden), "model.hidden", "must be positive")
        _check(self.kernel_size >= 1, "model.kernel_size", "must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")


@dataclass
class OptimConfig:
    """Optimizer, rebuilt fresh at the start of every task."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9

    def check(self) -> None:
        _check(
            self.name in ("adam", "adamw", "sgd"),
            "optim.name",
            f"'{self.name}' is not adam, adamw or sgd",
        )
        _check(self.lr > 0, "optim.lr", "must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)")


@dataclass
class TrainerConfig:
    """Lightning Trainer settings, applied to the fresh Trainer built for each task.

    Attributes:
        epochs: epochs per task.
        accelerator: ``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``.
        threads: CPU threads for torch; 0 keeps torch's default (one per core).
        max_batches: cap on training batches per epoch (0: all); shrinks smoke runs.
        validate_every_epoch: run the current task's validation split after each epoch.
        check_finite_every: check the loss for NaN/inf every this many steps (0: never).
    """

    epochs: int = 3
    accelerator: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    threads: int = 0
    max_batches: int = 0
    validate_every_epoch: bool = True
    log_every_n_steps: int = 50
    progress_bar: bool = True
    gradient_clip_val: float = 0.0
    check_finite_every: int = 10

    def check(self) -> None:
        _check(self.epochs >= 1, "trainer.epochs", "must be >= 1")
        _check(
            self.accelerator in ("auto", "cpu", "gpu", "cuda", "mps"),
            "trainer.accelerator",
            f"'{self.accelerator}' is not auto, cpu, gpu, cuda or mps",
        )
        _check(self.threads >= 0, "trainer.threads", "must be >= 0")
        _check(self.max_batches >= 0, "trainer.max_batches", "must be >= 0")
        _check(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1")
        _check(self.gradient_clip_val >= 0, "trainer.gradient_clip_val", "must be >= 0")
        _check(self.check_finite_every >= 0, "trainer.check_finite_every", "must be >= 0")


@dataclass
class TrackingConfig:
    """Where and what MLflow records.

    Attributes:
        store: folder of the MLflow store (SQLite database + artifact root).
        experiment: MLflow experiment name; defaults to the experiment config's name.
        run_name: MLflow run name; MLflow picks one when empty.
        log_checkpoints: log a checkpoint after every task.
    """

    store: str = "mlruns"
    experiment: str = ""
    run_name: str = ""
    log_checkpoints: bool = True


@dataclass
class ExperimentConfig:
    """A whole experiment: the task sequence, the model, the strategies and how to train.

    Attributes:
        name: experiment name (the file name in conf/experiment/).
        seed: seeds model initialisation and data order.
        scenario: ``task`` (one head per task, task id given at test), ``domain`` (one
            shared head, no task id) or ``class`` (labels offset per task, one head over all
            classes seen so far, no task id).
        retention: ``any``, or ``none`` to refuse, before training, every strategy that keeps
            raw samples across task boundaries (data that privacy law may require deleted).
        strategy: strategy plugins, applied in this order (``naive`` = plain fine-tuning).
        strategies: hyperparameters per strategy, read from ``conf/strategy/<name>.yaml``.
    """

    name: str = MISSING
    description: str = ""
    seed: int = 0
    scenario: str = "domain"
    retention: str = "any"
    strategy: list[str] = field(default_factory=lambda: ["naive"])
    strategies: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self) -> None:
        _check(
            self.scenario in SCENARIOS,
            "scenario",
            f"'{self.scenario}' is not available; choose from {', '.join(SCENARIOS)}",
        )
        _check(self.retention in ("any", "none"), "retention", "must be 'any' or 'none'")
        _check(
            not self.data.stream or self.trainer.epochs == 1,
            "data.stream",
            "a stream is seen once: set trainer.epochs=1",
        )
        _check(len(self.strategy) >= 1, "strategy", "name at least one strategy (e.g. naive)")
        _check(len(set(self.strategy)) == len(self.strategy), "strategy", "names repeat")
        extra = sorted(set(self.strategies) - set(self.strategy))
        _check(not extra, "strategies", f"{extra} configured but not in strategy={self.strategy}")


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
        _check(self.type in SEARCH_TYPES, key, f"type '{self.type}' is not one of {SEARCH_TYPES}")
        if self.type == "categorical":
            _check(bool(self.choices), key, "a categorical needs a non-empty 'choices' list")
            return
        _check(
            self.low is not None and self.high is not None and self.low <= self.high,
            key,
            f"needs low <= high, got low={self.low} high={self.high}",
        )
        assert self.low is not None
        _check(not self.log or self.low > 0, key, "a log range needs low > 0")
        if self.type == "int":
            _check(
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
        _check(self.trials >= 1, "trials", "must be >= 1")
        _check(self.objective in OBJECTIVES, "objective", f"choose from {', '.join(OBJECTIVES)}")
        _check(
            self.stability in ("retention", "forgetting"),
            "stability",
            "choose retention or forgetting",
        )
        _check(self.protocol in PROTOCOLS, "protocol", f"choose from {', '.join(PROTOCOLS)}")
        _check(self.prefix_tasks >= 2, "prefix_tasks", "needs >= 2 (forgetting needs two tasks)")
        _check(self.sampler in SAMPLERS, "sampler", f"choose from {', '.join(SAMPLERS)}")
        _check(self.pruner in PRUNERS, "pruner", f"choose from {', '.join(PRUNERS)}")
        _check(self.startup_trials >= 0, "startup_trials", "must be >= 0")
        _check(self.pruner_startup_trials >= 0, "pruner_startup_trials", "must be >= 0")
        _check(self.heartbeat_s > 0, "heartbeat_s", "must be > 0")
        _check(self.grace_s > self.heartbeat_s, "grace_s", "must exceed heartbeat_s")
        for key, spec in self.space.items():
            if spec is not None:
                search_param(spec, f"space.{key}")


def search_param(spec: Any, key: str) -> SearchParam:
    """Validate one search range (a mapping) into a :class:`SearchParam`."""
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SearchParam), spec))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {_describe(e)}") from e
    assert isinstance(obj, SearchParam)
    obj.check(key)
    return obj


def compose_sweep(name: str, overrides: Sequence[str] = ()) -> SweepConfig:
    """Build the validated sweep config ``conf/sweep/<name>.yaml`` with ``key=value`` overrides.

    Raises:
        ConfigError: unknown key, wrong type, bad value or missing file (one line).
    """
    body = _load_yaml("sweep", name)
    cfg = _merge(OmegaConf.structured(SweepConfig), {"name": name}, "name")
    cfg = _merge(cfg, body, f"conf/sweep/{name}.yaml")
    try:
        cfg = _merge(cfg, OmegaConf.from_dotlist(list(overrides)), "sweep override")
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(f"sweep: {_describe(e)}") from e
    assert isinstance(obj, SweepConfig)
    try:
        obj.check()
    except ConfigError as e:
        raise ConfigError(f"conf/sweep/{name}.yaml: {e}") from None
    return obj


def strategy_search(name: str) -> dict[str, SearchParam]:
    """A strategy's search ranges (``search:`` of ``conf/strategy/<name>.yaml``), keyed by
    config path (``strategies.<name>.<param>``)."""
    node = _load_yaml("strategy", name)
    raw = node.get("search") or {}
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"conf/strategy/{name}.yaml: search must be a mapping")
    out = {}
    for k, v in raw.items():
        key = f"{k!s}"
        out[f"strategies.{name}.{key}"] = search_param(v, f"conf/strategy/{name}.yaml: {key}")
    return out


def check_values(node: Any) -> None:
    """Run every nested dataclass's ``check()`` (value rules a type cannot express).

    Children are checked first, so a task name is filled in before the sequence checks that
    names are unique.
    """
    children = [getattr(node, f.name) for f in fields(node)] if is_dataclass(node) else []
    for child in children:
        for item in child if isinstance(child, list) else [child]:
            if is_dataclass(item):
                check_values(item)
    if hasattr(node, "check"):
        node.check()


def available(group: str) -> list[str]:
    """Names of the YAML files of a config group folder (``experiment``, ``model``...)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _load_yaml(group: str, name: str) -> DictConfig:
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(available(group)) or "none"
        raise ConfigError(
            f"conf/{group}/{name}.yaml: no such {group} config (available: {choices})"
        )
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends: report the file, not a traceback
        raise ConfigError(
            f"conf/{group}/{name}.yaml: not valid YAML ({str(e).splitlines()[0]})"
        ) from e
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"conf/{group}/{name}.yaml: must hold a mapping at top level")
    return loaded


def _describe(e: OmegaConfBaseException) -> str:
    """One line out of OmegaConf's multi-line error messages."""
    key = getattr(e, "full_key", None) or "?"
    if isinstance(e, ConfigKeyError | ConfigAttributeError):
        return f"unknown key '{key}'"
    if isinstance(e, MissingMandatoryValue):
        return f"missing value for '{key}'"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{key}: {first}" if isinstance(e, ValidationError) else first


def _merge(base: DictConfig, layer: Any, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_describe(e)}") from e
    assert isinstance(merged, DictConfig)
    return merged


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``group=choice`` selections from ``key=value`` overrides."""
    choices: dict[str, Any] = {}
    dotlist: list[str] = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value")
        if key in GROUPS or key == "strategy":
            try:
                parsed = OmegaConf.from_dotlist([item])[key]
            except OmegaConfBaseException as e:
                raise ConfigError(f"override '{item}': {_describe(e)}") from e
            choices[key] = list(parsed) if key == "strategy" else parsed
        else:
            dotlist.append(item)
    return choices, dotlist


def _strategy_defaults(names: Sequence[str]) -> dict[str, Any]:
    """Each strategy's default hyperparameters, from ``conf/strategy/<name>.yaml``."""
    params: dict[str, Any] = {}
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"strategy: expected a list of names, got {name!r}")
        node = _load_yaml("strategy", name)
        unknown = {str(k) for k in node} - {"description", "params", "search"}
        if unknown:
            raise ConfigError(f"conf/strategy/{name}.yaml: unknown key '{sorted(unknown)[0]}'")
        raw = node.get("params")
        if raw is not None and not isinstance(raw, DictConfig):
            raise ConfigError(f"conf/strategy/{name}.yaml: params must be a mapping")
        params[name] = OmegaConf.to_container(raw, resolve=True) if raw is not None else {}
    return params


def compose(experiment: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Build the validated config of an experiment.

    Args:
        experiment: name of a file in ``conf/experiment/`` (without ``.yaml``).
        overrides: ``key=value`` or ``group=choice`` strings, applied last.

    Returns:
        The typed config, every value checked.

    Raises:
        ConfigError: unknown key, wrong type, bad value or missing file (one line).
    """
    body = _load_yaml("experiment", experiment)
    choices, dotlist = split_overrides(overrides)
    defaults = body.pop("defaults", None) or {}
    if not isinstance(defaults, DictConfig):
        raise ConfigError(f"conf/experiment/{experiment}.yaml: defaults must be a mapping")
    cfg = OmegaConf.structured(ExperimentConfig)
    for key, default in defaults.items():
        group = str(key)
        if group not in GROUPS:
            raise ConfigError(
                f"conf/experiment/{experiment}.yaml: unknown group '{group}' "
                f"in defaults (groups: {', '.join(GROUPS)})"
            )
        choice = choices.pop(group, default)
        cfg = _merge(
            cfg, {group: _load_yaml(str(group), str(choice))}, f"conf/{group}/{choice}.yaml"
        )
    for group in [g for g in GROUPS if g in choices]:
        choice = choices.pop(group)
        cfg = _merge(cfg, {group: _load_yaml(group, str(choice))}, f"conf/{group}/{choice}.yaml")

    names = choices.get("strategy", body.get("strategy", ["naive"]))
    cfg = _merge(cfg, {"strategies": _strategy_defaults(list(names))}, "conf/strategy")
    cfg = _merge(cfg, {"name": experiment}, "name")
    cfg = _merge(cfg, body, f"conf/experiment/{experiment}.yaml")
    if "strategy" in choices:
        cfg.strategy = choices["strategy"]
    try:
        cfg = _merge(cfg, OmegaConf.from_dotlist(dotlist), "override")
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(f"override: {_describe(e)}") from e
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e)) from e
    assert isinstance(obj, ExperimentConfig)
    check_values(obj)
    from pipeline.strategies import REGISTRY, parse_params  # deferred: they import this module

    for name in obj.strategy:
        REGISTRY[name].check_config(parse_params(name, obj.strategies.get(name)), obj)
    return obj


def from_dict(tree: dict[str, Any]) -> ExperimentConfig:
    """Rebuild and re-check a config saved with :func:`to_dict` (e.g. inside a checkpoint)."""
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), tree))
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e)) from e
    assert isinstance(obj, ExperimentConfig)
    check_values(obj)
    return obj


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (logged with every run; ``compose`` can read it back)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as plain containers."""
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts and lists into ``a.b.0.c`` keys (MLflow params)."""
    if isinstance(tree, list) and all(not isinstance(v, dict | list) for v in tree):
        return {prefix: tree} if prefix else {}  # a list of scalars stays one param
    if isinstance(tree, dict):
        items = [(str(k), v) for k, v in tree.items()]
    elif isinstance(tree, list):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
