"""Typed experiment configuration, composed from the YAML files in ``conf/``.

An experiment file (``conf/experiment/<name>.yaml``) names one file per config group in its
``defaults`` block (``data``, ``model``) and overrides anything below it. Command-line overrides
come last, as ``key=value`` (dotted keys, YAML values) or ``group=choice`` to pick another file of
a group (``model=mlp``, ``data=synthetic``, ``strategy=[naive]``).

Every layer is merged into the dataclass schema below, so an unknown key, a wrong type or a bad
value (each class's ``check``) fails here, before any data is read or any MLflow run exists, as
one ``ConfigError`` line that names the key and where it came from.

This is the bottom layer of the package: it knows no strategy. A strategy's hyperparameters
arrive as the plain mapping the YAML files and overrides give (``strategies:``), which
:func:`pipeline.experiment.compose` parses once against each strategy's ``Params``. Where things
live is the ``paths`` section (:class:`pipeline.paths.PathsConfig`) that every command reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from pipeline.errors import ConfigError, require
from pipeline.paths import REPO_ROOT, PathsConfig

CONF_DIR = Path(os.environ.get("PIPELINE_CONF_DIR", REPO_ROOT / "conf"))
# Config groups that are folders of conf/ and can be picked by name (`model=mlp`).
GROUPS = ("data", "model")
SCENARIOS = ("task", "domain", "class")
BENCHMARKS = ("split_mnist", "permuted_mnist", "rotated_mnist")
DATASET_KINDS = ("mnist", "fashion_mnist", "synthetic")


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
        require(
            self.dataset in DATASET_KINDS,
            "data.tasks.dataset",
            f"'{self.dataset}' is not one of {', '.join(DATASET_KINDS)}",
        )
        require(
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
        require(
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
        require(self.n_train >= 20, "data.synthetic.n_train", "must be >= 20")
        require(self.n_test >= 1, "data.synthetic.n_test", "must be >= 1")
        require(self.noise >= 0, "data.synthetic.noise", "must be >= 0")


@dataclass
class DataConfig:
    """The task sequence and how it is batched.

    Attributes:
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
            require(
                self.benchmark in BENCHMARKS,
                "data.benchmark",
                f"'{self.benchmark}' is not one of {', '.join(BENCHMARKS)}",
            )
            require(self.n_tasks >= 1, "data.n_tasks", "must be >= 1")
            require(
                self.n_tasks <= 10 or self.benchmark != "split_mnist",
                "data.n_tasks",
                "Split MNIST has 1 to 10 tasks",
            )
            expanded = benchmark_tasks(self.benchmark, self.n_tasks, self.benchmark_seed)
            for task in expanded:
                task.check()
            # A resolved config (config.yaml of a run, a checkpoint) holds both: they must agree.
            require(
                not self.tasks or self.tasks == expanded,
                "data.benchmark",
                "set data.benchmark or data.tasks, not both",
            )
            self.tasks = expanded
        require(len(self.tasks) >= 1, "data.tasks", "the sequence needs at least one task")
        names = [t.name for t in self.tasks]
        require(
            len(set(names)) == len(names),
            "data.tasks",
            f"task names must be unique, got {names} (set `name:` on repeated datasets)",
        )
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)")
        require(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        require(self.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")


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
        require(self.name in ("cnn", "mlp"), "model.name", f"'{self.name}' is not cnn or mlp")
        require(all(c >= 1 for c in self.channels), "model.channels", "must be positive")
        require(all(h >= 1 for h in self.hidden), "model.hidden", "must be positive")
        require(self.kernel_size >= 1, "model.kernel_size", "must be >= 1")
        require(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")


@dataclass
class OptimConfig:
    """Optimizer, rebuilt fresh at the start of every task."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9

    def check(self) -> None:
        require(
            self.name in ("adam", "adamw", "sgd"),
            "optim.name",
            f"'{self.name}' is not adam, adamw or sgd",
        )
        require(self.lr > 0, "optim.lr", "must be > 0")
        require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        require(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)")


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
        require(self.epochs >= 1, "trainer.epochs", "must be >= 1")
        require(
            self.accelerator in ("auto", "cpu", "gpu", "cuda", "mps"),
            "trainer.accelerator",
            f"'{self.accelerator}' is not auto, cpu, gpu, cuda or mps",
        )
        require(self.threads >= 0, "trainer.threads", "must be >= 0")
        require(self.max_batches >= 0, "trainer.max_batches", "must be >= 0")
        require(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1")
        require(self.gradient_clip_val >= 0, "trainer.gradient_clip_val", "must be >= 0")
        require(self.check_finite_every >= 0, "trainer.check_finite_every", "must be >= 0")


@dataclass
class TrackingConfig:
    """What MLflow records (where: ``paths.store``).

    Attributes:
        experiment: MLflow experiment name; defaults to the experiment config's name.
        run_name: MLflow run name; MLflow picks one when empty.
        log_checkpoints: log a checkpoint after every task.
    """

    experiment: str = ""
    run_name: str = ""
    log_checkpoints: bool = True


def compose_paths(overrides: Sequence[str] = ()) -> PathsConfig:
    """The ``paths`` section alone, for commands that take no experiment (``paths.<key>=...``
    overrides; any other key is refused).

    Raises:
        ConfigError: an unknown key or a bad value (one line).
    """
    bad = [o for o in overrides if not o.startswith("paths.")]
    if bad:
        raise ConfigError(f"override '{bad[0]}': this command takes only paths.<key>=<value>")
    dotlist = [o[len("paths.") :] for o in overrides]
    obj = build(OmegaConf.structured(PathsConfig), dotlist, "paths", PathsConfig)
    obj.check()
    return obj


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
        strategy: strategy plugins, applied in this order; empty: the baseline strategy
            (plain fine-tuning).
        strategies: hyperparameters per strategy: as composed, the values the experiment and
            the overrides set; once resolved (:func:`pipeline.experiment.compose`), each
            strategy's ``Params`` with its defaults filled in.
        paths: where the data, the stores and the reports are.
    """

    name: str = MISSING
    description: str = ""
    seed: int = 0
    scenario: str = "domain"
    retention: str = "any"
    strategy: list[str] = field(default_factory=list)
    strategies: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def check(self) -> None:
        require(
            self.scenario in SCENARIOS,
            "scenario",
            f"'{self.scenario}' is not available; choose from {', '.join(SCENARIOS)}",
        )
        require(self.retention in ("any", "none"), "retention", "must be 'any' or 'none'")
        require(
            not self.data.stream or self.trainer.epochs == 1,
            "data.stream",
            "a stream is seen once: set trainer.epochs=1",
        )
        require(len(set(self.strategy)) == len(self.strategy), "strategy", "names repeat")


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


def load_yaml(group: str, name: str) -> DictConfig:
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


def describe(e: OmegaConfBaseException) -> str:
    """One line out of OmegaConf's multi-line error messages."""
    key = getattr(e, "full_key", None) or "?"
    if isinstance(e, ConfigKeyError | ConfigAttributeError):
        return f"unknown key '{key}'"
    if isinstance(e, MissingMandatoryValue):
        return f"missing value for '{key}'"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{key}: {first}" if isinstance(e, ValidationError) else first


T = TypeVar("T")


def build(cfg: DictConfig, dotlist: Sequence[str], source: str, schema: type[T]) -> T:
    """``key=value`` overrides merged into ``cfg``, then the typed object of ``schema``.

    Raises:
        ConfigError: an unknown key or a wrong type, one line prefixed with ``source``.
    """
    try:
        cfg = merge(cfg, OmegaConf.from_dotlist(list(dotlist)), source)
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {describe(e)}") from e
    assert isinstance(obj, schema)
    return obj


def merge(base: DictConfig, layer: Any, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {describe(e)}") from e
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
                raise ConfigError(f"override '{item}': {describe(e)}") from e
            choices[key] = list(parsed) if key == "strategy" else parsed
        else:
            dotlist.append(item)
    return choices, dotlist


#: The keys a strategy's YAML file may hold: what only the YAML can say. Its defaults live in
#: its ``Params`` dataclass (one place), never here.
STRATEGY_FILE_KEYS = ("description", "search")


def strategy_file(name: str) -> DictConfig:
    """``conf/strategy/<name>.yaml``: the strategy's ``description`` and ``search`` ranges.

    Raises:
        ConfigError: no such file, bad YAML, or a key other than those two.
    """
    node = load_yaml("strategy", name)
    unknown = sorted({str(k) for k in node} - set(STRATEGY_FILE_KEYS))
    if unknown:
        hint = " (defaults live in the strategy's Params dataclass)" if "params" in unknown else ""
        raise ConfigError(f"conf/strategy/{name}.yaml: unknown key '{unknown[0]}'{hint}")
    search = node.get("search")
    if search is not None and not isinstance(search, DictConfig):
        raise ConfigError(f"conf/strategy/{name}.yaml: search must be a mapping")
    return node


def compose_raw(experiment: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Compose and check an experiment's config, its strategies' hyperparameters left as given.

    This is the config layer alone; every caller wants :func:`pipeline.experiment.compose`,
    which also parses and checks the strategies.

    Args:
        experiment: name of a file in ``conf/experiment/`` (without ``.yaml``).
        overrides: ``key=value`` or ``group=choice`` strings, applied last.

    Raises:
        ConfigError: unknown key, wrong type, bad value or missing file (one line).
    """
    body = load_yaml("experiment", experiment)
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
        cfg = merge(cfg, {group: load_yaml(str(group), str(choice))}, f"conf/{group}/{choice}.yaml")
    for group in [g for g in GROUPS if g in choices]:
        choice = choices.pop(group)
        cfg = merge(cfg, {group: load_yaml(group, str(choice))}, f"conf/{group}/{choice}.yaml")
    cfg = merge(cfg, {"name": experiment}, "name")
    cfg = merge(cfg, body, f"conf/experiment/{experiment}.yaml")
    if "strategy" in choices:
        cfg.strategy = choices["strategy"]
    try:
        cfg = merge(cfg, OmegaConf.from_dotlist(dotlist), "override")
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(f"override: {describe(e)}") from e
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(describe(e)) from e
    assert isinstance(obj, ExperimentConfig)
    check_values(obj)
    return obj


#: Keys of configs written before the ``paths`` section existed; where things live is the
#: reader's business (its own ``paths``), so a saved config's old locations are dropped.
_LEGACY_KEYS = (("data", "root"), ("tracking", "store"))


def from_dict_raw(tree: dict[str, Any]) -> ExperimentConfig:
    """Rebuild and re-check a config saved with :func:`to_dict` (e.g. inside a checkpoint),
    its strategies left as saved (see :func:`compose_raw`)."""
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for section, key in _LEGACY_KEYS:
        if isinstance(tree.get(section), dict):
            tree[section].pop(key, None)
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), tree))
    except OmegaConfBaseException as e:
        raise ConfigError(describe(e)) from e
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
