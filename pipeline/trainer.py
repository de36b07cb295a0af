"""One task's Lightning Trainer: built fresh per task, with the logger that holds its curves
for the run and the timer that leaves validation out of the training time.

Lightning's own MLFlowLogger is not used: it ends the run after each ``fit`` and logs at once,
where a run must log a task's curves only after its checkpoint (exact resume).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric
from typing_extensions import override

from pipeline import distributed
from pipeline.config.schema import TrainerConfig
from pipeline.metrics import PERCENT_DECIMALS
from pipeline.tracking import Run, metric_records


class TaskLogger(Logger):
    """Lightning logger that collects one task's training curves for an MLflow run.

    Metric names get a task prefix (``t0/train/loss``) because each task's fresh Trainer starts
    its ``global_step`` at 0 again. The curves are held (:attr:`curves`) and written by the
    runner once the task's checkpoint is saved: a task cut off by a crash has logged nothing,
    so a resumed run logs each step once. Lightning never ends the run either (its MLFlowLogger
    would mark it FINISHED after the first task's ``fit``).
    """

    def __init__(self, run: Run | None, task_index: int) -> None:
        super().__init__()
        self.run = run  # None in the processes of a distributed run other than the main one
        self.prefix = f"t{task_index}/"
        self.curves: list[Metric] = []

    @property
    @override
    def name(self) -> str:
        return "mlflow-task"

    @property
    @override
    def version(self) -> str:
        return self.run.run_id if self.run is not None else ""

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are logged once per run by the runner, not per task."""

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Lightning hands values over as float32 (99.67 arrives as 99.66999816894531): the
        # accuracies, logged in percent, are rounded again as pipeline.metrics.percent rounds.
        named = {
            self.prefix + k: round(v, PERCENT_DECIMALS) if k.endswith("/acc") else v
            for k, v in metrics.items()
            if k != "epoch"
        }
        self.curves += metric_records(named, step or 0)


class TrainTimer(Callback):
    """Training wall time of one ``fit``, with the validation passes left out."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = self._val_start = 0.0
        self._val = 0.0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._val = time.perf_counter(), 0.0

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val += time.perf_counter() - self._val_start

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":  # kernels still queued belong to the training
            torch.cuda.synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self._start - self._val


def resolve_device(accelerator: str) -> torch.device:
    """The device that ``trainer.accelerator`` names (``auto``: CUDA when there is one); in a
    distributed run, this process's GPU (Lightning's launch selected it)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
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
    # The module's transfer_batch_to_device is meant to win over the datamodule's default.
    warnings.filterwarnings("ignore", ".*overridden `transfer_batch_to_device`.*")
    # DDP: a 1-channel convolution's channels-last gradient is laid out as a contiguous one;
    # the copy into DDP's bucket costs nothing worth a warning at every task.
    warnings.filterwarnings("ignore", ".*Grad strides do not match bucket view strides.*")


def make_trainer(
    cfg: TrainerConfig,
    device: torch.device,
    logger: TaskLogger,
    timer: TrainTimer,
    root_dir: str,
) -> pl.Trainer:
    """A fresh Trainer for one task (a reused Trainer would carry epochs and callbacks over)."""
    # Bars only on a terminal: redirected to a file or CI log they are megabytes of redraws.
    bars = cfg.progress_bar and sys.stderr.isatty()
    callbacks: list[Callback] = [timer]
    if bars:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    strategy: str | Strategy = "auto"
    if distributed.world_size_of(cfg) > 1:
        # Our loaders slice each global batch per rank themselves (use_distributed_sampler is
        # off below). Every parameter takes part in every step (a multi-head network runs all
        # its heads), so DDP need not search the graph for unused ones.
        strategy = DDPStrategy(find_unused_parameters=False)
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else device.type,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        use_distributed_sampler=False,
        # A number of iterations: as many (reshuffled) epochs as those steps take.
        max_epochs=-1 if cfg.iterations else cfg.epochs,
        max_steps=cfg.iterations or -1,
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
