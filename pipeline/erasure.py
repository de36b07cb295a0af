"""The right to erasure: remove given training samples from everything a run stored.

A deletion request names samples of one task by id (their index in the dataset split). Every
per-task checkpoint of the run is rewritten with those samples removed from each strategy's
state (a replay buffer drops them and refuses them later; a strategy that keeps no raw data has
nothing to remove). The run records every request in ``erasures.json`` and the
``retention/erased_samples`` metric.

The checkpoints are rewritten through the store's artifact API, local or remote
(:func:`pipeline.runfiles.rewrite_checkpoints`): a rewritten checkpoint is uploaded as a new
revision, and the old one is removed only afterwards. A crash in between leaves both, the
newest being the erased one (every reader takes the newest), or a truncated upload (which does
not load and is skipped); the request is then not yet recorded. Running the same erasure again
finishes it: it removes the old revisions and records the request with what was removed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline import runfiles
from pipeline.config import ExperimentConfig
from pipeline.data.datamodule import ContinualDataModule
from pipeline.tracking import Run, Store, scratch_dir


class ErasureError(ValueError):
    """The request cannot be carried out (unknown run or task, bad ids, no checkpoints)."""


def erase(
    store: Store, run_id: str, task: str, ids: Sequence[int], data_dir: Path | None = None
) -> dict[str, Any]:
    """Remove samples ``ids`` of task ``task`` from every checkpoint of run ``run_id``.

    Args:
        store: the run's store.
        run_id: the run.
        task: the task's name (``mnist``).
        ids: sample ids: indices of the task's dataset split.
        data_dir: the datasets (to check that the ids exist; default ``paths.data``'s).

    Returns:
        The record appended to the run's ``erasures.json``: time, task, ids and the samples
        removed from each checkpoint.

    Raises:
        ErasureError: unknown run or task name, an id the task does not have, a run without
            checkpoints, an ``erasures.json`` that is no JSON list.
        DataError: the task's data is missing (the ids cannot be checked).
    """
    if not ids or min(ids) < 0:
        raise ErasureError(f"--ids: sample ids are indices >= 0, got {list(ids)}")
    try:
        run = Run.get(store, run_id)
    except LookupError as e:
        raise ErasureError(str(e)) from None
    cfg, index = _task_of(run, task)
    known = _sample_ids(cfg, index, data_dir)
    unknown = sorted(set(ids) - known)
    if unknown:
        raise ErasureError(
            f"--ids: task '{task}' has no sample {', '.join(map(str, unknown[:5]))} "
            f"(its ids: {min(known)}..{max(known)})"
        )
    wanted = torch.tensor(list(ids), dtype=torch.long)
    try:
        removed = runfiles.rewrite_checkpoints(run, lambda m: m.erase_samples(index, wanted))
    except LookupError as e:  # a task whose every revision fails to load
        raise ErasureError(str(e)) from None
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": task,
        "ids": [int(i) for i in ids],
        "removed": removed,
    }
    try:  # a torn file gives its whole records (and a warning line)
        history = [*runfiles.read_erasures(run), record]
    except LookupError as e:  # no JSON list at all: one line, the checkpoints stay erased
        raise ErasureError(str(e)) from None
    runfiles.write_erasures(run, history)
    total = sum(sum(r["removed"].values()) for r in history)
    run.log_metrics({"retention/erased_samples": total}, step=len(history))
    run.set_tags({"erasures": len(history)})
    return record


def _sample_ids(cfg: ExperimentConfig, index: int, data_dir: Path | None) -> set[int]:
    """The ids of task ``index``'s training samples (validation carved out included)."""
    data = ContinualDataModule(cfg.data, cfg.seed, 0, cfg.scenario, data_dir)
    data.setup()
    task = data.tasks[index]
    return set(task.train.ids.tolist()) | set(task.val.ids.tolist())


def _task_of(run: Run, task: str) -> tuple[ExperimentConfig, int]:
    """The run's config and the index of ``task`` in its sequence, read from its first
    checkpoint (before anything is rewritten).

    Raises:
        ErasureError: no checkpoints, or no such task.
    """
    files = runfiles.latest_checkpoints(run)
    if not files:
        raise ErasureError(f"run {run.run_id} has no checkpoints to erase from")
    with scratch_dir() as tmp:
        try:
            _, cfg, _ = runfiles.fetch_checkpoint(run, next(iter(files.values())), tmp)
        except (LookupError, ValueError) as e:
            raise ErasureError(f"run {run.run_id}: {e}") from None
    names = [t.name for t in cfg.data.tasks]
    if task not in names:
        raise ErasureError(f"task '{task}' is not in run {run.run_id} (tasks: {', '.join(names)})")
    return cfg, names.index(task)
