"""The right to erasure: remove given training samples from everything a run stored.

A deletion request names samples of one task by id: a sample's index in its dataset's training
file (MNIST and Fashion-MNIST: 0..59999, torchvision's ``train=True`` order; synthetic tasks:
0..``data.synthetic.n_train``-1), the ``id`` every batch carries. A task trains on the samples of
its classes, less those carved out for validation (``data.val_fraction``): only these ids can
be erased; :func:`stored` lists those a run's checkpoints hold. Every
per-task checkpoint of the run is rewritten with those samples removed from each strategy's
state (a replay buffer drops them and refuses them later; a strategy that keeps no raw data has
nothing to remove). The run records every request in ``erasures.json`` and the
``retention/erased_samples`` metric.

The checkpoints are rewritten through the store's artifact API, local or remote
(:func:`pipeline.checkpoints.rewrite_checkpoints`): a rewritten checkpoint is uploaded as a new
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

from pipeline import checkpoints, runfiles
from pipeline.config.schema import ExperimentConfig, dataset_classes
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Task
from pipeline.module import ContinualModule
from pipeline.store import Store
from pipeline.tracking import Run, scratch_dir


class ErasureError(ValueError):
    """The request cannot be carried out (unknown run or task, bad ids, no checkpoints)."""


def erase(
    store: Store, run_id: str, task: str, ids: Sequence[int], data_dir: Path | None = None
) -> dict[str, Any]:
    """Remove samples ``ids`` of task ``task`` from every checkpoint of run ``run_id``.

    Args:
        store: the run's store.
        run_id: the run (or a unique prefix of its id, 8+ characters).
        task: the task's name (``mnist``).
        ids: sample ids: indices in the dataset's training file, of samples the task trains on.
        data_dir: the datasets (to check that the ids exist; default ``paths.data``'s).

    Returns:
        The record appended to the run's ``erasures.json``: time, task, ids and the samples
        removed from each checkpoint; when none was, also ``note``, the line that says why
        (not written to the file).

    Raises:
        ErasureError: unknown run or task name, an id the task does not train on, a run
            without checkpoints, an ``erasures.json`` that is no JSON list.
        DataError: the task's data is missing (the ids cannot be checked).
    """
    if not ids or min(ids) < 0:
        raise ErasureError(f"--ids: sample ids are indices >= 0, got {list(ids)}")
    try:
        run = Run.get(store, run_id)
    except LookupError as e:
        raise ErasureError(str(e)) from None
    cfg, index = _task_of(run, task)
    trained = training_ids(cfg, index, ids, data_dir)
    wanted = torch.tensor(list(ids), dtype=torch.long)
    held: list[int | None] = []  # per checkpoint: this task's samples it held (None: no buffer)

    def edit(module: ContinualModule) -> int:
        held.append(_held(module, index))
        return module.erase_samples(index, wanted)

    try:
        removed = checkpoints.rewrite_checkpoints(run, edit)
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
    if not sum(removed.values()):
        why = _why_none(run.run_id, task, trained, held, cfg.strategy)
        return {**record, "note": why}
    return record


def training_ids(
    cfg: ExperimentConfig, index: int, ids: Sequence[int], data_dir: Path | None
) -> int:
    """Check that ``ids`` are samples task ``index`` trains on; how many it trains on.

    Raises:
        ErasureError: as :func:`checked_task`.
    """
    return len(checked_task(cfg, index, ids, data_dir).train)


def checked_task(
    cfg: ExperimentConfig, index: int, ids: Sequence[int], data_dir: Path | None
) -> Task:
    """Task ``index`` as the run trains it, once ``ids`` are checked to be samples it trains
    on.

    Raises:
        ErasureError: an id of the validation split, of a class the task leaves out, or of no
            sample at all; each named with its reason.
    """
    data = ContinualDataModule(cfg.data, cfg.seed, 0, cfg.scenario, data_dir)
    data.setup()
    task = data.tasks[index]
    unknown = sorted(set(ids) - set(task.train.ids.tolist()))
    if not unknown:
        return task
    val = set(task.val.ids.tolist())
    in_val = [i for i in unknown if i in val]
    other = [i for i in unknown if i not in val]
    reasons = []
    if in_val:  # carved out after the class selection: the task's own, but never trained on
        reasons.append(
            f"{_few(in_val)} went to its validation split (data.val_fraction), which is never "
            "trained on nor stored"
        )
    if other and len(task.classes) < dataset_classes(data.cfg.tasks[index].dataset):
        classes = ", ".join(map(str, task.classes))
        reasons.append(f"{_few(other)} are samples of classes it leaves out (it keeps {classes})")
    elif other:
        last = max(val | set(task.train.ids.tolist()))
        reasons.append(f"{_few(other)} are past the end of its training file (ids 0..{last})")
    raise ErasureError(
        f"--ids: task '{task.name}' does not train on every sample named: {'; '.join(reasons)} "
        "(ids index the dataset's training file: see erase --help)"
    )


def _few(ids: Sequence[int]) -> str:
    """Up to five ids, and how many more."""
    more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
    return ", ".join(map(str, ids[:5])) + more


def _held(module: ContinualModule, index: int) -> int | None:
    """How many samples of task ``index`` the module's strategies hold (``None``: none of
    them keeps samples)."""
    found = [s.stored_ids(index) for s in module.strategies]
    counts = [int(t.numel()) for t in found if t is not None]
    return sum(counts) if counts else None


def _why_none(
    run_id: str, task: str, trained: int, held: Sequence[int | None], strategy: Sequence[str]
) -> str:
    """The line that says why an erasure removed nothing (the samples were still trained on)."""
    names = "+".join(strategy)
    counts = [n for n in held if n is not None]
    if not counts:
        return (
            f"removed nothing: strategy {names} keeps no training samples in run {run_id[:8]}'s "
            "checkpoints (only weights and statistics); the weights were still trained on them"
        )
    return (
        f"removed nothing: none of these samples is held in run {run_id[:8]}'s buffers "
        f"({names} held {max(counts)} of task '{task}''s {trained} training samples at most; "
        "`erase --list` lists them); the weights were still trained on them"
    )


def stored(store: Store, run_id: str, task: str) -> list[str]:
    """What ``erase RUN --task T --list`` prints: the ids of task ``task``'s samples that each
    checkpoint of run ``run_id`` holds (what an erasure can remove from it).

    Raises:
        ErasureError: unknown run or task, no checkpoints, one that does not load.
    """
    try:
        run = Run.get(store, run_id)
    except LookupError as e:
        raise ErasureError(str(e)) from None
    _, index = _task_of(run, task)
    lines = [f"run {run.run_id}, samples of task '{task}' each checkpoint holds:"]
    with scratch_dir() as tmp:
        for f in checkpoints.latest_checkpoints(run).values():
            try:
                module = checkpoints.fetch_checkpoint(run, f, tmp)[0]
            except (LookupError, ValueError) as e:
                raise ErasureError(f"run {run.run_id}: {e}") from None
            kept = [t for t in (s.stored_ids(index) for s in module.strategies) if t is not None]
            ids = sorted(torch.cat(kept).tolist()) if kept else []
            what = f"{len(ids)}: {', '.join(map(str, ids))}" if ids else "none"
            lines.append(f"{f.base}: {what}" if kept else f"{f.base}: none (no buffer)")
    return lines


def _task_of(run: Run, task: str) -> tuple[ExperimentConfig, int]:
    """The run's config and the index of ``task`` in its sequence, read from its first
    checkpoint (before anything is rewritten).

    Raises:
        ErasureError: no checkpoints, or no such task.
    """
    files = checkpoints.latest_checkpoints(run)
    if not files:
        raise ErasureError(f"run {run.run_id} has no checkpoints to erase from")
    with scratch_dir() as tmp:
        try:
            _, cfg, _ = checkpoints.fetch_checkpoint(run, next(iter(files.values())), tmp)
        except (LookupError, ValueError) as e:
            raise ErasureError(f"run {run.run_id}: {e}") from None
    names = [t.name for t in cfg.data.tasks]
    if task not in names:
        raise ErasureError(f"task '{task}' is not in run {run.run_id} (tasks: {', '.join(names)})")
    return cfg, names.index(task)
