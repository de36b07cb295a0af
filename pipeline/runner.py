"""The task-sequence runner: train on each task in turn, evaluate every task after each one.

:func:`run_sequence` is the outer loop of the whole project and reads top to bottom, in named
phases: prepare, begin, then per task train, advance and record, then finish. The phases read
one state, :class:`Loop`. Everything a strategy does happens through the module's hooks; each
task's Trainer is built by :mod:`pipeline.trainer`; the caller owns the MLflow run (it passes a
factory that opens it), and everything recorded goes through :mod:`pipeline.runfiles` and
:class:`pipeline.tracking.Run`.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from mlflow.entities import Metric

from pipeline import OMP_WAIT_POLICY, checkpoints, distributed, runfiles
from pipeline.config.schema import ExperimentConfig, to_dict
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Split, Task
from pipeline.keys import SPLITS, table_columns
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
from pipeline.trainer import TaskLogger, TrainTimer, make_trainer, quiet_lightning, resolve_device

TASKS_DONE_TAG = "pipeline.tasks_done"  # on a run: tasks finished so far (make runs)
# Called after each task with its index and the accuracy rows so far (per evaluated split);
# sweeps report to their pruner here and may raise (a StopRun) to stop the sequence.
TaskCallback = Callable[[int, dict[str, np.ndarray]], None]


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
    # What is alive now (the libraries: torch, Lightning, MLflow; 750,000 objects) lives as long
    # as the process. Frozen, the cyclic collector never scans it again: the collections during
    # the run and the one after it scan what the run made (0.45 s less per small run).
    gc.freeze()
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
        model,
        strategies,
        cfg.optim,
        cfg.trainer.check_finite_every,
        cfg.trainer.log_every_n_steps,
        augment=cfg.data.augment,
        crop_padding=cfg.data.crop_padding,
        seed=cfg.seed,
    )
    return data, module, device


@dataclass
class Resume:
    """What a resumed run starts from: the last finished task's checkpoint (its raw contents:
    weights, strategy states, progress), or nothing when the run died before its first one."""

    checkpoint: dict[str, Any] | None = None
    #: carry on in a new run (:mod:`pipeline.unlearning`): it logs its config and every task's
    new_run: bool = False

    @property
    def progress(self) -> Progress | None:
        if self.checkpoint is None:
            return None
        return Progress.from_record(self.checkpoint["pipeline"]["progress"])

    def restore(self, module: ContinualModule) -> None:
        """Load the checkpoint's weights, strategy states and carried optimizer state."""
        if self.checkpoint is not None:
            module.load_state_dict(self.checkpoint["state_dict"])
            module.load_strategy_states(self.checkpoint["strategies"])
            if module.optim.carry_state and (states := self.checkpoint["optimizer_states"]):
                module.carried = states[0]


@dataclass
class Loop:
    """What every phase of the outer loop reads: one state, where nanoGPT's loop reads its
    globals (the phases take it and the task, not seven arguments each).

    Attributes:
        cfg: the experiment.
        run: the MLflow run (None in the other processes of a distributed run).
        data, module, device: the tasks, the network with its strategies, where they train.
        splits: the splits evaluated after each task.
        scratch: a folder for the Trainers' files.
        resumed: whether the run carries on one that was cut off.
        progress: where the sequence stands (:class:`pipeline.results.Progress`).
    """

    cfg: ExperimentConfig
    run: Run | None
    data: ContinualDataModule
    module: ContinualModule
    device: torch.device
    splits: tuple[str, ...]
    scratch: Path
    resumed: bool
    progress: Progress = field(init=False)


@dataclass
class Trained:
    """What training one task gave: every task's accuracies (per split), the task's record,
    its training curves (held, see :class:`TaskLogger`) and its optimizers (for the
    checkpoint)."""

    acc: dict[str, list[float]]
    record: TaskRecord
    curves: list[Metric]
    optimizers: list[torch.optim.Optimizer]


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
    # 1. prepare: the tasks in memory, the seeded network and its strategies
    data, module, device = prepare(cfg)
    if resume is not None:
        resume.restore(module)
    # only the main process of a distributed run opens and writes the run; all train and evaluate
    opened = open_run() if distributed.is_main() else nullcontext(None)
    with opened as run, scratch_dir() as tmp:
        run_id, experiment_id = distributed.broadcast_object(
            (run.run_id, run.experiment_id) if run is not None else None
        )
        resumed = resume is not None and not resume.new_run
        loop = Loop(cfg, run, data, module, device, splits, tmp, resumed)
        # 2. begin: task 0 of a new run, or the task after a resumed run's last checkpoint
        loop.progress = begin(loop, resume)
        for task in data.tasks[loop.progress.next_task :]:
            # 3. train the task with a fresh Trainer, then evaluate every task
            trained = train_task(loop, task)
            # 4. record: the progress, then the checkpoint and the metrics in the run
            logged = advance(loop, task, trained)
            if run is not None:
                record_task(loop, task, trained.optimizers, logged)
            if on_task is not None:
                on_task(task.index, {s: np.array(loop.progress.rows[s]) for s in splits})
        # 5. finish: the accuracy matrices, their summaries, the results files
        result = finish(loop, run_id, experiment_id)
    del data, module, loop  # they refer to each other: freed now, before a next run loads data
    gc.collect()
    return result


def begin(loop: Loop, resume: Resume | None) -> Progress:
    """Where the sequence starts: task 0 of a new run (its info logged, the untrained model
    evaluated for FWT); or the task after a resumed run's last checkpoint, the random number
    generators as they were, and the last task's metrics logged where the cut-off process had
    not logged them."""
    progress = resume.progress if resume is not None else None
    # a resumed run has its config and tags; a new one (a first, an unlearning) logs them
    if loop.run is not None and not loop.resumed:
        log_run_info(loop.run, loop.cfg, loop.data.tasks, loop.device, loop.splits)
    if progress is None:
        init = evaluate(loop.module, loop.data, loop.device, loop.splits)
        return Progress(0, {s: [] for s in loop.splits}, init)
    restore_rng(progress.rng)
    if loop.run is not None and loop.resumed:
        loop.run.log_missing(records_of(progress.logged))
    elif loop.run is not None:  # the tasks it carries over: as if it had trained them
        tasks, done = loop.data.tasks, progress.next_task
        for t in tasks[: done - 1]:
            rows = {s: progress.rows[s][: t.index + 1] for s in progress.rows}
            values = task_metrics(t, tasks, rows, progress.records[t.index])
            loop.run.log_records(metric_records(values, t.index))
        loop.run.log_records(records_of(progress.logged))
        loop.run.set_tags({TASKS_DONE_TAG: done})
    return progress


def train_task(loop: Loop, task: Task) -> Trained:
    """Train ``task`` with a fresh Trainer, then evaluate every task."""
    started = time.perf_counter()
    module, device = loop.module, loop.device
    loop.data.set_task(task.index)
    ctx = TaskContext(task.index, task, loop.data, module.model, device)
    module.to(device)
    module.start_task(ctx)
    timer, logger = TrainTimer(), TaskLogger(loop.run, task.index)
    trainer = make_trainer(loop.cfg.trainer, device, logger, timer, str(loop.scratch))
    trainer.fit(module, datamodule=loop.data)
    module.to(device)  # fit's teardown moved it to the CPU
    module.end_task(ctx)
    distributed.check_replicas(module.replica_state(), device)
    acc = evaluate(module, loop.data, device, loop.splits)
    record = TaskRecord(
        timer.seconds,
        distributed.sum_int(module.samples_trained, device),
        time.perf_counter() - started,  # training, validation, hooks and the evaluation
        ledger(module.strategies),
    )
    return Trained(acc, record, logger.curves, list(trainer.optimizers))


def advance(loop: Loop, task: Task, trained: Trained) -> list[Metric]:
    """Move the progress past ``task``: its accuracy rows, record and generator states, and
    the metric records it logs (kept in the progress too: a resume logs those missing)."""
    progress = loop.progress
    for s in loop.splits:
        progress.rows[s].append(trained.acc[s])
    progress.records.append(trained.record)
    values = task_metrics(task, loop.data.tasks, progress.rows, trained.record)
    logged = [*metric_records(values, task.index), *trained.curves]
    progress.next_task, progress.rng = task.index + 1, rng_state()
    progress.logged = rows_of(logged)
    return logged


def record_task(
    loop: Loop, task: Task, optimizers: list[torch.optim.Optimizer], logged: list[Metric]
) -> None:
    """Write what a finished task leaves in the run: its checkpoint first (with the progress
    a resume needs), then its metrics and curves, then the count of tasks done. A resumed run
    logs only the metric steps it lacks: a task trained again because its checkpoint did not
    load (:mod:`pipeline.resume`) had logged them."""
    run, cfg, progress = loop.run, loop.cfg, loop.progress
    assert run is not None, "only the process that writes the run records a task"
    if cfg.tracking.log_checkpoints:
        meta = checkpoints.CheckpointMeta(
            run.run_id,
            task.index,
            task.name,
            loop.data.classes_per_task,
            to_dict(cfg),
            progress.to_record(),
            list(loop.data.input_shape),
        )
        checkpoints.save_checkpoint(run, loop.module, optimizers, meta)
    if loop.resumed:
        run.log_missing(logged)
    else:
        run.log_records(logged)
    run.set_tags({TASKS_DONE_TAG: progress.next_task})


def finish(loop: Loop, run_id: str, experiment_id: str) -> SequenceResult:
    """The sequence's result (matrices and summaries); in the run, its closing metrics (only
    those missing, for a resumed run: the cut-off process may have logged some) and files."""
    tasks = loop.data.tasks
    result = SequenceResult(
        run_id,
        experiment_id,
        [t.name for t in tasks],
        [t.display for t in tasks],
        {},
        loop.progress.init,
        {},
        loop.progress.records,
    )
    result.finish(loop.progress.rows)
    if loop.run is not None:
        final = metric_records(result.final_metrics())
        if loop.resumed:
            loop.run.log_missing(final)
        else:
            loop.run.log_records(final)
        runfiles.write_results(loop.run, loop.cfg, result)
    return result


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


def log_run_info(
    run: Run,
    cfg: ExperimentConfig,
    tasks: list[Task],
    device: torch.device,
    splits: tuple[str, ...] = SPLITS,
) -> None:
    """Config (YAML artifact + params), data checksums, commit, package versions, device, the
    splits evaluated (a resume evaluates the same).

    The config's file first: a run cut off after it (a server that went down, a kill) can be
    resumed from its first task."""
    runfiles.write_run_info(run, cfg, tasks)
    # where each task's training images are: what data.storage=auto chose
    held = {f"held.{t.name}": "memory" if isinstance(t.train, Split) else "streamed" for t in tasks}
    # erased ids are in config.yaml; their param is their count (thousands of ids are past
    # what an MLflow param holds)
    erased = {f"data.erased.{t}": len(ids) for t, ids in cfg.data.erased.items()}
    run.log_params({**flatten(to_dict(cfg)), **held, **erased})
    run.set_tags(
        {
            "mlflow.source.git.commit": git_commit(),
            "scenario": cfg.scenario,
            "splits": ",".join(splits),
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
