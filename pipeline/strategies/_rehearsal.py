"""The base class of the strategies that keep raw samples in a reservoir buffer.

:class:`Rehearsal` is what ``replay``, ``agem`` and ``derpp`` share: it owns a
:class:`~pipeline.strategies.buffer.ReservoirBuffer` and the generator replay samples are drawn
with, offers the current task's samples to the buffer (at task end or online, in the training
step), and carries the buffer through the retention ledger, erasure and checkpoints.
:class:`TaskSamples` finds a training batch's raw uint8 images by sample id;
:class:`RehearsalParams` holds the hyperparameters every rehearsal strategy has.

This module registers no strategy of its own (the package imports it like every other module).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor
from typing_extensions import override

from pipeline import distributed
from pipeline.config.schema import ExperimentConfig
from pipeline.data.tasks import Batch, Task
from pipeline.errors import ConfigError
from pipeline.strategies.base import Retention, Strategy, TaskContext
from pipeline.strategies.buffer import ReservoirBuffer


class TaskSamples:
    """The current task's training split addressed by sample id, and which of its samples
    training has shown so far.

    A training batch holds normalised floats; the raw uint8 images a buffer stores come from
    ``task.train`` through ``Batch.id`` (built once per task: a dense id -> row table).

    Args:
        task: the task being trained.
        device: where the training batches are (the tables live there: no sync per step).
    """

    def __init__(self, task: Task, device: torch.device) -> None:
        split = task.train
        self.index = task.index
        self.split = split
        n = len(split)
        self.row_of = torch.full((int(split.ids.max()) + 1,), -1, dtype=torch.long, device=device)
        self.row_of[split.ids.to(device)] = torch.arange(n, device=device)
        # One extra "sink" row absorbs the writes of samples that are not this task's.
        self.sink = n
        self.seen = torch.zeros(n + 1, dtype=torch.bool, device=device)

    def first_sight(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Mark the batch's samples as seen; tell which are seen for the first time.

        Only samples of this task found in its training split count (a batch may also hold
        replayed or earlier tasks' samples). Vectorised, without host synchronisation.

        Returns:
            A mask over the batch (this task's samples never seen before) and each sample's
            row in the split (the sink row for the others).
        """
        mine = batch.task == self.index
        ids = torch.where(mine, batch.id, 0).clamp(0, self.row_of.numel() - 1)
        rows = self.row_of[ids]
        rows = torch.where(mine & (rows >= 0), rows, self.sink)
        first = (rows != self.sink) & ~self.seen[rows]
        self.seen[rows] = True
        return first, rows

    def first_seen(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The samples of the step seen for the first time in this task, as keys (row, target,
        task, id), and their positions in this process's batch. In a distributed run the keys
        are every process's, in rank order (the order of the batch one process would have),
        and the other slices' samples are marked seen here too."""
        first, rows = self.first_sight(batch)
        index = first.nonzero().squeeze(1)
        keys = torch.stack([rows[index], batch.y[index], batch.task[index], batch.id[index]], 1)
        if distributed.world() > 1:
            keys = distributed.gather_rows(keys)
            self.seen[keys[:, 0]] = True
        return keys, index

    def seen_rows(self) -> Tensor:
        """Rows of the split that training has shown (CPU)."""
        return self.seen[: self.sink].nonzero().squeeze(1).cpu()


@dataclass
class RehearsalParams:
    """Hyperparameters every rehearsal strategy has.

    Attributes:
        size: buffer capacity (samples).
    """

    size: int = 500


#: The hyperparameters of a rehearsal strategy.
RP = TypeVar("RP", bound=RehearsalParams)


class Rehearsal(Strategy[RP]):
    """Base of the strategies that keep raw samples in a :class:`ReservoirBuffer`.

    It owns the buffer (on the model's device), a CPU generator for drawing replay samples,
    the id -> row table of the current task, the retention ledger, erasure and the checkpoint
    state. Subclasses decide when samples enter (:meth:`insert_seen` at task end, or
    :meth:`insert_online` in the training step) and what replay does.

    Both generators are seeded from ``torch.initial_seed()`` (the experiment seed once the
    runner has called ``seed_everything``) and the strategy's name.
    """

    keeps_raw_data = True

    def __init__(self, params: RP) -> None:
        super().__init__(params)
        seed = (torch.initial_seed() + zlib.crc32(self.name.encode())) % (1 << 62)
        self.buffer = ReservoirBuffer(
            params.size, class_balanced=bool(getattr(params, "class_balanced", False)), seed=seed
        )
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.task_names: list[str] = []
        self.current: TaskSamples | None = None
        self.ctx: TaskContext | None = None

    @classmethod
    @override
    def check_config(cls, params: RP, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        if params.size < 1:
            raise ConfigError(f"strategies.{cls.name}.size: must be >= 1, got {params.size}")
        for key in ("batch_size", "sample_size"):
            value = getattr(params, key, None)
            low = 1 if key == "sample_size" else 0
            if value is not None and value < low:
                raise ConfigError(
                    f"strategies.{cls.name}.{key}: must be >= {low}"
                    + (" (0: as many as the training batch)" if low == 0 else "")
                    + f", got {value}"
                )
            world = cfg.trainer.devices * cfg.trainer.num_nodes
            if value and value % world:
                raise ConfigError(
                    f"strategies.{cls.name}.{key}: {value} does not split evenly over {world} "
                    "processes (each replays an equal slice of every draw)"
                )

    # -- hooks ------------------------------------------------------------------------------
    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.buffer.to(ctx.device)
        self.current = TaskSamples(ctx.task, ctx.device)
        self.task_names = [t.name for t in ctx.datamodule.tasks]

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        self.current = None  # the id table of a finished task is not kept

    # -- helpers for subclasses -------------------------------------------------------------
    @staticmethod
    def draw_size(configured: int, batch: Batch) -> int:
        """Stored samples to draw for a step: ``configured``, or (0) as many as the step's
        batch holds; in a distributed run ``batch`` is one process's slice of that batch."""
        return configured or int(batch.y.shape[0]) * distributed.world()

    def draw(self, n: int) -> Tensor:
        """Buffer slots of ``n`` stored samples (fewer if fewer are stored), drawn uniformly.

        In a distributed run ``n`` counts over all processes: every process draws the same
        ``n`` (one generator, in the same state everywhere) and keeps its own slice, so the
        processes together replay what one process would."""
        return distributed.my_slice(self.buffer.sample(n, self.generator))

    def memory_batch(self, n: int) -> Batch:
        """The stored samples :meth:`draw` picks, as a normalised batch on the buffer's
        device."""
        assert self.ctx is not None, "on_task_start() must be called first"
        images, labels, tasks, ids = self.buffer.get(self.draw(n))
        return self.ctx.datamodule.batch_from(images, labels, tasks, ids)

    def insert_seen(self) -> int:
        """Offer every sample of the current task that training has shown (call at task end:
        each sample is offered once, however many epochs saw it). In a distributed run the
        samples any process was shown are offered, on every process."""
        assert self.current is not None
        distributed.or_(self.current.seen)
        split, rows = self.current.split, self.current.seen_rows()
        return self.buffer.add(
            split.images,
            rows,
            split.labels[rows],
            torch.full_like(rows, self.current.index),
            split.ids[rows],
        )

    def insert_online(
        self, batch: Batch, logits: Tensor | None = None, widths: Tensor | None = None
    ) -> int:
        """Offer the batch's samples of the current task seen for the first time in this task
        (so with several epochs a sample is offered once, during the first).

        In a distributed run every process offers what all the processes' slices of the step
        hold, in rank order (the order of the batch one process would have): the buffers stay
        one global buffer, identical everywhere."""
        assert self.current is not None
        keys, index = self.current.first_seen(batch)
        if distributed.world() > 1:
            logits = None if logits is None else distributed.gather_rows(logits[index])
            widths = None if widths is None else distributed.gather_rows(widths[index])
        elif keys.shape[0] == 0:
            return 0
        else:
            logits = None if logits is None else logits[index]
            widths = None if widths is None else widths[index]
        if keys.shape[0] == 0:
            return 0
        return self.buffer.add(
            self.current.split.images,
            keys[:, 0],
            keys[:, 1],
            keys[:, 2],
            keys[:, 3],
            logits,
            widths,
        )

    # -- ledger, erasure, checkpoints ---------------------------------------------------------
    @override
    def retention(self) -> Retention:
        r = self.buffer.retention(self.task_names)
        r.state_bytes += int(self.generator.get_state().numel())
        return r

    @override
    def erase(self, task: int, ids: Tensor) -> int:
        return self.buffer.erase(task, ids)

    @override
    def stored_ids(self, task: int) -> Tensor | None:
        return self.buffer.stored_ids(task)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            "task_names": list(self.task_names),
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"].cpu())
        self.task_names = [str(n) for n in state["task_names"]]
