"""The task-sequence runner: train on each task in turn, evaluate every task after each one.

:func:`run_sequence` is the outer loop of the whole project and reads top to bottom. Everything
a strategy does happens through the module's hooks; the caller owns the MLflow run (it passes a
factory that opens it), and everything recorded goes through :mod:`pipeline.runfiles` and
:class:`pipeline.tracking.Run`.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from pipeline import runfiles
from pipeline.config import ExperimentConfig, TrainerConfig, to_dict
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Task
from pipeline.models import build_model
from pipeline.module import ContinualModule
from pipeline.results import SPLITS, SequenceResult, TaskRecord, ledger, task_metrics
from pipeline.strategies import TaskContext, build_strategies
from pipeline.tracking import (
    Run,
    RunFactory,
    TaskLogger,
    flatten,
    git_commit,
    package_versions,
    scratch_dir,
)

# Called after each task with its index and the accuracy rows so far (per evaluated split);
# sweeps report to their pruner here and may raise (a StopRun) to stop the sequence.
TaskCallback = Callable[[int, dict[str, np.ndarray]], None]


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


def prepare(cfg: ExperimentConfig) -> tuple[ContinualDataModule, ContinualModule, torch.device]:
    """The tasks in memory, the seeded network with its strategies, the device.

    Raises:
        DataError: the data is missing.
    """
    quiet_lightning()
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    data = ContinualDataModule(
        cfg.data, cfg.seed, cfg.trainer.max_batches, cfg.scenario, cfg.paths.data_dir()
    )
    data.setup()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg.model, data.input_shape, data.classes_per_task, cfg.scenario)
    strategies = build_strategies(cfg)
    module = ContinualModule(model, strategies, cfg.optim, cfg.trainer.check_finite_every)
    return data, module, resolve_device(cfg.trainer.accelerator)


def run_sequence(
    cfg: ExperimentConfig,
    open_run: RunFactory,
    *,
    splits: tuple[str, ...] = SPLITS,
    on_task: TaskCallback | None = None,
) -> SequenceResult:
    """Train on the tasks of ``cfg`` in order, tracked in the run ``open_run`` opens.

    Args:
        cfg: a validated experiment config (:func:`pipeline.experiment.compose`).
        open_run: opens the MLflow run to write into (:meth:`pipeline.tracking.Run.factory`),
            once the data is loaded; the run ends as its context manager decides (FINISHED,
            FAILED, KILLED, or a :class:`pipeline.tracking.StopRun`'s status).
        splits: the splits evaluated after each task. Sweeps pass ``("val",)`` so that no
            test sample is read while hyperparameters are chosen.
        on_task: called after each task (metrics and checkpoint logged) with the task index and
            the accuracy rows so far; an exception it raises ends the run.

    Raises:
        DataError: the data is missing (before any MLflow run is opened).
        DivergenceError: the loss became NaN/inf (the run ends FAILED; the checkpoints of
            the tasks already finished stay in the store).
    """
    if not splits or not set(splits) <= set(SPLITS):
        raise ValueError(f"splits: expected a non-empty subset of {SPLITS}, got {splits}")
    data, module, device = prepare(cfg)

    with open_run() as run, scratch_dir() as tmp:
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
            ctx = TaskContext(task.index, task, data, module.model, device)
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
            run.log_metrics(task_metrics(task, data.tasks, rows, record), step=task.index)
            if cfg.tracking.log_checkpoints:
                meta = runfiles.CheckpointMeta(
                    run.run_id, task.index, task.name, data.classes_per_task, to_dict(cfg)
                )
                runfiles.save_checkpoint(run, module, trainer.optimizers, meta)
            if on_task is not None:
                on_task(task.index, {s: np.array(rows[s]) for s in splits})
        result.finish(rows)
        run.log_metrics(result.final_metrics())
        runfiles.write_results(run, cfg, result)
    return result


def log_run_info(run: Run, cfg: ExperimentConfig, tasks: list[Task], device: torch.device) -> None:
    """Config (params + YAML artifact), data checksums, commit, package versions, device."""
    run.log_params(flatten(to_dict(cfg)))
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
    runfiles.write_run_info(run, cfg, tasks)
