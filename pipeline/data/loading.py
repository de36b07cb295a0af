"""Where a task's images come from, and the sequence they make.

A task's images come from a dataset of the catalogue (:mod:`pipeline.catalogue`, verified by
provisioning and decoded by :mod:`pipeline.data.formats`), from the user's own files
(:mod:`pipeline.data.ownfiles`) or are generated (``synthetic``). :func:`load_task` applies the
sequence's size and channel rule, the task's fixed transform and class subset, and carves the
validation split; :func:`sequence_shape` tells a sequence's image shape and classes without
loading it, for the checks made before any run.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from pipeline.catalogue import dataset as catalogue_dataset
from pipeline.config.paths import PathsConfig
from pipeline.config.schema import SYNTHETIC_CLASSES, DataConfig, SyntheticConfig, TaskConfig
from pipeline.data.formats import FormatError, Images, read_dataset
from pipeline.data.ownfiles import OwnData, peek_arrays, peek_folder, read_arrays, read_folder
from pipeline.data.provision import problem, verify
from pipeline.data.shards import (
    SPLITS,
    Manifest,
    ShardsError,
    StreamedSplit,
    read_manifest,
    write_shards,
)
from pipeline.data.streaming import shards_task
from pipeline.data.tasks import DataError, Split, Task, carve_validation
from pipeline.errors import ConfigError

#: The task kinds that read the user's own files (``path``).
OWN_DATA = ("folder", "arrays")
#: The image shape of checkpoints written before the shape was recorded in them (MNIST's).
LEGACY_SHAPE = (1, 28, 28)


def _fingerprint(*tensors: Tensor) -> str:
    h = hashlib.md5()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def make_synthetic(seed: int, cfg: SyntheticConfig) -> tuple[Split, Split]:
    """A 10-class task of noisy class prototypes (``channels`` x ``size`` x ``size``, uint8),
    fixed by ``seed``.

    Each class is a smooth random pattern (7x7 noise upsampled); samples add pixel noise.
    Tasks with different seeds have unrelated prototypes, so a shared head trained on one task
    and then another shows forgetting in seconds, without any dataset files.
    """
    g = torch.Generator().manual_seed(10_000 + seed)
    shape = (cfg.channels, cfg.size, cfg.size)
    coarse = torch.rand(SYNTHETIC_CLASSES, cfg.channels, 7, 7, generator=g)
    protos = torch.nn.functional.interpolate(
        coarse, size=shape[1:], mode="bilinear", align_corners=False
    )

    def sample(n: int) -> Split:
        labels = torch.arange(n) % SYNTHETIC_CLASSES
        labels = labels[torch.randperm(n, generator=g)]
        x = protos[labels] + cfg.noise * torch.randn(n, *shape, generator=g)
        return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), labels, torch.arange(n))

    return sample(cfg.n_train), sample(cfg.n_test)


@lru_cache(maxsize=4)
def _load_catalogue(dataset: str, root: Path, test_only: bool) -> tuple[Images, dict[str, str]]:
    """The verified, decoded splits of a dataset of the catalogue (cached: Split MNIST and
    Permuted MNIST read MNIST once, not once per task) and its files' MD5s."""
    spec = catalogue_dataset(dataset)
    md5 = verify(spec, root)
    if md5 is None:
        raise DataError(
            f"{spec.display}: {problem(spec, root)}: run `make data DATASETS={spec.name}` "
            "(or `python -m pipeline data --dataset " + spec.name + "`)"
        )
    try:
        return read_dataset(spec, root, test_only), md5
    except FormatError as e:
        raise DataError(str(e)) from None


def release_raw_datasets() -> None:
    """Drop the cached dataset files' tensors (:func:`_load_catalogue`) once a sequence's
    tasks are built: the tasks keep only what they use, so the process holds each image once."""
    _load_catalogue.cache_clear()


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1], summed in
    float64 chunks (a float copy of CIFAR's training set would take 600 MB)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in torch.split(images, 4096):
        values = chunk.to(torch.float64).div_(255).transpose(0, 1).flatten(1)
        total += values.sum(1)
        squares += values.square().sum(1)
    n = max(images.numel() // images.shape[1], 2)
    mean = total / n
    std = ((squares - n * mean.square()) / (n - 1)).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _conform(images: Images, data: DataConfig) -> Images:
    """Apply the sequence's rule: resize to ``data.image_size``, pad by ``data.pad``, convert
    to ``data.channels`` (what :func:`sequence_shape` checked the tasks agree on without it)."""
    from torchvision.transforms.v2.functional import pad, resize, rgb_to_grayscale

    def conform(x: Tensor) -> Tensor:
        if data.image_size and list(x.shape[2:]) != list(data.image_size):
            x = resize(x, list(data.image_size), antialias=True)
        if data.pad:
            x = pad(x, [data.pad], fill=0)
        if data.channels and x.shape[1] != data.channels:
            x = x.expand(-1, 3, -1, -1) if data.channels == 3 else rgb_to_grayscale(x)
        return x.contiguous()

    train, test = conform(images.train_images), conform(images.test_images)
    return Images(train, images.train_labels, test, images.test_labels)


def _own_files(cfg: TaskConfig, data: DataConfig) -> OwnData:
    """The user's own data of a ``folder`` or ``arrays`` task."""
    size = (data.image_size[0], data.image_size[1]) if data.image_size else None
    path = Path(cfg.path).expanduser()
    try:
        if cfg.dataset == "folder":
            channels = data.channels or peek_folder(path).shape[0]
            return read_folder(path, channels, size)
        labels = Path(cfg.labels).expanduser() if cfg.labels else None
        return read_arrays(path, labels)
    except FormatError as e:
        raise DataError(str(e)) from None


def _with_test(images: Images, fraction: float, seed: int) -> tuple[Images, Tensor]:
    """Carve a test split out of the training samples when the source has none of its own;
    also return the training samples' ids (their positions in the source's order)."""
    everything = torch.arange(len(images.train_labels))
    if len(images.test_labels):
        return images, everything
    whole = Split(images.train_images, images.train_labels, everything)
    train, test = carve_validation(whole, fraction, seed)  # "validation": the test split here
    return Images(train.images, train.labels, test.images, test.labels), train.ids


class _Source(NamedTuple):
    images: Images
    md5: dict[str, str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    display: str
    classes: int
    train_ids: Tensor | None = None  # None: positions in the training split


def _source(cfg: TaskConfig, data: DataConfig, root: Path, test_only: bool) -> _Source:
    """A task's images before its transform and class subset, with their normalisation."""
    if cfg.dataset == "synthetic":
        train, test = make_synthetic(cfg.seed, data.synthetic)
        md5 = {"tensors": _fingerprint(train.images, train.labels, test.images, test.labels)}
        images = _conform(Images(train.images, train.labels, test.images, test.labels), data)
        scaled = images.train_images.float() / 255
        dims = (0, 2, 3)
        mean, std = tuple(scaled.mean(dims).tolist()), tuple(scaled.std(dims).tolist())
        return _Source(images, md5, mean, std, f"Synthetic-{cfg.seed}", SYNTHETIC_CLASSES)
    if cfg.dataset in OWN_DATA:
        own = _own_files(cfg, data)
        images, ids = _with_test(own.images, data.test_fraction, data.split_seed)
        images = _conform(images, data)
        mean, std = channel_stats(images.train_images)
        md5 = {"tensors": _fingerprint(*images)}
        return _Source(images, md5, mean, std, cfg.name, own.classes, ids)
    spec = catalogue_dataset(cfg.dataset)
    raw, md5 = _load_catalogue(cfg.dataset, root, test_only)
    images = _conform(raw, data)
    if spec.mean and images.test_images.shape[1] == spec.shape[0]:
        mean, std = spec.mean, spec.std
    elif spec.mean and spec.shape[0] == 1:  # grey replicated: the same statistics per channel
        mean, std = spec.mean * 3, spec.std * 3
    else:  # computed on the training images (a test-only read: on the test images)
        mean, std = channel_stats(
            images.train_images if len(images.train_labels) else images.test_images
        )
    # A dataset used twice in one sequence is told apart by its task name.
    display = spec.display if cfg.name == cfg.dataset else cfg.name
    return _Source(images, md5, mean, std, display, spec.classes)


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
    top = max(int(split.labels.max()) if len(split) else 0, *classes) + 1  # a split may lack some
    lookup = torch.full((top,), -1, dtype=torch.long)
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
    if cfg.dataset == "shards":
        return shards_task(index, cfg, data, scenario, offset)
    source = _source(cfg, data, root or PathsConfig().data_dir(), test_only)
    images, md5, mean, std, display = source[:5]
    ids = source.train_ids
    ids = torch.arange(len(images.train_labels)) if ids is None else ids
    train = Split(images.train_images, images.train_labels, ids)
    test = Split(images.test_images, images.test_labels, torch.arange(len(images.test_labels)))
    classes = list(cfg.classes) or list(range(source.classes))
    offset = offset if scenario == "class" else 0
    test = _select_classes(_transform(test, cfg), classes, offset)
    if len(train) == 0:  # test_only
        return Task(index, cfg.name, display, mean, std, train, train, test, md5, classes, offset)
    train = _select_classes(_transform(train, cfg), classes, offset)
    train, val = carve_validation(train, data.val_fraction, data.split_seed)
    return Task(index, cfg.name, display, mean, std, train, val, test, md5, classes, offset)


def _task_shape(cfg: TaskConfig, data: DataConfig) -> tuple[tuple[int, int, int], int]:
    """One task's image shape (as stored, before the sequence's rule) and its classes."""
    if cfg.dataset == "synthetic":
        syn = data.synthetic
        return (syn.channels, syn.size, syn.size), SYNTHETIC_CLASSES
    if cfg.dataset == "shards":
        try:
            manifest = read_manifest(cfg.path)
        except ShardsError as e:
            raise ConfigError(f"data.tasks.path: {e}") from None
        return manifest.shape, manifest.classes
    if cfg.dataset in OWN_DATA:
        path = Path(cfg.path).expanduser()
        labels = Path(cfg.labels).expanduser() if cfg.labels else None
        try:
            peek = peek_folder(path) if cfg.dataset == "folder" else peek_arrays(path, labels)
        except FormatError as e:
            raise ConfigError(f"data.tasks.path: {e}") from None
        return peek.shape, peek.classes
    spec = catalogue_dataset(cfg.dataset)
    return spec.shape, spec.classes


def sequence_shape(data: DataConfig) -> tuple[tuple[int, int, int], list[int]]:
    """The image shape every task is given (after ``data.image_size`` and ``data.channels``)
    and each task's number of classes, learnt without loading the tasks.

    Raises:
        ConfigError: the tasks' images differ in size or channels and no rule converts them;
            a task keeps a class its data lacks; the user's files cannot be read.
    """
    shapes: list[tuple[int, int, int]] = []
    counts: list[int] = []
    for cfg in data.tasks:
        (c, h, w), classes = _task_shape(cfg, data)
        height, width = data.image_size or (h, w)
        ruled = (data.channels or c, height + 2 * data.pad, width + 2 * data.pad)
        if cfg.dataset == "shards" and ruled != (c, h, w):
            raise ConfigError(
                f"data.tasks: {cfg.name}'s shards hold {c}x{h}x{w} images, read as written: "
                "write them at the sequence's size and channels"
            )
        shapes.append((ruled[0], ruled[1], ruled[2]))
        outside = [k for k in cfg.classes if k >= classes]
        if outside:
            raise ConfigError(
                f"data.tasks.classes: {cfg.name} keeps class {outside[0]}, its data has "
                f"{classes} classes (0..{classes - 1})"
            )
        counts.append(len(cfg.classes) or classes)
    for cfg, shape in zip(data.tasks, shapes, strict=True):
        if shape != shapes[0]:
            first, this = ("x".join(map(str, s)) for s in (shapes[0], shape))
            raise ConfigError(
                f"data.tasks: {data.tasks[0].name}'s images are {first}, {cfg.name}'s {this}: "
                "set data.image_size=[height,width] and data.channels=1 or 3 to convert them"
            )
    return shapes[0], counts


def write_task_shards(cfg: TaskConfig, data: DataConfig, root: Path, out: str) -> None:
    """Load a task as a run would (its transform and classes; domain targets) and write its
    three splits as litdata shards (:mod:`pipeline.data.shards`) at ``out``.

    Raises:
        DataError: the task cannot be loaded or the shards cannot be written.
    """
    task = load_task(0, cfg, data, "domain", 0, root)
    chunk = 4096  # samples a writer input holds

    Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]

    def chunks(split: Split | StreamedSplit) -> list[Chunk]:
        assert isinstance(split, Split), "a task loaded to be written is held in memory"
        labels = torch.tensor(task.classes)[split.labels]  # the original labels, not targets
        return [
            (
                split.images[i : i + chunk].numpy(),
                labels[i : i + chunk].numpy(),
                split.ids[i : i + chunk].numpy(),
            )
            for i in range(0, len(split), chunk)
        ]

    total = max(task.classes) + 1
    manifest = Manifest(
        tuple(task.test.images.shape[1:]),  # type: ignore[arg-type]
        total,
        task.mean,
        task.std,
        {name: len(getattr(task, name)) for name in SPLITS},
        data.val_fraction,
        data.split_seed,
        hashlib.md5(json.dumps(task.md5, sort_keys=True).encode()).hexdigest(),
    )
    try:
        write_shards(out, {name: chunks(getattr(task, name)) for name in SPLITS}, manifest)
    except Exception as e:  # litdata's writer, the object store
        raise DataError(
            f"{out}: writing the shards failed ({' '.join(str(e).split())[:200]})"
        ) from None
