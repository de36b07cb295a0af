"""Tasks held in memory as uint8 tensors, and the batches sliced from them.

There is no per-sample PIL/ToTensor path: a batch is one index into a uint8 tensor, converted to
float and normalised with the task's own per-channel mean and std. On 2 cores that path costs
more than a small CNN's step. Where a task's images come from is :mod:`pipeline.data.loading`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from typing_extensions import override

from pipeline.data.shards import StreamedSplit
from pipeline.errors import RunFailed


class DataError(RunFailed):
    """Data the run needs is missing or does not verify (one line for the user)."""


class Batch(NamedTuple):
    """A training or evaluation batch.

    Attributes:
        x: normalised images (float, B x C x H x W).
        y: targets in the scenario's label space (see :func:`load_task`).
        task: each sample's task index.
        id: each sample's index in its original dataset split: a stable identity, used to
            account for and erase stored samples.
    """

    x: Tensor
    y: Tensor
    task: Tensor
    id: Tensor


@dataclass
class Split:
    """Images (uint8, N x C x H x W), targets (int64, N) and sample ids (int64, N)."""

    images: Tensor
    labels: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.ids[index])

    def move_to(self, device: torch.device) -> None:
        """Hold the split's tensors on ``device``."""
        self.images, self.labels, self.ids = (
            t.to(device) for t in (self.images, self.labels, self.ids)
        )


@dataclass
class Task:
    """One task of the sequence with its three splits and normalisation.

    Attributes:
        index: position in the sequence.
        name: key in metric names (``mnist``).
        display: name in reports (``MNIST``).
        mean, std: per-channel normalisation of this task's pixels (after scaling to [0, 1]).
        train, val, test: the splits; ``val`` is carved from the original training set.
        md5: checksum of each source file (or of the generated tensors), logged with runs.
        classes: the original labels this task keeps, in the order of its local targets.
        offset: first target of this task in class-incremental label space (else 0).
    """

    index: int
    name: str
    display: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split | StreamedSplit
    val: Split | StreamedSplit
    test: Split | StreamedSplit
    md5: dict[str, str]
    classes: list[int] = field(default_factory=list)
    offset: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def scaled_only(task: Task) -> Task:
    """The task with its pixels only scaled to [0, 1], not normalised (``data.normalise``
    off): mean 0 and std 1 in every channel."""
    channels = len(task.mean)
    return replace(task, mean=(0.0,) * channels, std=(1.0,) * channels)


def without_samples(task: Task, ids: Sequence[int]) -> Task:
    """The task less the training samples ``ids`` (``data.erased``: what an erasure request
    removes, the same way in the run that unlearns them and in a run trained from scratch
    without them). The validation split and the order of the samples that stay are those of
    the whole task, so that every other sample is trained on as it was.

    Raises:
        DataError: an id the task does not train on, a task left with no training sample, a
            streamed task (its shards are read in their order: write them without the samples).
    """
    if not ids:
        return task
    train = task.train
    if not isinstance(train, Split):
        raise DataError(
            f"data.erased: task '{task.name}' is streamed from its shards; erasing samples "
            "needs it in memory (data.storage=memory) or shards written without them"
        )
    wanted = torch.tensor(sorted(set(ids)), dtype=torch.long)
    drop = torch.isin(train.ids, wanted.to(train.ids.device))
    if int(drop.sum()) != len(wanted):
        missing = sorted(set(wanted.tolist()) - set(train.ids[drop].tolist()))
        raise DataError(
            f"data.erased: task '{task.name}' does not train on sample(s) "
            f"{', '.join(map(str, missing[:5]))}{' and more' if len(missing) > 5 else ''}"
        )
    if bool(drop.all()):
        raise DataError(
            f"data.erased: erasing {len(wanted)} sample(s) would leave task '{task.name}' "
            "with no training sample"
        )
    return replace(task, train=train.subset(torch.nonzero(~drop).squeeze(1)))


def canary_rows(split: Split, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Rows of ``n`` samples of ``split`` chosen by ``seed``, in ascending order, and a wrong
    target for each (another class of the same task, chosen by ``seed`` too): a membership
    audit's canaries (``data.canaries``), fixed whatever the run's seed.

    Raises:
        DataError: ``n`` is not below the split's size, or the task has one class.
    """
    classes = torch.unique(split.labels)
    if n >= len(split) or len(classes) < 2:
        raise DataError(
            f"data.canaries={n}: a task of {len(split)} samples and {len(classes)} class(es) "
            "takes fewer canaries than samples, and needs two classes to flip a label"
        )
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(split), generator=g)[:n].sort().values
    low, count = int(classes.min()), int(classes.max()) + 1 - int(classes.min())
    shift = 1 + torch.randint(0, count - 1, (n,), generator=g)  # never 0: always another label
    labels = low + (split.labels[rows].cpu() - low + shift) % count
    return rows, labels


def plant_canaries(task: Task, n: int, seed: int) -> Task:
    """The task with ``n`` canaries among its training samples (:func:`canary_rows`)."""
    train = task.train
    if not n:
        return task
    if not isinstance(train, Split):
        raise DataError(f"data.canaries: task '{task.name}' is streamed; plant them in memory")
    rows, labels = canary_rows(train, n, seed)
    targets = train.labels.clone()
    targets[rows.to(targets.device)] = labels.to(targets.device)
    return replace(task, train=Split(train.images, targets, train.ids))


def normalise(images: Tensor, task: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    """uint8 images -> floats normalised with each sample's task statistics.

    Args:
        images: uint8, B x C x H x W.
        task: task index of each sample.
        means, stds: tasks x channels: a row per task of the sequence.
    """
    shape = (images.shape[0], -1, 1, 1)
    return (images.float() / 255.0 - means[task].view(shape)) / stds[task].view(shape)


class TaskDataset(Dataset[Batch]):
    """One or more tasks' splits that return whole batches: ``dataset[index_tensor] -> Batch``.

    Several parts (``joint`` trains on all tasks seen so far) are concatenated once; one part
    is used as it is (a loader is built per fit and per evaluation: copying the images each
    time would cost memory and time). Each sample keeps its task's normalisation.
    """

    def __init__(self, parts: list[tuple[Split, Task]], tasks: list[Task]) -> None:
        def joined(tensors: list[Tensor]) -> Tensor:
            return tensors[0] if len(tensors) == 1 else torch.cat(tensors)

        self.images = joined([s.images for s, _ in parts])
        device = self.images.device  # where the tasks are held (a GPU: see move_to)
        self.labels = joined([s.labels for s, _ in parts])
        self.ids = joined([s.ids for s, _ in parts])
        self.task = joined([torch.full((len(s),), t.index, device=device) for s, t in parts])
        self.means = torch.tensor([t.mean for t in tasks], device=device)
        self.stds = torch.tensor([t.std for t in tasks], device=device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @override
    def __getitem__(self, index: Tensor) -> Batch:
        index = index.to(self.images.device, non_blocking=True)
        task = self.task[index]
        x = normalise(self.images[index], task, self.means, self.stds)
        return Batch(x, self.labels[index], task, self.ids[index])


class BatchIndices(Sampler[Tensor]):
    """Yields index tensors of one batch each, shuffled with its own generator (or in order).

    The generator lives as long as the sampler, so each epoch draws a new permutation and the
    whole order is fixed by the seed.

    In a distributed run (``world > 1``) every process draws the same permutation and the same
    global batches of ``batch_size``, and yields its own contiguous slice of each (rank ``r``
    of ``w`` takes slice ``r`` of :meth:`torch.Tensor.tensor_split`): the slices of one step
    together are the batch a single process would train on. A last batch too small to give
    every process a sample is dropped, so that all processes take the same number of steps.

    Args:
        n: samples (indices ``0..n-1``), unless ``rows`` is given.
        batch_size: samples per (global) batch.
        shuffle: a new permutation each epoch; else in order.
        seed: the generator's seed.
        max_batches: most batches per epoch (0: all).
        rank, world: this process and the number of processes.
        rows: the indices to serve instead of ``0..n-1`` (an evaluation shard), in order.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        max_batches: int = 0,
        rank: int = 0,
        world: int = 1,
        rows: Tensor | None = None,
    ) -> None:
        self.rows = rows
        self.n = n if rows is None else int(rows.numel())
        self.batch_size = batch_size
        self.shuffle, self.max_batches = shuffle, max_batches
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        full = -(-self.n // self.batch_size)
        if self.world > 1 and 0 < self.n % self.batch_size < self.world:
            full -= 1
        return min(full, self.max_batches) if self.max_batches else full

    @override
    def __iter__(self) -> Iterator[Tensor]:
        order = (
            torch.randperm(self.n, generator=self.generator)
            if self.shuffle
            else torch.arange(self.n)
        )
        if self.rows is not None:
            order = self.rows[order]
        for batch in torch.split(order, self.batch_size)[: len(self)]:
            yield batch if self.world == 1 else batch.tensor_split(self.world)[self.rank]


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split a training set into (train, validation), deterministically from ``seed``."""
    n = len(train)
    n_val = round(n * fraction)
    if n_val < 1 or n_val >= n:
        raise DataError(
            f"val_fraction={fraction} leaves no train or no validation samples out of {n}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)
