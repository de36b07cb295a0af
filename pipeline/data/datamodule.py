"""The multi-task LightningDataModule: one ordered task list, one current task."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from pipeline.config import DataConfig
from pipeline.data.tasks import IMAGE_SHAPE, Batch, BatchIndices, Task, TaskDataset, load_task


class ContinualDataModule(pl.LightningDataModule):
    """Serves a sequence of tasks to a Trainer, one task at a time.

    ``train_dataloader`` and ``val_dataloader`` serve the current task (``set_task``), which is
    what a fresh Trainer fits on; :meth:`eval_loaders` serves every task of the sequence (seen
    or not) for the evaluation after each task. The test split is only for reporting: model
    selection and sweeps read ``val``.

    Args:
        cfg: data config (task list, batch sizes, validation fraction).
        seed: experiment seed; fixes the training order of every task.
        max_batches: cap on training batches per epoch (0: all).
    """

    def __init__(self, cfg: DataConfig, seed: int = 0, max_batches: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.max_batches = max_batches
        self.tasks: list[Task] = []
        self.current = 0
        self._train_samplers: dict[int, BatchIndices] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load every task into memory (once; later calls are no-ops)."""
        if not self.tasks:
            self.tasks = [load_task(i, t, self.cfg) for i, t in enumerate(self.cfg.tasks)]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPE

    @property
    def num_classes(self) -> int:
        return max(t.num_classes for t in self.tasks)

    def set_task(self, index: int) -> None:
        """Make task ``index`` the one that the training and validation loaders serve."""
        if not 0 <= index < len(self.tasks):
            raise IndexError(f"task {index} out of range (sequence of {len(self.tasks)})")
        self.current = index

    def train_dataloader(self) -> DataLoader[Batch]:
        task = self.tasks[self.current]
        # One sampler per task, kept across fits: its generator carries on from epoch to epoch.
        sampler = self._train_samplers.setdefault(
            task.index,
            BatchIndices(
                len(task.train),
                self.cfg.batch_size,
                shuffle=True,
                seed=self.seed * 1000 + task.index,
                max_batches=self.max_batches,
            ),
        )
        return DataLoader(TaskDataset(task.train, task), sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader[Batch]:
        return self.loader(self.tasks[self.current], "val")

    def loader(self, task: Task, split: str) -> DataLoader[Batch]:
        """An ordered evaluation loader over a task's ``train``, ``val`` or ``test`` split."""
        data = getattr(task, split)
        sampler = BatchIndices(len(data), self.cfg.eval_batch_size, shuffle=False)
        return DataLoader(TaskDataset(data, task), sampler=sampler, batch_size=None)

    def eval_loaders(self, split: str) -> list[DataLoader[Batch]]:
        """One ordered loader per task of the sequence over ``split`` (``val`` or ``test``)."""
        return [self.loader(t, split) for t in self.tasks]
