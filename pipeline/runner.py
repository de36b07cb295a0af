"""The task-sequence runner: train on each task in turn, evaluate every task after each one.

:func:`run_sequence` is the outer loop of the whole project and reads top to bottom. Everything
a strategy does happens through the module's hooks; the caller owns the MLflow run (it passes a
factory that opens it), and everything recorded goes through :mod:`pipeline.runfiles` and
:class:`pipeline.tracking.Run`.
"""

from __future__ import annotations

import gc
import logging
import random
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric

from pipeline import OMP_WAIT_POLICY, distributed, runfiles
from pipeline.config import ExperimentConfig, TrainerConfig, to_dict
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Task
from pipeline.keys import SPLITS, table_columns
from pipeline.metrics import PERCENT_DECIMALS
from pipeline.models import build_model
from pipeline.module import ContinualModule
from pipeline.provenance import git_commit, package_versions
from pipeline.results import Progress, SequenceResult, TaskRecord, ledger, task_metrics
from pipeline.strategies import TaskContext, build_strategies
from pipeline.tracking import (
    Run,
    RunFactory,
    flatten,
    metric_records,
    records_of,
    rows_of,
    scratch_dir,
)

TASKS_DONE_TAG = "pipeline.tasks_done"  # on a run: tasks finished so far (make runs)
# Called after each task with its index and the accuracy rows so far (per evaluated split);
# sweeps report to their pruner here and may raise (a StopRun) to stop the sequence.
TaskCallback = Callable[[int, dict[str, np.ndarray]], None]


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
    def name(self) -> str:
        return "mlflow-task"

    @property
    def version(self) -> str:
        return self.run.run_id if self.run is not None else ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are logged once per run by the runner, not per task."""

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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._val = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val += time.perf_counter() - self._val_start

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
    distributed.launch(cfg.trainer)  # the other processes of a distributed run (else no-op)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    data = ContinualDataModule(
        cfg.data, cfg.seed, cfg.trainer.max_batches, cfg.scenario, cfg.paths.data_dir()
    )
    data.setup()
    device = resolve_device(cfg.trainer.accelerator)
    if device.type == "cuda":
        data.move_to(device)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg.model, data.input_shape, data.classes_per_task, cfg.scenario)
    strategies = build_strategies(cfg)
    module = ContinualModule(
        model, strategies, cfg.optim, cfg.trainer.check_finite_every, cfg.trainer.log_every_n_steps
    )
    return data, module, device


@dataclass
class Resume:
    """What a resumed run starts from: the last finished task's checkpoint (its raw contents:
    weights, strategy states, progress), or nothing when the run died before its first one."""

    checkpoint: dict[str, Any] | None = None

    @property
    def progress(self) -> Progress | None:
        if self.checkpoint is None:
            return None
        return Progress.from_record(self.checkpoint["pipeline"]["progress"])

    def restore(self, module: ContinualModule) -> None:
        """Load the checkpoint's weights and strategy states into a freshly built module."""
        if self.checkpoint is not None:
            module.load_state_dict(self.checkpoint["state_dict"])
            module.load_strategy_states(self.checkpoint["strategies"])


def run_sequence(
    cfg: ExperimentConfig,
    open_run: RunFactory,
    *,
    splits: tuple[str, ...] = SPLITS,
    on_task: TaskCallback | None = None,
    resume: Resume | None = None,
) -> SequenceResult:
    """Train on the tasks of ``cfg`` in order, tracked in the run ``open_run`` opens.

    After each task: evaluate every task, write the checkpoint (with the progress a resume
    needs), then log the task's metrics and training curves, so that a run cut off at any
    moment can carry on from its last checkpoint with every metric step logged once.

    Args:
        cfg: a validated experiment config (:func:`pipeline.experiment.compose`).
        open_run: opens the MLflow run to write into (:meth:`pipeline.tracking.Run.factory`),
            once the data is loaded; the run ends as its context manager decides (FINISHED,
            FAILED, KILLED, or a :class:`pipeline.tracking.StopRun`'s status).
        splits: the splits evaluated after each task. Sweeps pass ``("val",)`` so that no
            test sample is read while hyperparameters are chosen.
        on_task: called after each task (metrics and checkpoint logged) with the task index and
            the accuracy rows so far; an exception it raises ends the run.
        resume: carry on a run that was cut off (:mod:`pipeline.resume`), in the same run.

    Raises:
        DataError: the data is missing (before any MLflow run is opened).
        DivergenceError: the loss or a weight became NaN/inf (the run ends FAILED; the
            checkpoints of the tasks already finished stay in the store).
    """
    if not splits or not set(splits) <= set(SPLITS):
        raise ValueError(f"splits: expected a non-empty subset of {SPLITS}, got {splits}")
    data, module, device = prepare(cfg)
    if resume is not None:
        resume.restore(module)
    # In a distributed run only the main process opens and writes the run (pipeline.distributed);
    # every process trains and evaluates its share.
    opened = open_run() if distributed.is_main() else nullcontext(None)
    with opened as run, scratch_dir() as tmp:
        run_id, experiment_id = distributed.broadcast_object(
            (run.run_id, run.experiment_id) if run is not None else None
        )
        progress = begin(run, cfg, data, module, device, splits, resume)
        for task in data.tasks[progress.next_task :]:
            acc, record, curves, optimizers = train_task(
                cfg, run, task, data, module, device, splits, tmp
            )
            for s in splits:
                progress.rows[s].append(acc[s])
            progress.records.append(record)
            values = task_metrics(task, data.tasks, progress.rows, record)
            logged = [*metric_records(values, task.index), *curves]
            progress.next_task, progress.rng = task.index + 1, rng_state()
            progress.logged = rows_of(logged)
            if run is not None:
                record_task(
                    run, cfg, task, data, module, optimizers, progress, logged, resume is not None
                )
            if on_task is not None:
                on_task(task.index, {s: np.array(progress.rows[s]) for s in splits})
        names, displays = [t.name for t in data.tasks], [t.display for t in data.tasks]
        result = SequenceResult(
            run_id, experiment_id, names, displays, {}, progress.init, {}, progress.records
        )
        result.finish(progress.rows)
        if run is not None:
            final = metric_records(result.final_metrics())
            if resume is not None:  # the cut-off process may have logged some of them
                run.log_missing(final)
            else:
                run.log_records(final)
            runfiles.write_results(run, cfg, result)
    # Trainers and module refer to each other, and to the tasks: free them now, not at a later
    # collection, before a landscape or a comparison's next run loads its own data.
    del data, module
    gc.collect()
    return result


def record_task(
    run: Run,
    cfg: ExperimentConfig,
    task: Task,
    data: ContinualDataModule,
    module: ContinualModule,
    optimizers: list[torch.optim.Optimizer],
    progress: Progress,
    logged: list[Metric],
    resumed: bool = False,
) -> None:
    """Write what a finished task leaves in the run: its checkpoint first (with the progress
    a resume needs), then its metrics and curves, then the count of tasks done. A resumed run
    logs only the metric steps it lacks: a task trained again because its checkpoint did not
    load (:mod:`pipeline.resume`) had logged them."""
    if cfg.tracking.log_checkpoints:
        meta = runfiles.CheckpointMeta(
            run.run_id,
            task.index,
            task.name,
            data.classes_per_task,
            to_dict(cfg),
            progress.to_record(),
        )
        runfiles.save_checkpoint(run, module, optimizers, meta)
    if resumed:
        run.log_missing(logged)
    else:
        run.log_records(logged)
    run.set_tags({TASKS_DONE_TAG: progress.next_task})


def begin(
    run: Run | None,
    cfg: ExperimentConfig,
    data: ContinualDataModule,
    module: ContinualModule,
    device: torch.device,
    splits: tuple[str, ...],
    resume: Resume | None,
) -> Progress:
    """Where the sequence starts: task 0 of a new run (its info logged, the untrained model
    evaluated for FWT); or the task after a resumed run's last checkpoint, the random number
    generators as they were, and the last task's metrics logged where the cut-off process had
    not logged them."""
    progress = resume.progress if resume is not None else None
    if progress is None:
        if resume is None and run is not None:  # a resumed run has its config, params, tags
            log_run_info(run, cfg, data.tasks, device)
        return Progress(0, {s: [] for s in splits}, evaluate(module, data, device, splits))
    restore_rng(progress.rng)
    if run is not None:
        run.log_missing(records_of(progress.logged))
    return progress


def train_task(
    cfg: ExperimentConfig,
    run: Run | None,
    task: Task,
    data: ContinualDataModule,
    module: ContinualModule,
    device: torch.device,
    splits: tuple[str, ...],
    tmp: Path,
) -> tuple[dict[str, list[float]], TaskRecord, list[Metric], list[torch.optim.Optimizer]]:
    """Train ``task`` with a fresh Trainer, then evaluate every task: the accuracies, the
    task's record, its training curves (held, see :class:`TaskLogger`) and its optimizers (for
    the checkpoint)."""
    started = time.perf_counter()
    data.set_task(task.index)
    ctx = TaskContext(task.index, task, data, module.model, device)
    module.to(device)
    module.start_task(ctx)
    timer, logger = TrainTimer(), TaskLogger(run, task.index)
    trainer = make_trainer(cfg.trainer, device, logger, timer, str(tmp))
    trainer.fit(module, datamodule=data)
    module.to(device)  # fit's teardown moved it to the CPU
    module.end_task(ctx)
    distributed.check_replicas(module.replica_state(), device)
    acc = evaluate(module, data, device, splits)
    record = TaskRecord(
        timer.seconds,
        distributed.sum_int(module.samples_trained, device),
        time.perf_counter() - started,  # training, validation, hooks and the evaluation
        ledger(module.strategies),
    )
    return acc, record, logger.curves, list(trainer.optimizers)


def rng_state() -> dict[str, Any]:
    """The states of every random number generator the training reads: torch's (CPU and
    CUDA), NumPy's and Python's, as plain containers (a checkpoint loads them safely)."""
    np_state: Any = np.random.get_state(legacy=True)  # (name, keys, pos, has_gauss, gauss)
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
        "python": [py_version, list(py_state), py_gauss],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set the generators to a state :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), gauss))
    version, values, gauss_next = state["python"]
    random.setstate((version, tuple(values), gauss_next))


def log_run_info(run: Run, cfg: ExperimentConfig, tasks: list[Task], device: torch.device) -> None:
    """Config (YAML artifact + params), data checksums, commit, package versions, device.

    The config's file first: a run cut off after it (a server that went down, a kill) can be
    resumed from its first task."""
    runfiles.write_run_info(run, cfg, tasks)
    run.log_params(flatten(to_dict(cfg)))
    run.set_tags(
        {
            "mlflow.source.git.commit": git_commit(),
            "scenario": cfg.scenario,
            "strategy": "+".join(cfg.strategy),
            "tasks": " -> ".join(t.name for t in tasks),
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            # the threads' wait policy decides how the run shares a busy machine (pipeline/__init__)
            "omp_wait_policy": OMP_WAIT_POLICY or "unset",
            **{f"version.{k}": v for k, v in package_versions().items()},
            **{f"md5.{t.name}.{f}": h for t in tasks for f, h in t.md5.items()},
        }
    )
    run.store.show_columns(run.experiment_id, table_columns([t.name for t in tasks]))
