"""The value rules a type cannot state, one function per section of the schema (the ranges,
the names that become metric keys and file names, what MLflow's stores take), run by
:func:`check_values` after every composition. A rule that fails raises one ``ConfigError`` line
naming the key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.config.benchmarks import benchmark_tasks
from pipeline.config.paths import PathsConfig
from pipeline.config.schema import (
    BENCHMARKS,
    PRECISIONS,
    AuditConfig,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    SyntheticConfig,
    TaskConfig,
    TrackingConfig,
    TrainerConfig,
    dataset_classes,
    dataset_kinds,
)
from pipeline.errors import ConfigError, require
from pipeline.keys import RESERVED_TASK_NAMES

MAX_LR = 10.0  # a learning rate above this is a typo, not an experiment (1e308, inf)
MAX_SEED = 2**32 - 1  # numpy's seeds, which Lightning's seed_everything sets too
MAX_TASK_NAME = 100  # a task name is in metric keys (MLflow: 250 characters) and file names
#: No text this short exceeds any of :func:`mlflow_limits` (a test checks): checking it does not
#: import MLflow, which takes seconds (most configs are checked to be printed or refused).
SHORT_TEXT = 250


def check_task(task: TaskConfig) -> None:
    kinds = dataset_kinds()
    require(
        task.dataset in kinds,
        "data.tasks.dataset",
        f"'{task.dataset}' is not one of {', '.join(kinds)}",
    )
    own = task.dataset in ("folder", "arrays", "shards")
    require(
        bool(task.path) == own,
        "data.tasks.path",
        f"the path of a {task.dataset} task's files is needed"
        if own
        else f"'{task.path}': only folder and arrays tasks read a path",
    )
    # The user's own data is counted when it is read (pipeline.data.tasks.sequence_shape).
    top = dataset_classes(task.dataset) or 2**31
    require(
        all(0 <= c < top for c in task.classes) and len(set(task.classes)) == len(task.classes),
        "data.tasks.classes",
        f"{task.classes}: classes must be distinct labels in 0..{top - 1}"
        if top < 2**31
        else f"{task.classes}: classes must be distinct labels >= 0",
    )
    if not task.name:
        task.name = default_name(task)
    require(
        task.name.replace("_", "").replace("-", "").isalnum(),
        "data.tasks.name",
        f"'{task.name}' must be letters, digits, '_' or '-' (it becomes a metric key)",
    )
    require(
        len(task.name) <= MAX_TASK_NAME,
        "data.tasks.name",
        f"{len(task.name)} characters; at most {MAX_TASK_NAME} (it becomes metric keys and "
        "file names)",
    )
    require(
        task.name not in RESERVED_TASK_NAMES,
        "data.tasks.name",
        f"'{task.name}' is the name of a metric (its key would be test/{task.name}); "
        "choose another",
    )


def default_name(task: TaskConfig) -> str:
    """A task's name when none is given: its dataset (``synthetic<seed>``; the file's stem for
    the user's own data), its classes (``mnist_01``), its permutation and rotation."""
    if task.dataset == "synthetic":
        name = f"synthetic{task.seed}"
    elif task.dataset in ("folder", "arrays", "shards"):
        stem = Path(task.path.rstrip("/").split("://")[-1]).stem
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)
    else:
        name = task.dataset
    if task.classes:
        name += "_" + "".join(str(c) for c in task.classes)
    if task.permutation >= 0:
        name += f"_perm{task.permutation}"
    if task.rotation:
        name += f"_rot{task.rotation:g}"
    return name


def check_synthetic(syn: SyntheticConfig) -> None:
    require(syn.n_train >= 20, "data.synthetic.n_train", "must be >= 20")
    require(syn.n_test >= 1, "data.synthetic.n_test", "must be >= 1")
    require(syn.noise >= 0, "data.synthetic.noise", "must be >= 0")
    require(syn.channels in (1, 3), "data.synthetic.channels", "must be 1 or 3")
    require(4 <= syn.size <= 512, "data.synthetic.size", "must be in 4..512")


def check_data(data: DataConfig) -> None:
    if data.benchmark:
        require(
            data.benchmark in BENCHMARKS,
            "data.benchmark",
            f"'{data.benchmark}' is not one of {', '.join(BENCHMARKS)}",
        )
        require(data.n_tasks >= 1, "data.n_tasks", "must be >= 1")
        check_split(data)
        expanded = benchmark_tasks(data)
        for task in expanded:
            check_task(task)
        # A resolved config (config.yaml of a run, a checkpoint) holds both: they must agree.
        require(
            not data.tasks or data.tasks == expanded,
            "data.benchmark",
            "set data.benchmark or data.tasks, not both",
        )
        data.tasks = expanded
    require(len(data.tasks) >= 1, "data.tasks", "the sequence needs at least one task")
    names = [t.name for t in data.tasks]
    require(
        len(set(names)) == len(names),
        "data.tasks",
        f"task names must be unique, got {names} (set `name:` on repeated datasets)",
    )
    check_erasure(data, names)
    require(0.0 < data.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)")
    require(0.0 < data.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)")
    require(
        not data.image_size or (len(data.image_size) == 2 and min(data.image_size) >= 4),
        "data.image_size",
        f"{data.image_size}: [height, width] of at least 4 pixels each, or [] to keep the sizes",
    )
    require(data.channels in (0, 1, 3), "data.channels", "must be 1, 3 or 0 (as the data is)")
    require(0 <= data.crop_padding <= 64, "data.crop_padding", "must be in 0..64")
    require(0 <= data.pad <= 64, "data.pad", "must be in 0..64")
    require(data.memory_limit_gb > 0, "data.memory_limit_gb", "must be > 0")
    for task in data.tasks:
        require(
            task.dataset != "shards" or (task.permutation < 0 and not task.rotation),
            "data.tasks",
            f"{task.name}: a shards task takes no permutation or rotation (they are fixed "
            "transforms of a task held in memory: write them into the shards)",
        )
    require(data.batch_size >= 1, "data.batch_size", "must be >= 1")
    require(data.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")


def check_erasure(data: DataConfig, names: list[str]) -> None:
    """The erased samples and the canaries name tasks of the sequence."""
    unknown = sorted(set(data.erased) - set(names))
    require(
        not unknown,
        "data.erased",
        f"no task named {', '.join(unknown)} (tasks: {', '.join(names)})",
    )
    require(
        all(i >= 0 for ids in data.erased.values() for i in ids),
        "data.erased",
        "sample ids are indices >= 0 in the dataset's training file",
    )
    require(data.canaries >= 0, "data.canaries", "must be >= 0")
    require(
        not data.canary_task or data.canary_task in names,
        "data.canary_task",
        f"no task named {data.canary_task} (tasks: {', '.join(names)})",
    )


def check_split(data: DataConfig) -> None:
    """A ``split`` benchmark's dataset, and tasks that its classes can fill."""
    split = data.benchmark in ("split", "split_mnist")
    dataset = data.dataset or "mnist"
    require(
        not data.dataset or data.benchmark == "split",
        "data.dataset",
        f"'{data.dataset}': only the split benchmark takes a dataset ({data.benchmark} is MNIST's)",
    )
    require(
        data.benchmark != "split_mnist" or dataset == "mnist",
        "data.dataset",
        "split_mnist splits MNIST; use benchmark: split for another dataset",
    )
    if not split:
        return
    total = dataset_classes(dataset)
    require(
        total > 0,
        "data.dataset",
        f"'{dataset}' is not one of {', '.join(k for k in dataset_kinds() if dataset_classes(k))}",
    )
    require(data.classes_per_task >= 0, "data.classes_per_task", "must be >= 0")
    per = data.classes_per_task or 1
    require(
        data.n_tasks * per <= total,
        "data.n_tasks",
        f"{data.n_tasks} tasks of {per} class(es) need {data.n_tasks * per}, {dataset} has {total}",
    )


def check_model(model: ModelConfig) -> None:
    require(all(c >= 1 for c in model.channels), "model.channels", "must be positive")
    require(all(h >= 1 for h in model.hidden), "model.hidden", "must be positive")
    require(model.kernel_size >= 1, "model.kernel_size", "must be >= 1")
    require(0.0 <= model.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    require(model.width >= 1, "model.width", f"must be >= 1, got {model.width}")


def check_optim(optim: OptimConfig) -> None:
    require(0 < optim.lr <= MAX_LR, "optim.lr", f"must be in (0, {MAX_LR:g}], got {optim.lr}")
    require(
        0 <= optim.weight_decay <= 1,
        "optim.weight_decay",
        f"must be in [0, 1], got {optim.weight_decay}",
    )
    require(0 <= optim.momentum < 1, "optim.momentum", "must be in [0, 1)")


def check_trainer(trainer: TrainerConfig) -> None:
    require(1 <= trainer.epochs <= 10_000, "trainer.epochs", "must be in 1..10000")
    require(
        0 <= trainer.iterations <= 10_000_000,
        "trainer.iterations",
        "must be in 0..10000000 (0: trainer.epochs decides)",
    )
    require(
        trainer.precision in PRECISIONS,
        "trainer.precision",
        f"'{trainer.precision}' is not one of {', '.join(PRECISIONS)}",
    )
    require(trainer.threads >= 0, "trainer.threads", "must be >= 0")
    require(trainer.max_batches >= 0, "trainer.max_batches", "must be >= 0")
    require(trainer.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1")
    require(
        0 <= trainer.gradient_clip_val < float("inf"),
        "trainer.gradient_clip_val",
        "must be finite and >= 0 (0: no clipping)",
    )
    # The loss check cannot be switched off: a NaN run must not end FINISHED.
    require(trainer.check_finite_every >= 1, "trainer.check_finite_every", "must be >= 1")
    require(1 <= trainer.devices <= 1024, "trainer.devices", "must be in 1..1024")
    require(1 <= trainer.num_nodes <= 1024, "trainer.num_nodes", "must be in 1..1024")


def check_tracking(tracking: TrackingConfig) -> None:
    require_length(tracking.experiment, "tracking.experiment", "experiment")
    require_length(tracking.run_name, "tracking.run_name", "run_name")


def check_audit(audit: AuditConfig) -> None:
    require(1 <= audit.references <= 20, "audit.references", "must be in 1..20")


def check_experiment(cfg: ExperimentConfig) -> None:
    require(0 <= cfg.seed <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED}, got {cfg.seed}")
    require_length(cfg.description, "description", "description")  # the experiment's
    require(
        not cfg.data.stream or (cfg.trainer.epochs == 1 and not cfg.trainer.iterations),
        "data.stream",
        "a stream is seen once: set trainer.epochs=1 and trainer.iterations=0",
    )
    require(len(set(cfg.strategy)) == len(cfg.strategy), "strategy", "names repeat")
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    require(
        cfg.data.batch_size % world == 0,
        "data.batch_size",
        f"{cfg.data.batch_size} does not split evenly over {world} processes "
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
    """Run the rules of every nested section (:data:`RULES`) on ``node`` and what it holds.

    Children are checked first, so a task name is filled in before the sequence checks that
    names are unique.
    """
    children = [getattr(node, f.name) for f in fields(node)] if is_dataclass(node) else []
    for child in children:
        for item in child if isinstance(child, list) else [child]:
            if is_dataclass(item):
                check_values(item)
    rule = RULES.get(type(node))
    if rule is not None:
        rule(node)


#: The rules of each section of the schema.
RULES: dict[type, Callable[[Any], None]] = {
    TaskConfig: check_task,
    SyntheticConfig: check_synthetic,
    DataConfig: check_data,
    ModelConfig: check_model,
    OptimConfig: check_optim,
    TrainerConfig: check_trainer,
    TrackingConfig: check_tracking,
    AuditConfig: check_audit,
    ExperimentConfig: check_experiment,
    PathsConfig: PathsConfig.check,
}
