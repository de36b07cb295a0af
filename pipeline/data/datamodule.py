"""The multi-task LightningDataModule: one ordered task list, one current task."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from pipeline import distributed
from pipeline.config.schema import DataConfig
from pipeline.data.loading import load_task, release_raw_datasets
from pipeline.data.shards import ShardsError, StreamedSplit
from pipeline.data.tasks import (
    Batch,
    BatchIndices,
    DataError,
    Split,
    Task,
    TaskDataset,
    canary_rows,
    normalise,
    plant_canaries,
    scaled_only,
    without_samples,
)


class StreamedBatches(IterableDataset[Batch]):
    """The batches of a streamed split (:mod:`pipeline.data.shards`), normalised as a task held
    in memory is. Each pass over it is an epoch in a new order, fixed by the seed and the
    epoch's number; ``max_batches`` caps a pass (0: all)."""

    def __init__(
        self,
        split: StreamedSplit,
        task: Task,
        tasks: list[Task],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        max_batches: int = 0,
    ) -> None:
        self.split, self.task, self.batch_size = split, task, batch_size
        self.shuffle, self.seed, self.max_batches = shuffle, seed, max_batches
        self.means = torch.tensor([t.mean for t in tasks])
        self.stds = torch.tensor([t.std for t in tasks])
        self.epoch = 0

    def __len__(self) -> int:
        full = -(-len(self.split) // self.batch_size)
        world = distributed.world()
        if world > 1 and 0 < len(self.split) % self.batch_size < world:
            full -= 1  # too small a last batch to give every process a sample (dropped)
        return min(full, self.max_batches) if self.max_batches else full

    @override
    def __iter__(self):  # type: ignore[no-untyped-def]  # IterableDataset's own signature
        seed, self.epoch = self.seed * 1000 + self.epoch, self.epoch + 1
        batches = self.split.batches(
            self.batch_size, self.shuffle, seed, distributed.rank(), distributed.world()
        )
        try:
            for i, (images, targets, ids) in enumerate(batches):
                if self.max_batches and i >= self.max_batches:
                    return
                task = torch.full_like(targets, self.task.index)
                yield Batch(normalise(images, task, self.means, self.stds), targets, task, ids)
        except ShardsError as e:  # the shards went away mid-run: the run fails, resumable
            raise DataError(str(e)) from None


class ContinualDataModule(pl.LightningDataModule):
    """Serves a sequence of tasks to a Trainer, one task at a time.

    ``train_dataloader`` serves the tasks in :attr:`train_tasks` (the current task, or every
    task seen so far for ``joint``) and ``val_dataloader`` the current task, which is what a
    fresh Trainer fits on; :meth:`eval_loaders` serves every task of the sequence (seen or not)
    for the evaluation after each task. The test split is only for reporting: model selection
    and sweeps read ``val``.

    Args:
        cfg: data config (task list, batch sizes, validation fraction, streaming).
        seed: experiment seed; fixes the training order of every task.
        max_batches: cap on training batches per epoch (0: all).
        scenario: ``task``, ``domain`` or ``class``: sets the targets (see ``load_task``).
        root: the datasets' folder (``paths.data``; default ``data/``).
        test_only: read only the test splits of dataset files (readers that never train).
    """

    def __init__(
        self,
        cfg: DataConfig,
        seed: int = 0,
        max_batches: int = 0,
        scenario: str = "domain",
        root: Path | None = None,
        test_only: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.root = root
        self.test_only = test_only
        self.seed = seed
        self.max_batches = max_batches
        self.scenario = scenario
        self.tasks: list[Task] = []
        self.current = 0
        self.train_tasks: list[int] = [0]
        self._samplers: dict[tuple[int, ...], BatchIndices] = {}
        self._streams: dict[tuple[str, int], StreamedBatches] = {}
        #: the ids of the canaries planted (``data.canaries``), by task name
        self.canaries: dict[str, list[int]] = {}

    @override
    def setup(self, stage: str | None = None) -> None:
        """Load every task into memory (once; later calls are no-ops)."""
        if self.tasks:
            return
        offset = 0
        for i, task_cfg in enumerate(self.cfg.tasks):
            task = load_task(
                i, task_cfg, self.cfg, self.scenario, offset, self.root, self.test_only
            )
            offset += task.num_classes
            task = task if self.cfg.normalise else scaled_only(task)
            self.tasks.append(task if self.test_only else self._as_trained(task))
        release_raw_datasets()  # the tasks hold what they use; the files' copies can go

    def _as_trained(self, task: Task) -> Task:
        """The task with its canaries planted (``data.canaries``), then less its erased
        samples (``data.erased``): the canaries are the same samples whatever is erased."""
        cfg = self.cfg
        if cfg.canaries and task.name == (cfg.canary_task or cfg.tasks[0].name):
            task = plant_canaries(task, cfg.canaries, cfg.canary_seed)
            rows = canary_rows(task.train, cfg.canaries, cfg.canary_seed)[0]  # type: ignore[arg-type]
            self.canaries = {task.name: sorted(task.train.ids[rows].tolist())}
        return without_samples(task, cfg.erased.get(task.name, []))

    def move_to(self, device: torch.device) -> None:
        """Hold every task on ``device``. On a GPU the batches are then sliced and normalised
        there, with no copy from the host at any step (MNIST-sized tasks are 55 MB of uint8
        each); the runner does this for every run on CUDA."""
        for task in self.tasks:
            for split in (task.train, task.val, task.test):
                split.move_to(device)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every task's images (the sequence's rule makes them
        agree: :func:`pipeline.data.tasks.sequence_shape`)."""
        c, h, w = self.tasks[0].test.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def classes_per_task(self) -> list[int]:
        return [t.num_classes for t in self.tasks]

    def set_task(self, index: int) -> None:
        """Make task ``index`` current: the training and validation loaders serve it."""
        if not 0 <= index < len(self.tasks):
            raise IndexError(f"task {index} out of range (sequence of {len(self.tasks)})")
        self.current = index
        self.train_tasks = [index]

    @override
    def train_dataloader(self) -> DataLoader[Batch]:
        streamed = self._streamed_train()
        if streamed is not None:
            return DataLoader(streamed, batch_size=None)
        parts = [(t.train, t) for t in (self.tasks[i] for i in self.train_tasks)]
        dataset = TaskDataset([(s, t) for s, t in parts if isinstance(s, Split)], self.tasks)
        key = tuple(self.train_tasks)
        # One sampler per task set, kept across fits: its generator carries on from epoch to
        # epoch. A stream is served once, in its order.
        sampler = self._samplers.setdefault(
            key,
            BatchIndices(
                len(dataset),
                self.cfg.batch_size,
                shuffle=not self.cfg.stream,
                seed=self.seed * 1000 + self.current,
                max_batches=self.max_batches,
                rank=distributed.rank(),
                world=distributed.world(),
            ),
        )
        return DataLoader(dataset, sampler=sampler, batch_size=None)

    def _streamed_train(self) -> StreamedBatches | None:
        """The current task's streamed batches (kept across fits: each pass is a new epoch),
        or None when its training split is held in memory."""
        task = self.tasks[self.current]
        if not isinstance(task.train, StreamedSplit):
            return None
        if len(self.train_tasks) > 1:
            raise DataError(
                f"{task.name} is streamed: a strategy that trains on several tasks at once "
                "(joint) needs them in memory (data.storage=memory)"
            )
        key = ("streamed", self.current)
        if key not in self._streams:
            self._streams[key] = StreamedBatches(
                task.train,
                task,
                self.tasks,
                self.cfg.batch_size,
                shuffle=not self.cfg.stream,
                seed=self.seed * 1000 + self.current,
                max_batches=self.max_batches,
            )
        return self._streams[key]

    @override
    def val_dataloader(self) -> DataLoader[Batch]:
        return self.loader(self.tasks[self.current], "val")

    def loader(
        self, task: Task, split: str, batch_size: int | None = None, limit: int = 0
    ) -> DataLoader[Batch]:
        """An ordered loader over a task's ``train``, ``val`` or ``test`` split (its first
        ``limit`` samples; 0: all). In a distributed run each process gets a contiguous share
        of those samples (:mod:`pipeline.distributed`): the caller reduces what it computes."""
        part = getattr(task, split)
        size = batch_size or self.cfg.eval_batch_size
        if isinstance(part, StreamedSplit):  # in the shards' order; each process its chunks
            batches = -(-limit // size) if limit else 0
            streamed = StreamedBatches(
                part, task, self.tasks, size, shuffle=False, max_batches=batches
            )
            return DataLoader(streamed, batch_size=None)
        dataset = TaskDataset([(part, task)], self.tasks)
        n = min(len(dataset), limit) if limit else len(dataset)
        rows = distributed.my_slice(torch.arange(n))
        sampler = BatchIndices(n, size, shuffle=False, rows=rows)
        return DataLoader(dataset, sampler=sampler, batch_size=None)

    def eval_loaders(self, split: str) -> list[DataLoader[Batch]]:
        """One ordered loader per task of the sequence over ``split`` (``val`` or ``test``)."""
        return [self.loader(t, split) for t in self.tasks]

    def batch_from(self, images: Tensor, labels: Tensor, task: Tensor, ids: Tensor) -> Batch:
        """A batch from stored raw samples (uint8 images), normalised per task, on the
        images' device: how rehearsal strategies replay what they kept."""
        means = torch.tensor([t.mean for t in self.tasks], device=images.device)
        stds = torch.tensor([t.std for t in self.tasks], device=images.device)
        return Batch(normalise(images, task, means, stds), labels, task, ids)
