"""Tasks larger than memory: written once into litdata's chunked shards, streamed from a folder
or an object store (``s3://``) while training.

A task's shards are one folder (or prefix) holding, per split (``train``, ``val``, ``test``),
a litdata dataset written by litdata's ``BinaryWriter`` (items of a uint8 image, its label and
its id), each split's labels and ids as ``.npy`` files (a few bytes a sample: what replay's
bookkeeping, erasure and the class subsets need without reading the images), and
``pipeline-shards.json``, the manifest: the format version, the image shape, the classes, the
normalisation, and how validation was carved.

Reading uses litdata's own iteration (:class:`litdata.StreamingDataset`), which shuffles the
order of the chunks and the samples within them, fixed by a seed and the epoch, and holds a
few chunks at a time: memory does not grow with the dataset. Single samples (the few a replay
buffer keeps at the end of a task) are read by index. Nothing here coordinates processes: in a
distributed run litdata gives each process its own chunks.

An object store is reached the way litdata and boto3 reach it: credentials and
``AWS_ENDPOINT_URL`` from the environment (a team's MinIO or S3; the tests use moto's server).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: The version of the layout :func:`write_shards` writes; a folder of another is refused.
SHARDS_FORMAT = 1
MANIFEST = "pipeline-shards.json"
SPLITS = ("train", "val", "test")
#: The size of litdata's chunks: a few of them in memory at a time.
CHUNK_BYTES = "64MB"


class ShardsError(ValueError):
    """A shards folder is missing, of another format, or damaged (one line naming it)."""


@dataclass(frozen=True)
class Manifest:
    """What a shards folder holds (``pipeline-shards.json``)."""

    shape: tuple[int, int, int]
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sizes: dict[str, int]
    val_fraction: float
    split_seed: int
    fingerprint: str

    @property
    def train_bytes(self) -> int:
        """The training split's images, in bytes (what holding it in memory would take)."""
        return self.sizes["train"] * int(np.prod(self.shape))


def _is_remote(where: str) -> bool:
    return "://" in where


def _join(where: str, name: str) -> str:
    return f"{where.rstrip('/')}/{name}"


def _allow_plain_http(where: str) -> None:
    """litdata talks to an object store through obstore, whose client options it fixes without
    ``allow_http``: an endpoint on plain HTTP (a MinIO on a private network, moto's server in
    the tests) fails with reqwest's "builder error". Allow it where ``AWS_ENDPOINT_URL`` says
    http:// (litdata 0.2.76, ``litdata.streaming.downloader._OBSTORE_CLIENT_OPTIONS``)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if _is_remote(where) and endpoint.startswith("http://"):
        from litdata.streaming import downloader

        options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
        if isinstance(options, dict):
            options["allow_http"] = "true"


def _s3() -> Any:
    import boto3  # litdata's own dependency: the client it reads s3:// with

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _split_uri(uri: str) -> tuple[str, str]:
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def _read_bytes(where: str) -> bytes:
    if not _is_remote(where):
        return Path(where).read_bytes()
    bucket, key = _split_uri(where)
    body: bytes = _s3().get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def _write_bytes(where: str, data: bytes) -> None:
    if not _is_remote(where):
        path = Path(where)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # never a half-written manifest
        return
    bucket, key = _split_uri(where)
    _s3().put_object(Bucket=bucket, Key=key, Body=data)


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _items(chunk: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> Iterator[dict[str, Any]]:
    images, labels, ids, start = chunk
    for row, (image, label, sample) in enumerate(zip(images, labels, ids, strict=True), start):
        yield {"image": image, "label": int(label), "id": int(sample), "row": row}


def write_items(
    where: str, fn: Callable[[Any], Iterator[dict[str, Any]]], inputs: list[Any]
) -> None:
    """Write one split's litdata dataset: the items ``fn`` yields for each input, in order
    (items of ``image``, ``label``, ``id`` and ``row``, the item's position in the split).

    litdata's :class:`~litdata.streaming.writer.BinaryWriter` writes the chunks in this
    process: ``litdata.optimize`` would start a worker process and poll it, seconds a call for
    the small tasks of the tests. An ``s3://`` destination is written to a scratch folder, then
    each file uploaded.
    """
    from litdata.streaming.writer import BinaryWriter

    remote = _is_remote(where)
    with tempfile.TemporaryDirectory(prefix="shards-") as scratch:
        local = Path(scratch) if remote else Path(where)
        if local.exists() and not remote:
            shutil.rmtree(local)  # a split written again replaces the old one whole
        local.mkdir(parents=True, exist_ok=True)
        writer = BinaryWriter(str(local), chunk_bytes=CHUNK_BYTES)
        index = 0
        for spec in inputs:
            for item in fn(spec):
                writer[index] = item
                index += 1
        writer.done()
        writer.merge()
        if remote:
            bucket, key = _split_uri(where)
            client = _s3()
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    client.upload_file(
                        str(path), bucket, f"{key.rstrip('/')}/{path.relative_to(local)}"
                    )


def write_rows(where: str, labels: np.ndarray, ids: np.ndarray) -> None:
    """Write a split's labels and ids beside its dataset (``<split>-labels.npy``, ``-ids.npy``)."""
    base = where.rstrip("/")
    _write_bytes(f"{base}-labels.npy", _npy(labels.astype(np.int64)))
    _write_bytes(f"{base}-ids.npy", _npy(ids.astype(np.int64)))


def write_split(
    where: str, chunks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Write one split from ``chunks`` of (images, labels, ids) arrays, in order, and its
    labels and ids beside it; return those labels and ids."""
    labels = np.concatenate([c[1] for c in chunks]).astype(np.int64)
    ids = np.concatenate([c[2] for c in chunks]).astype(np.int64)
    starts = np.cumsum([0] + [len(c[1]) for c in chunks])[:-1]
    write_items(where, _items, [(*c, int(start)) for c, start in zip(chunks, starts, strict=True)])
    write_rows(where, labels, ids)
    return labels, ids


def write_manifest(where: str, manifest: Manifest) -> None:
    """Write the manifest last: a folder without one was not written to its end."""
    record = {"format": SHARDS_FORMAT, **manifest.__dict__}
    _write_bytes(_join(where, MANIFEST), json.dumps(record, indent=2).encode())


def read_manifest(where: str) -> Manifest:
    """The manifest of a shards folder.

    Raises:
        ShardsError: no manifest (not a shards folder, or one not written to its end), or one
            of another format version.
    """
    try:
        record = json.loads(_read_bytes(_join(where, MANIFEST)))
    except (OSError, ValueError) as e:
        raise ShardsError(
            f"{where} holds no readable {MANIFEST} ({_reason(e)}): write it with "
            "`python -m pipeline shards`"
        ) from None
    except Exception as e:  # botocore's ClientError (no such key), connection errors
        raise ShardsError(f"{where}: cannot read {MANIFEST} ({_reason(e)})") from None
    version = record.pop("format", None)
    if version != SHARDS_FORMAT:
        raise ShardsError(
            f"{where} was written in shards format {version}, this version reads "
            f"{SHARDS_FORMAT}: write it again with `python -m pipeline shards`"
        )
    record["shape"] = tuple(record["shape"])
    record["mean"], record["std"] = tuple(record["mean"]), tuple(record["std"])
    return Manifest(**record)


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


@dataclass
class StreamedImages:
    """A streamed split's images, read by position for the few samples a buffer keeps:
    position ``i`` is row ``kept[i]`` of the split (its class subset)."""

    where: str
    shape: tuple[int, ...]  # N x C x H x W
    kept: Tensor

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Tensor) -> Tensor:
        dataset = open_dataset(self.where, shuffle=False)
        raw = self.kept[rows.reshape(-1).cpu()]
        picked = [dataset[int(r)]["image"] for r in raw.tolist()]
        out = np.stack(picked) if picked else np.zeros((0, *self.shape[1:]), np.uint8)
        return torch.from_numpy(out).reshape(*rows.shape, *self.shape[1:])


def open_dataset(where: str, shuffle: bool, seed: int = 0) -> Any:
    """litdata's dataset over one split of a shards folder.

    Raises:
        ShardsError: the split's folder or its index cannot be read.
    """
    from litdata import StreamingDataset

    _allow_plain_http(where)
    try:
        dataset = StreamingDataset(where, shuffle=shuffle, seed=seed)
    except Exception as e:  # litdata raises ValueError, FileNotFoundError, botocore errors
        raise ShardsError(f"{where}: cannot open the shards ({_reason(e)})") from None
    # Every process reads the whole stream, in the one order the seed fixes, and keeps its
    # slice of each step's batch (StreamedSplit.batches): the steps of one process, as for a
    # task in memory. litdata would give each process its own chunks instead (and processes
    # with fewer chunks fewer steps). Its detected environment is replaced before iterating.
    from litdata.utilities.env import _DistributedEnv

    dataset.distributed_env = _DistributedEnv(1, 0, 1)
    return dataset


def read_split_rows(where: str) -> tuple[Tensor, Tensor]:
    """A split's labels and ids (its ``-labels.npy`` and ``-ids.npy``)."""
    base = where.rstrip("/")
    try:
        labels = np.load(io.BytesIO(_read_bytes(f"{base}-labels.npy")), allow_pickle=False)
        ids = np.load(io.BytesIO(_read_bytes(f"{base}-ids.npy")), allow_pickle=False)
    except Exception as e:
        raise ShardsError(f"{base}: cannot read its labels and ids ({_reason(e)})") from None
    return torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(ids.astype(np.int64))


def stream(
    where: str, keep: Tensor | None, shuffle: bool, seed: int
) -> Iterator[tuple[np.ndarray, int, int]]:
    """The items of a split (image, label, row), in litdata's order for ``seed``, skipping
    the rows ``keep`` (a mask by row) leaves out.

    Raises:
        ShardsError: the shards cannot be read any more (a folder deleted mid-run).
    """
    dataset = open_dataset(where, shuffle=shuffle, seed=seed)
    wanted = None if keep is None else keep.numpy()
    iterator = iter(dataset)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as e:  # a chunk that vanished or is damaged
            raise ShardsError(f"{where}: reading the shards failed ({_reason(e)})") from None
        row = int(item["row"])
        if wanted is None or wanted[row]:
            yield item["image"], int(item["label"]), row


@dataclass
class StreamedSplit:
    """A split read from shards as training goes: its labels and ids in memory, its images
    on disk (or in the object store).

    Attributes:
        where: the split's litdata dataset.
        rows: the split's rows this task keeps (its class subset), in order.
        labels: each kept row's target (in the scenario's label space).
        ids: each kept row's sample id.
        images: the kept rows' images, read by position among them.
    """

    where: str
    rows: Tensor
    labels: Tensor
    ids: Tensor
    images: StreamedImages

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def move_to(self, device: torch.device) -> None:
        """Streamed images stay where they are; batches go to the device as they are read."""

    def positions(self) -> Tensor:
        """Each row of the split's position among the kept rows (-1: a row the task leaves
        out), indexed by the row a streamed item carries."""
        position = torch.full((int(self.rows.max()) + 1 if len(self) else 1,), -1, dtype=torch.long)
        position[self.rows] = torch.arange(len(self))
        return position

    def batches(
        self, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(images, targets, ids) batches of the kept rows, in litdata's order for ``seed``.
        In a distributed run every process reads the same global batches of ``batch_size`` and
        keeps its contiguous slice of each (as :class:`pipeline.data.tasks.BatchIndices` does);
        a last batch too small to give every process a sample is dropped."""
        position = self.positions()
        keep = position >= 0
        images: list[np.ndarray] = []
        rows: list[int] = []
        for image, _, row in stream(self.where, keep, shuffle, seed):
            images.append(image)
            rows.append(int(position[row]))
            if len(rows) == batch_size:
                yield self._batch(images, rows, rank, world)
                images, rows = [], []
        if len(rows) >= world:
            yield self._batch(images, rows, rank, world)

    def _batch(
        self, images: list[np.ndarray], rows: list[int], rank: int, world: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        mine = torch.arange(len(rows)).tensor_split(world)[rank]
        index = torch.tensor(rows)[mine]
        pixels = np.stack([images[int(i)] for i in mine])
        return torch.from_numpy(pixels), self.labels[index], self.ids[index]


def open_split(where: str, shape: tuple[int, int, int], lookup: Tensor) -> StreamedSplit:
    """One split of a shards folder as a task holds it: the rows whose label ``lookup`` maps
    to a target (>= 0) are kept, with that target.

    Raises:
        ShardsError: the split cannot be read.
    """
    labels, ids = read_split_rows(where)
    if len(labels) and int(labels.max()) >= len(lookup):
        raise ShardsError(f"{where}: label {int(labels.max())} is outside the dataset's classes")
    targets = lookup[labels] if len(labels) else labels
    rows = (targets >= 0).nonzero().squeeze(1)
    images = StreamedImages(where, (len(rows), *shape), rows)
    return StreamedSplit(where, rows, targets[rows], ids[rows], images)


def write_shards(
    out: str,
    splits: dict[str, Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    manifest: Manifest,
) -> None:
    """Write a task's three splits (each as chunks of images, labels and ids) and, last, its
    manifest: a folder that has one was written to its end."""
    for name in SPLITS:
        write_split(_join(out, name), splits[name])
    write_manifest(out, manifest)
