"""The task-sequence runner: train on each task in turn, evaluate every task after each one.

:func:`run_sequence` is the outer loop of the whole project and reads top to bottom. Everything
a strategy does happens through the module's hooks; everything recorded goes through
:class:`pipeline.tracking.Run`.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from pipeline import metrics
from pipeline.config import ExperimentConfig, TrainerConfig, flatten, from_dict, to_dict, to_yaml
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import IMAGE_SHAPE, Task
from pipeline.models import build_model
from pipeline.module import ContinualModule
from pipeline.report import heatmap
from pipeline.strategies import Strategy, TaskContext, build_strategies
from pipeline.tracking import (
    Run,
    TaskLogger,
    client_for,
    git_commit,
    local_path,
    package_versions,
    scratch_dir,
)

SPLITS = ("val", "test")  # val: model selection and sweeps; test: reporting only
MATRIX_FILE = "accuracy_matrix.json"  # artifacts of a finished run, read back by from_run
LEDGER_FILE = "retention.json"

# Called after each task with its index and the accuracy rows so far (per evaluated split);
# sweeps report to their pruner here and may raise to stop the sequence.
TaskCallback = Callable[[int, dict[str, np.ndarray]], None]


@dataclass
class TaskRecord:
    """What training one task cost and what the strategies kept afterwards.

    Attributes:
        train_seconds: training time (validation excluded).
        samples: samples trained on, after the strategies' transforms (replay adds some).
        wall_seconds: the whole task: training, validation, hooks, evaluation of every task.
        retention: the retention ledger after the task (:func:`ledger`).
    """

    train_seconds: float
    samples: int
    wall_seconds: float
    retention: dict[str, Any]


@dataclass
class SequenceResult:
    """What a finished sequence measured.

    Attributes:
        run_id, experiment_id: the MLflow run.
        tasks, displays: task keys and display names, in sequence order.
        matrix: per split, the accuracy matrix R[i][j] (after task i, on task j).
        init: per split, the untrained model's accuracy on each task (for FWT).
        summary: per split, the summary metrics of :func:`pipeline.metrics.summarize`.
        records: per task, its cost and retention ledger.
    """

    run_id: str
    experiment_id: str
    tasks: list[str]
    displays: list[str]
    matrix: dict[str, np.ndarray]
    init: dict[str, list[float]]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    records: list[TaskRecord] = field(default_factory=list)

    @classmethod
    def from_run(cls, store: str | Path, run_id: str) -> SequenceResult:
        """Read back the result of a finished run from its artifacts (a comparison resumes so).

        Raises:
            LookupError: the run has no result artifacts (it did not finish).
        """
        run = client_for(store).get_run(run_id)
        folder = local_path(run.info.artifact_uri)
        try:
            acc = json.loads((folder / MATRIX_FILE).read_text())
            kept = json.loads((folder / LEDGER_FILE).read_text())
        except (OSError, ValueError) as e:
            raise LookupError(f"run {run_id} has no readable result: {e}") from None
        splits = [s for s in SPLITS if s in acc]
        return cls(
            run_id,
            run.info.experiment_id,
            acc["tasks"],
            acc["display"],
            {s: np.array(acc[s]["matrix"]) for s in splits},
            {s: acc[s]["init"] for s in splits},
            {s: acc[s]["summary"] for s in splits},
            [TaskRecord(**{k: v for k, v in r.items() if k != "task"}) for r in kept],
        )

    @property
    def train_seconds(self) -> list[float]:
        return [r.train_seconds for r in self.records]

    @property
    def train_samples(self) -> list[int]:
        return [r.samples for r in self.records]


def ledger(strategies: list[Strategy]) -> dict[str, Any]:
    """The retention ledger: raw samples kept (per task), their bytes, derived-state bytes."""
    raw: dict[str, int] = {}
    raw_bytes = state_bytes = 0
    for s in strategies:
        r = s.retention()
        for name, n in r.raw_samples.items():
            raw[name] = raw.get(name, 0) + n
        raw_bytes += r.raw_bytes
        state_bytes += r.state_bytes
    return {
        "raw_samples": sum(raw.values()),
        "raw_from": raw,
        "raw_bytes": raw_bytes,
        "state_bytes": state_bytes,
    }


class TrainTimer(Callback):
    """Training wall time of one ``fit``, with the validation passes left out."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = self._val_start = 0.0
        self._val = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._val = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val += time.perf_counter() - self._val_start

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self._start - self._val


def resolve_device(accelerator: str) -> torch.device:
    """The device that ``trainer.accelerator`` names (``auto``: CUDA when there is one)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def quiet_lightning() -> None:
    """Drop Lightning's per-Trainer banner lines and warnings that do not apply here."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    # In-memory batches: worker processes would only add copies.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")  # inside Lightning 2.6
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema-creation lines


def make_trainer(
    cfg: TrainerConfig, device: torch.device, logger: TaskLogger, timer: TrainTimer, root_dir: str
) -> pl.Trainer:
    """A fresh Trainer for one task (a reused Trainer would carry epochs and callbacks over)."""
    # Bars only on a terminal: redirected to a file or CI log they are megabytes of redraws.
    bars = cfg.progress_bar and sys.stderr.isatty()
    callbacks: list[Callback] = [timer]
    if bars:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else device.type,
        devices=1,
        max_epochs=cfg.epochs,
        precision=cfg.precision,  # type: ignore[arg-type]
        deterministic=cfg.deterministic,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=bars,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every_n_steps,
        limit_val_batches=1.0 if cfg.validate_every_epoch else 0,
        gradient_clip_val=cfg.gradient_clip_val or None,
        default_root_dir=root_dir,
        enable_autolog_hparams=False,
    )


def evaluate(
    module: ContinualModule,
    data: ContinualDataModule,
    device: torch.device,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, list[float]]:
    """Accuracy on every task of the sequence, seen or not, per split of ``splits``."""
    module.to(device)
    return {s: [module.accuracy(loader, device) for loader in data.eval_loaders(s)] for s in splits}


def run_sequence(
    cfg: ExperimentConfig,
    parent_run_id: str | None = None,
    *,
    splits: tuple[str, ...] = SPLITS,
    on_task: TaskCallback | None = None,
    tags: Mapping[str, str] | None = None,
) -> SequenceResult:
    """Train on the tasks of ``cfg`` in order, tracked as one MLflow run.

    Args:
        cfg: a validated experiment config (:func:`pipeline.config.compose`).
        parent_run_id: MLflow run to nest this run under (sweeps, comparisons).
        splits: the splits evaluated after each task. Sweeps pass ``("val",)`` so that no
            test sample is read while hyperparameters are chosen.
        on_task: called after each task (metrics and checkpoint logged) with the task index and
            the accuracy rows so far; an exception it raises ends the run (FAILED).
        tags: extra MLflow tags of the run (a sweep's study and trial number).

    Raises:
        DataError: the data is missing (before any MLflow run is created).
        DivergenceError: the loss became NaN/inf (the run is marked FAILED; the checkpoints of
            the tasks already finished stay in the store).
    """
    if not splits or not set(splits) <= set(SPLITS):
        raise ValueError(f"splits: expected a non-empty subset of {SPLITS}, got {splits}")
    quiet_lightning()
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    data = ContinualDataModule(cfg.data, cfg.seed, cfg.trainer.max_batches, cfg.scenario)
    data.setup()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg.model, data.input_shape, data.classes_per_task, cfg.scenario)
    module = ContinualModule(
        model,
        build_strategies(cfg.strategy, cfg.strategies),
        cfg.optim,
        cfg.trainer.check_finite_every,
    )
    device = resolve_device(cfg.trainer.accelerator)

    with (
        Run.start(
            cfg.tracking.store,
            cfg.tracking.experiment or cfg.name,
            cfg.tracking.run_name,
            parent_run_id,
            {"splits": ",".join(splits), **(tags or {})},
        ) as run,
        scratch_dir() as tmp,
    ):
        log_run_info(run, cfg, data.tasks, device)
        result = SequenceResult(
            run.run_id,
            run.experiment_id,
            [t.name for t in data.tasks],
            [t.display for t in data.tasks],
            {},
            evaluate(module, data, device, splits),
        )
        rows: dict[str, list[list[float]]] = {s: [] for s in splits}
        for task in data.tasks:
            started = time.perf_counter()
            data.set_task(task.index)
            ctx = TaskContext(task.index, task, data, module, device)
            module.to(device)
            module.start_task(ctx)
            timer = TrainTimer()
            trainer = make_trainer(
                cfg.trainer, device, TaskLogger(run, task.index), timer, str(tmp)
            )
            trainer.fit(module, datamodule=data)
            module.to(device)  # fit's teardown moved it to the CPU
            module.end_task(ctx)
            acc = evaluate(module, data, device, splits)
            for s in splits:
                rows[s].append(acc[s])
            record = TaskRecord(
                timer.seconds,
                module.samples_trained,
                time.perf_counter() - started,
                ledger(module.strategies),
            )
            result.records.append(record)
            log_task(run, task, data.tasks, rows, record)
            if cfg.tracking.log_checkpoints:
                save_checkpoint(run, trainer, module, cfg, task, data.classes_per_task, tmp)
            if on_task is not None:
                on_task(task.index, {s: np.array(rows[s]) for s in splits})
        result.matrix = {s: np.array(rows[s]) for s in splits}
        result.summary = {s: metrics.summarize(result.matrix[s], result.init[s]) for s in splits}
        log_results(run, cfg, result)
    return result


def load_checkpoint(path: str | Path) -> tuple[ContinualModule, ExperimentConfig, dict[str, Any]]:
    """Rebuild the module (network and strategy state) from a per-task checkpoint.

    Returns:
        The module on the CPU in eval mode, the run's config, and the checkpoint's metadata
        (``run_id``, ``task_index``, ``task_name``).

    Raises:
        ValueError: the file is not a checkpoint written by :func:`run_sequence`.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt["pipeline"]
        cfg = from_dict(meta["config"])
    except (OSError, KeyError, RuntimeError, TypeError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: not a pipeline checkpoint ({type(e).__name__}: {e})") from e
    model = build_model(cfg.model, IMAGE_SHAPE, meta["classes_per_task"], cfg.scenario)
    module = ContinualModule(model, build_strategies(cfg.strategy, cfg.strategies), cfg.optim)
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    return module.eval(), cfg, {k: v for k, v in meta.items() if k != "config"}


def log_run_info(run: Run, cfg: ExperimentConfig, tasks: list[Task], device: torch.device) -> None:
    """Config (params + YAML artifact), data checksums, commit, package versions, seed."""
    run.log_params(flatten(to_dict(cfg)))
    run.log_text(to_yaml(cfg), "config.yaml")
    run.set_tags(
        {
            "mlflow.source.git.commit": git_commit(),
            "scenario": cfg.scenario,
            "strategy": "+".join(cfg.strategy),
            "tasks": " -> ".join(t.name for t in tasks),
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            **{f"version.{k}": v for k, v in package_versions().items()},
            **{f"md5.{t.name}.{f}": h for t in tasks for f, h in t.md5.items()},
        }
    )
    run.log_json({t.name: t.md5 for t in tasks}, "data_checksums.json")


def log_task(
    run: Run,
    task: Task,
    tasks: list[Task],
    rows: dict[str, list[list[float]]],
    record: TaskRecord,
) -> None:
    """Everything known after ``task``, at step = its index: accuracy on every task, the
    running average accuracy, time and samples, the retention ledger.

    ``time/train_s`` is training alone; ``time/task_wall_s`` adds the per-epoch validation, the
    strategies' task hooks and the evaluation of every task.
    """
    step = task.index
    values: dict[str, float] = {}
    for s in rows:
        values |= {f"acc/{t.name}/{s}": rows[s][-1][t.index] for t in tasks}
        values[f"avg_acc/{s}"] = metrics.average_accuracy(np.array(rows[s]), step)
    kept = record.retention
    values |= {
        "time/train_s": record.train_seconds,
        "time/task_wall_s": record.wall_seconds,
        "train/samples": record.samples,
        "train/samples_per_s": record.samples / max(record.train_seconds, 1e-9),
        "retention/raw_samples": kept["raw_samples"],
        "retention/raw_bytes": kept["raw_bytes"],
        "retention/state_bytes": kept["state_bytes"],
        **{f"retention/raw_from/{t.name}": kept["raw_from"].get(t.name, 0) for t in tasks},
    }
    run.log_metrics(values, step=step)


def save_checkpoint(
    run: Run,
    trainer: pl.Trainer,
    module: ContinualModule,
    cfg: ExperimentConfig,
    task: Task,
    classes_per_task: list[int],
    tmp: Path,
) -> None:
    """Log a checkpoint of the model and strategy state after ``task`` (one file per task)."""
    name = f"task{task.index:02d}-{task.name}.ckpt"
    module.extra_checkpoint = {
        "run_id": run.run_id,
        "task_index": task.index,
        "task_name": task.name,
        "classes_per_task": classes_per_task,
        "config": to_dict(cfg),
    }
    path = tmp / name
    trainer.save_checkpoint(path, weights_only=False)  # optimizer state too, for resuming
    run.log_file(path, "checkpoints")
    path.unlink()


def log_results(run: Run, cfg: ExperimentConfig, result: SequenceResult) -> None:
    """Summary metrics, the accuracy matrix (JSON) and its heatmap (PNG)."""
    splits = list(result.matrix)
    run.log_metrics(
        {f"summary/{s}/{k}": v for s in splits for k, v in result.summary[s].items()}
        | {
            f"init_acc/{n}/{s}": result.init[s][j]
            for s in splits
            for j, n in enumerate(result.tasks)
        }
        | {"time/train_total_s": sum(result.train_seconds)}
    )
    run.log_json(
        [{"task": n, **asdict(r)} for n, r in zip(result.tasks, result.records, strict=True)],
        LEDGER_FILE,
    )
    run.log_json(
        {
            "rows": "after training task i",
            "columns": "accuracy on task j",
            "scenario": cfg.scenario,
            "tasks": result.tasks,
            "display": result.displays,
            **{
                s: {
                    "matrix": result.matrix[s].tolist(),
                    "init": result.init[s],
                    "summary": result.summary[s],
                }
                for s in splits
            },
        },
        MATRIX_FILE,
    )
    title = (
        f"{cfg.name}: {' -> '.join(result.displays)} ({cfg.scenario}-incremental, "
        f"{'+'.join(cfg.strategy)})"
    )
    run.log_figure(
        heatmap(
            {s: result.matrix[s] for s in ("test", "val") if s in splits}, result.displays, title
        ),
        "accuracy_matrix.png",
    )
