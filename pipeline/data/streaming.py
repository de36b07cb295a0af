"""A task of litdata shards (:mod:`pipeline.data.shards`) as a run holds it: read into memory
when it is small, streamed when it is not (``data.storage``)."""

from __future__ import annotations

import torch

from pipeline.config.schema import DataConfig, TaskConfig
from pipeline.data.shards import (
    SPLITS,
    Manifest,
    ShardsError,
    StreamedSplit,
    open_split,
    read_manifest,
    stream,
)
from pipeline.data.tasks import DataError, Split, Task


def held_in_memory(manifest: Manifest, data: DataConfig) -> bool:
    """Whether a shards task is read into memory (else streamed): ``data.storage``, and for
    ``auto`` its training images' size against ``data.memory_limit_gb``."""
    if data.storage != "auto":
        return data.storage == "memory"
    return manifest.train_bytes <= data.memory_limit_gb * 2**30


def shards_task(index: int, cfg: TaskConfig, data: DataConfig, scenario: str, offset: int) -> Task:
    """A task of litdata shards: read into memory, or streamed (:func:`held_in_memory`). Its
    validation split is the one written into the shards."""
    try:
        manifest = read_manifest(cfg.path)
        classes = list(cfg.classes) or list(range(manifest.classes))
        offset = offset if scenario == "class" else 0
        lookup = torch.full((manifest.classes,), -1, dtype=torch.long)
        lookup[torch.tensor(classes)] = torch.arange(len(classes)) + offset
        streamed = [
            open_split(f"{cfg.path.rstrip('/')}/{s}", manifest.shape, lookup) for s in SPLITS
        ]
        splits: list[Split | StreamedSplit] = list(streamed)
        if held_in_memory(manifest, data):
            splits = [_read_whole(split) for split in streamed]
    except ShardsError as e:
        raise DataError(str(e)) from None
    md5 = {"shards": manifest.fingerprint}
    train, val, test = splits
    return Task(
        index,
        cfg.name,
        cfg.name,
        manifest.mean,
        manifest.std,
        train,
        val,
        test,
        md5,
        classes,
        offset,
    )


def _read_whole(split: StreamedSplit) -> Split:
    """A split of shards read into memory, in its rows' order."""
    images = torch.empty(split.images.shape, dtype=torch.uint8)
    position = split.positions()
    keep = position >= 0
    for image, _, row in stream(split.where, keep, shuffle=False, seed=0):
        images[int(position[row])] = torch.from_numpy(image)
    return Split(images, split.labels, split.ids)


def streamed_tasks(data: DataConfig) -> list[str]:
    """The shards tasks of a sequence that will be streamed (:func:`held_in_memory`).

    Raises:
        ShardsError: a manifest cannot be read.
    """
    return [
        t.name
        for t in data.tasks
        if t.dataset == "shards" and not held_in_memory(read_manifest(t.path), data)
    ]
