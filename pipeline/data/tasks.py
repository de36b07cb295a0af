"""Tasks held in memory as uint8 tensors, and the batches sliced from them.

There is no per-sample PIL/ToTensor path: a batch is one index into a uint8 tensor, converted to
float and normalised with the task's own mean and std. On 2 cores that path costs more than a
small CNN's step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from typing_extensions import override

from pipeline.config.paths import PathsConfig
from pipeline.config.schema import DataConfig, SyntheticConfig, TaskConfig
from pipeline.data.datasets import DATASETS
from pipeline.data.provision import problem, verify
from pipeline.errors import RunFailed

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)


class DataError(RunFailed):
    """Data the run needs is missing or does not verify (one line for the user)."""


class Batch(NamedTuple):
    """A training or evaluation batch.

    Attributes:
        x: normalised images (float, B x 1 x 28 x 28).
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
    """Images (uint8, N x 1 x 28 x 28), targets (int64, N) and sample ids (int64, N)."""

    images: Tensor
    labels: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.ids[index])

    @classmethod
    def empty(cls) -> Split:
        """A split with no sample (the train and val splits of a test-only load)."""
        none = torch.zeros(0, dtype=torch.long)
        return cls(torch.zeros((0, *IMAGE_SHAPE), dtype=torch.uint8), none, none.clone())

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
        mean, std: normalisation of this task's pixels (after scaling to [0, 1]).
        train, val, test: the splits; ``val`` is carved from the original training set.
        md5: checksum of each source file (or of the generated tensors), logged with runs.
        classes: the original labels this task keeps, in the order of its local targets.
        offset: first target of this task in class-incremental label space (else 0).
    """

    index: int
    name: str
    display: str
    mean: float
    std: float
    train: Split
    val: Split
    test: Split
    md5: dict[str, str]
    classes: list[int] = field(default_factory=lambda: list(range(NUM_CLASSES)))
    offset: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def normalise(images: Tensor, task: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    """uint8 images -> floats normalised with each sample's task statistics.

    Args:
        images: uint8, B x C x H x W.
        task: task index of each sample.
        means, stds: one entry per task of the sequence.
    """
    shape = (-1,) + (1,) * (images.dim() - 1)
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


def _fingerprint(*tensors: Tensor) -> str:
    h = hashlib.md5()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def make_synthetic(seed: int, cfg: SyntheticConfig) -> tuple[Split, Split]:
    """A 10-class task of noisy class prototypes (28x28, uint8), fixed by ``seed``.

    Each class is a smooth random pattern (7x7 noise upsampled); samples add pixel noise.
    Tasks with different seeds have unrelated prototypes, so a shared head trained on one task
    and then another shows forgetting in seconds, without any dataset files.
    """
    g = torch.Generator().manual_seed(10_000 + seed)
    coarse = torch.rand(NUM_CLASSES, 1, 7, 7, generator=g)
    protos = torch.nn.functional.interpolate(
        coarse, size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=False
    )

    def sample(n: int) -> Split:
        labels = torch.arange(n) % NUM_CLASSES
        labels = labels[torch.randperm(n, generator=g)]
        x = protos[labels] + cfg.noise * torch.randn(n, *IMAGE_SHAPE, generator=g)
        return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), labels, torch.arange(n))

    return sample(cfg.n_train), sample(cfg.n_test)


@lru_cache(maxsize=4)
def _load_torchvision(
    dataset: str, root: Path, test_only: bool = False
) -> tuple[Split, Split, dict[str, str]]:
    """The verified train and test splits of a torchvision dataset (cached: Split MNIST and
    Permuted MNIST read MNIST once, not once per task); ``test_only``: the train split is
    not read (an empty split)."""
    spec = DATASETS[dataset]
    md5 = verify(spec, root)
    if md5 is None:
        raise DataError(
            f"{spec.display}: {problem(spec, root)}: run `make data` (or `python -m pipeline data`)"
        )
    import torchvision.datasets as tvd  # deferred: torchvision import costs ~1 s

    cls = tvd.MNIST if dataset == "mnist" else tvd.FashionMNIST
    splits = [Split.empty()] if test_only else []
    for train in (False,) if test_only else (True, False):
        ds = cls(str(root), train=train, download=False)
        images = ds.data.unsqueeze(1).contiguous()
        splits.append(Split(images, ds.targets.long(), torch.arange(len(images))))
    return splits[0], splits[1], md5


def release_raw_datasets() -> None:
    """Drop the cached dataset files' tensors (:func:`_load_torchvision`) once a sequence's
    tasks are built: the tasks keep only what they use, so the process holds each image once."""
    _load_torchvision.cache_clear()


def _transform(split: Split, cfg: TaskConfig) -> Split:
    """Apply the task's fixed input transform (pixel permutation or rotation) to a split."""
    images = split.images
    if cfg.permutation >= 0:
        g = torch.Generator().manual_seed(cfg.permutation)
        perm = torch.randperm(images[0].numel(), generator=g)
        images = images.flatten(1)[:, perm].view_as(images)
    if cfg.rotation:
        from torchvision.transforms.v2.functional import rotate

        images = rotate(images, cfg.rotation)
    return Split(images.contiguous(), split.labels, split.ids)


def _select_classes(split: Split, classes: list[int], offset: int) -> Split:
    """Keep the samples of ``classes`` and map their labels to ``offset + position``."""
    lookup = torch.full((int(split.labels.max()) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes)) + offset
    targets = lookup[split.labels]
    keep = targets >= 0
    if bool(keep.all()):  # every sample stays: share the images instead of copying them
        return Split(split.images, targets, split.ids)
    return Split(split.images[keep], targets[keep], split.ids[keep])


def load_task(
    index: int,
    cfg: TaskConfig,
    data: DataConfig,
    scenario: str = "domain",
    offset: int = 0,
    root: Path | None = None,
    test_only: bool = False,
) -> Task:
    """Load (or generate) one task, apply its transform and class subset, carve validation.

    ``root`` is the datasets' folder (default: ``paths.data``'s default, ``data/``).
    ``test_only``: read only the test split of a dataset file (train and val are empty), for
    readers that evaluate and never train (the loss landscape).

    Targets depend on the scenario: the position of the label in ``cfg.classes`` for
    ``domain`` and ``task`` (Split MNIST's 4/5 task becomes 0/1), and ``offset`` + that
    position for ``class`` (MNIST 0-9, then Fashion-MNIST 10-19).

    Raises:
        DataError: the dataset's files are missing or fail their MD5 check.
    """
    if cfg.dataset == "synthetic":
        train, test = make_synthetic(cfg.seed, data.synthetic)
        md5 = {"tensors": _fingerprint(train.images, train.labels, test.images, test.labels)}
        scaled = train.images.float() / 255
        mean, std, display = float(scaled.mean()), float(scaled.std()), f"Synthetic-{cfg.seed}"
    else:
        root = root or PathsConfig().data_dir()
        train, test, md5 = _load_torchvision(cfg.dataset, root, test_only)
        spec = DATASETS[cfg.dataset]
        # A dataset used twice in one sequence is told apart by its task name.
        display = spec.display if cfg.name == cfg.dataset else cfg.name
        mean, std = spec.mean, spec.std
    classes = list(cfg.classes) or list(range(NUM_CLASSES))
    offset = offset if scenario == "class" else 0
    test = _select_classes(_transform(test, cfg), classes, offset)
    if len(train) == 0:  # test_only
        return Task(index, cfg.name, display, mean, std, train, train, test, md5, classes, offset)
    train = _select_classes(_transform(train, cfg), classes, offset)
    train, val = carve_validation(train, data.val_fraction, data.split_seed)
    return Task(index, cfg.name, display, mean, std, train, val, test, md5, classes, offset)
