"""Typed experiment configuration: the dataclass schema every layer of ``conf/`` and every
override is merged into (:mod:`pipeline.conf` reads and composes them), with the value rules of
each class's ``check``. A bad value fails before any data is read or any MLflow run exists, as
one ``ConfigError`` line that names the key.

This is the bottom layer of the package: it knows no strategy. A strategy's hyperparameters
arrive as the plain mapping the YAML files and overrides give (``strategies:``), which
:func:`pipeline.experiment.compose` parses once against each strategy's ``Params``. Where things
live is the ``paths`` section (:class:`pipeline.paths.PathsConfig`) that every command reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from typing import Any

import numpy as np
from omegaconf import MISSING, OmegaConf

from pipeline.errors import ConfigError, require
from pipeline.keys import RESERVED_TASK_NAMES
from pipeline.paths import PathsConfig

MAX_LR = 10.0  # a learning rate above this is a typo, not an experiment (1e308, inf)
#: What Lightning's ``Trainer(precision=...)`` accepts.
PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed")
MAX_SEED = 2**32 - 1  # numpy's seeds, which Lightning's seed_everything sets too
SCENARIOS = ("task", "domain", "class")
MAX_TASK_NAME = 100  # a task name is in metric keys (MLflow: 250 characters) and file names
#: No text this short exceeds any of :func:`mlflow_limits` (a test checks): checking it does not
#: import MLflow, which takes seconds (most configs are checked to be printed or refused).
SHORT_TEXT = 250
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
        require(
            len(self.name) <= MAX_TASK_NAME,
            "data.tasks.name",
            f"{len(self.name)} characters; at most {MAX_TASK_NAME} (it becomes metric keys and "
            "file names)",
        )
        require(
            self.name not in RESERVED_TASK_NAMES,
            "data.tasks.name",
            f"'{self.name}' is the name of a metric (its key would be test/{self.name}); "
            "choose another",
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
    eval_batch_size: int = 256
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
        channels: CNN convolution channels, one ``kernel_size`` convolution per entry.
        pool: where the CNN's 2x2 max-pools are: after ``each`` convolution (LeNet), or only
            after the ``last`` (the PyTorch MNIST example's layout: more features reach the
            fully connected layers).
        hidden: sizes of the fully connected hidden layers (after the convs for ``cnn``).
        dropout: dropout before each fully connected layer.
    """

    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    kernel_size: int = 5
    pool: str = "each"
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.0

    def check(self) -> None:
        require(self.name in ("cnn", "mlp"), "model.name", f"'{self.name}' is not cnn or mlp")
        require(all(c >= 1 for c in self.channels), "model.channels", "must be positive")
        require(all(h >= 1 for h in self.hidden), "model.hidden", "must be positive")
        require(self.kernel_size >= 1, "model.kernel_size", "must be >= 1")
        require(self.pool in ("each", "last"), "model.pool", f"'{self.pool}' is not each or last")
        require(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")


@dataclass
class OptimConfig:
    """Optimizer, rebuilt fresh at the start of every task.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: the learning rate (the peak of the schedule).
        weight_decay: L2 penalty (decoupled for ``adamw``).
        momentum: SGD's momentum.
        schedule: ``constant``, or ``cosine``: the rate falls from ``lr`` to 0 along each task's
            training steps (cosine annealing, restarted per task).
    """

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"

    def check(self) -> None:
        require(
            self.name in ("adam", "adamw", "sgd"),
            "optim.name",
            f"'{self.name}' is not adam, adamw or sgd",
        )
        require(0 < self.lr <= MAX_LR, "optim.lr", f"must be in (0, {MAX_LR:g}], got {self.lr}")
        require(
            0 <= self.weight_decay <= 1,
            "optim.weight_decay",
            f"must be in [0, 1], got {self.weight_decay}",
        )
        require(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)")
        require(
            self.schedule in ("constant", "cosine"),
            "optim.schedule",
            f"'{self.schedule}' is not constant or cosine",
        )


@dataclass
class TrainerConfig:
    """Lightning Trainer settings, applied to the fresh Trainer built for each task.

    Attributes:
        epochs: epochs per task.
        accelerator: ``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``.
        threads: CPU threads for torch; 0 keeps torch's default (one per core).
        max_batches: cap on training batches per epoch (0: all); shrinks smoke runs.
        validate_every_epoch: run the current task's validation split after each epoch.
        check_finite_every: check the loss for NaN/inf every this many steps (>= 1; the
            weights are checked again before every checkpoint).
        devices: processes per machine (CPU processes, or GPUs); more than 1 trains one run
            with Lightning's DDP (:mod:`pipeline.distributed`).
        num_nodes: machines; each runs the same command with ``NODE_RANK`` set.
        strategy: ``auto`` (one process, or DDP when ``devices * num_nodes > 1``) or ``ddp``.
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
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"

    def check(self) -> None:
        require(1 <= self.epochs <= 10_000, "trainer.epochs", "must be in 1..10000")
        require(
            self.accelerator in ("auto", "cpu", "gpu", "cuda", "mps"),
            "trainer.accelerator",
            f"'{self.accelerator}' is not auto, cpu, gpu, cuda or mps",
        )
        require(
            self.precision in PRECISIONS,
            "trainer.precision",
            f"'{self.precision}' is not one of {', '.join(PRECISIONS)}",
        )
        require(self.threads >= 0, "trainer.threads", "must be >= 0")
        require(self.max_batches >= 0, "trainer.max_batches", "must be >= 0")
        require(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1")
        require(
            0 <= self.gradient_clip_val < float("inf"),
            "trainer.gradient_clip_val",
            "must be finite and >= 0 (0: no clipping)",
        )
        # The loss check cannot be switched off: a NaN run must not end FINISHED.
        require(self.check_finite_every >= 1, "trainer.check_finite_every", "must be >= 1")
        require(1 <= self.devices <= 1024, "trainer.devices", "must be in 1..1024")
        require(1 <= self.num_nodes <= 1024, "trainer.num_nodes", "must be in 1..1024")
        require(
            self.strategy in ("auto", "ddp"),
            "trainer.strategy",
            f"'{self.strategy}' is not auto or ddp",
        )


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

    def check(self) -> None:
        require_length(self.experiment, "tracking.experiment", "experiment")
        require_length(self.run_name, "tracking.run_name", "run_name")


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
        require(0 <= self.seed <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED}, got {self.seed}")
        require_length(self.description, "description", "description")  # the experiment's
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
        world = self.trainer.devices * self.trainer.num_nodes
        require(
            self.data.batch_size % world == 0,
            "data.batch_size",
            f"{self.data.batch_size} does not split evenly over {world} processes "
            "(trainer.devices x trainer.num_nodes): each takes an equal slice of every batch",
        )


@cache
def mlflow_limits() -> dict[str, int]:
    """The most characters every MLflow store takes, by what they limit: MLflow's own checks,
    and the columns of its database, which PostgreSQL enforces and SQLite does not (a
    300-character experiment name passes MLflow's check of 500, then fails on a team server).
    """
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun
    from mlflow.utils import validation as v

    def column(model: Any) -> int:
        return int(model.__table__.c.name.type.length)

    return {
        "experiment": min(v.MAX_EXPERIMENT_NAME_LENGTH, column(SqlExperiment)),
        "run_name": min(v.MAX_TAG_VAL_LENGTH, column(SqlRun)),  # also its mlflow.runName tag
        "description": v.MAX_EXPERIMENT_TAG_VAL_LENGTH,  # an experiment tag
    }


def require_length(text: str, key: str, limit: str) -> None:
    """Refuse ``text`` longer than MLflow takes for ``limit`` (a key of :func:`mlflow_limits`),
    before any run exists: MLflow would refuse it with a traceback once the run starts."""
    if len(text) > SHORT_TEXT and len(text) > (most := mlflow_limits()[limit]):
        raise ConfigError(f"{key}: {len(text)} characters; an MLflow store takes at most {most}")


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


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (logged with every run; ``compose`` can read it back)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as plain containers."""
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
