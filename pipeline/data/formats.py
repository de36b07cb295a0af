"""Readers of the datasets' file formats: verified files in, uint8 images and labels out.

Each reader returns :class:`Images`: the training and test images as uint8 tensors of
N x C x H x W and their labels as int64, decoded straight from the files that provisioning
verified (archives are read in place, never unpacked to disk). Reading the canonical formats is
a few lines each, written here rather than through torchvision's dataset classes: those check
their own list of MD5s of the unpacked files, so they cannot read the small archives in the
canonical formats the tests build, and they hold PIL images or HWC arrays this module would
convert anyway. The user's own data (an image folder, ``.npz``/``.npy`` arrays) is read by
:mod:`pipeline.data.ownfiles`.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from pipeline.catalogue import DatasetSpec, Format
from pipeline.data.registry import NumpyOnlyUnpickler


class FormatError(ValueError):
    """A verified file does not hold what its format says (one line naming the file)."""


class Images(NamedTuple):
    """A dataset's two splits as tensors: uint8 images (N x C x H x W), int64 labels."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def _idx(data: bytes, where: str) -> np.ndarray:
    """Decode an IDX file (MNIST's format): magic ``0 0 8 ndim``, big-endian int32 dims."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise FormatError(f"{where} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise FormatError(f"{where}: {body.size} bytes of data, its header says {dims.tolist()}")
    return body.reshape([int(d) for d in dims])


def _gunzip(data: bytes, name: str) -> bytes:
    return gzip.decompress(data) if name.endswith(".gz") else data


def _images_and_labels(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[Tensor, Tensor]:
    if images.shape[0] != labels.shape[0]:
        raise FormatError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.ndim == 3:  # N x H x W: one channel
        images = images[:, None]
    pixels = np.require(images, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])  # torch shares it
    return torch.from_numpy(pixels), torch.from_numpy(labels.astype(np.int64))


def _empty(images: Images) -> Images:
    """The splits with the training one emptied (what a test-only read returns)."""
    return Images(images[2][:0], images[3][:0], images[2], images[3])


def read_idx(spec: DatasetSpec, raw: Path, test_only: bool) -> Images:
    """Four IDX files, plain or gzipped, in the order train images, train labels, test images,
    test labels (the order of ``spec.md5``)."""
    names = list(spec.md5)[2 if test_only else 0 :]
    arrays = [_idx(_gunzip((raw / n).read_bytes(), n), str(raw / n)) for n in names]
    test = _images_and_labels(arrays[-2], arrays[-1], str(raw))
    if test_only:
        return _empty(Images(*test, *test))
    return Images(*_images_and_labels(arrays[0], arrays[1], str(raw)), *test)


def read_emnist(spec: DatasetSpec, raw: Path, test_only: bool) -> Images:
    """EMNIST's ``gzip.zip``: the split ``spec.variant``'s four gzipped IDX files. EMNIST's
    images are stored transposed (torchvision's EMNIST transposes them back, as here); the
    ``letters`` split labels its 26 classes 1..26, here 0..25."""
    (archive,) = spec.md5
    path = raw / archive
    with zipfile.ZipFile(path) as z:

        def member(part: str, kind: str) -> np.ndarray:
            name = f"gzip/emnist-{spec.variant}-{part}-{kind}-ubyte.gz"
            try:
                return _idx(gzip.decompress(z.read(name)), f"{path}:{name}")
            except KeyError:
                raise FormatError(f"{path} has no {name}") from None

        splits: list[Tensor] = []
        for part in ("test",) if test_only else ("train", "test"):
            images = member(part, "images-idx3").transpose(0, 2, 1)
            labels = member(part, "labels-idx1") - (1 if spec.variant == "letters" else 0)
            splits += _images_and_labels(images, labels, str(path))
    return _empty(Images(*splits, *splits)) if test_only else Images(*splits)


def _cifar_batch(data: bytes, labels_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    try:
        pixels = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[labels_key.encode()], dtype=np.int64)
    except (KeyError, TypeError):
        raise FormatError(f"{where} holds no {labels_key} and data (a CIFAR batch has)") from None
    return pixels.reshape(-1, 3, 32, 32), labels


def read_cifar(spec: DatasetSpec, raw: Path, test_only: bool) -> Images:
    """CIFAR's ``tar.gz`` of pickled batches (``data_batch_1..5`` and ``test_batch`` for
    CIFAR-10, ``train`` and ``test`` for CIFAR-100), each a dict whose ``data`` holds a row of
    1,024 red, 1,024 green and 1,024 blue values per image; labels under ``spec.variant``."""
    (archive,) = spec.md5
    path = raw / archive
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(path, "r:gz") as tar:
        for info in sorted(tar.getmembers(), key=lambda m: m.name):
            base = info.name.rsplit("/", 1)[-1]
            part = "train" if base.startswith("data_batch") or base == "train" else "test"
            if base not in ("test_batch", "test", "train") and not base.startswith("data_batch"):
                continue
            if test_only and part == "train":
                parts["train"].append((np.zeros((0, 3, 32, 32), np.uint8), np.zeros(0, np.int64)))
                continue
            file = tar.extractfile(info)
            if file is not None:
                where = f"{path}:{info.name}"
                parts[part].append(_cifar_batch(file.read(), spec.variant, where))
    if not parts["train"] or not parts["test"]:
        raise FormatError(f"{path} holds no CIFAR training or test batch")
    splits: list[Tensor] = []
    for part in ("train", "test"):
        images = np.concatenate([images for images, _ in parts[part]])
        splits += _images_and_labels(images, np.concatenate([y for _, y in parts[part]]), str(path))
    return Images(*splits)


def read_svhn(spec: DatasetSpec, raw: Path, test_only: bool) -> Images:
    """SVHN's MATLAB files: ``X`` of 32 x 32 x 3 x N, ``y`` of N x 1 with 10 for the digit 0."""
    from scipy.io import loadmat  # deferred: scipy's import takes a second

    splits: list[Tensor] = []
    for name in list(spec.md5)[1 if test_only else 0 :]:
        try:
            mat = loadmat(raw / name)
            images, labels = mat["X"], mat["y"].reshape(-1) % 10
        except (KeyError, ValueError, TypeError) as e:
            raise FormatError(f"{raw / name} is not an SVHN .mat file ({e})") from None
        splits += _images_and_labels(images.transpose(3, 2, 0, 1), labels, str(raw / name))
    return _empty(Images(*splits, *splits)) if test_only else Images(*splits)


def decode_image(data: bytes, mode: str, where: str) -> np.ndarray:
    """One image file's pixels, converted to ``mode`` (``L`` or ``RGB``): H x W (x C) uint8.

    Raises:
        FormatError: the file is not an image PIL can decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise FormatError(f"{where} is not a readable image ({e})") from None


def read_tinyimagenet(spec: DatasetSpec, raw: Path, test_only: bool) -> Images:
    """TinyImageNet's zip: ``train/<wnid>/images/*.JPEG`` for training and ``val/images``,
    labelled by ``val/val_annotations.txt``, for testing; a class is its wnid's position in
    the sorted ``wnids.txt``. Some of its JPEGs are greyscale: all are read as RGB."""
    (archive,) = spec.md5
    path = raw / archive
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        top = next((n.split("/")[0] for n in names if n.endswith("wnids.txt")), None)
        if top is None:
            raise FormatError(f"{path} holds no wnids.txt (not a TinyImageNet archive)")
        wnids = sorted(z.read(f"{top}/wnids.txt").decode().split())
        index = {wnid: i for i, wnid in enumerate(wnids)}
        train = [
            (n, index[n.split("/")[2]])
            for n in sorted(names)
            if n.startswith(f"{top}/train/") and n.lower().endswith(".jpeg") and not test_only
        ]
        lines = z.read(f"{top}/val/val_annotations.txt").decode().splitlines()
        test = [
            (f"{top}/val/images/{f[0]}", index[f[1]])
            for f in (ln.split("\t") for ln in lines)
            if len(f) > 1
        ]

        def load(files: list[tuple[str, int]]) -> tuple[Tensor, Tensor]:
            decoded = [decode_image(z.read(n), "RGB", f"{path}:{n}") for n, _ in files]
            images = np.stack(decoded) if decoded else np.zeros((0, 64, 64, 3), np.uint8)
            labels = np.array([label for _, label in files])
            return _images_and_labels(images.transpose(0, 3, 1, 2), labels, str(path))

        return Images(*load(train), *load(test))


READERS: dict[Format, Callable[[DatasetSpec, Path, bool], Images]] = {
    Format.idx: read_idx,
    Format.emnist: read_emnist,
    Format.cifar: read_cifar,
    Format.svhn: read_svhn,
    Format.tinyimagenet: read_tinyimagenet,
}


def read_dataset(spec: DatasetSpec, root: Path, test_only: bool = False) -> Images:
    """Decode a provisioned dataset's files (verify them first: see provisioning);
    ``test_only``: the training files are not read (its split is empty).

    Raises:
        FormatError: a file does not hold what its format says, or labels fall outside the
            dataset's classes.
    """
    raw = spec.raw_dir(root)
    try:
        images = READERS[spec.format](spec, raw, test_only)
    except (OSError, EOFError, pickle.UnpicklingError, tarfile.TarError, zipfile.BadZipFile) as e:
        raise FormatError(f"{raw}: cannot read {spec.display}'s files ({e})") from None
    for labels in (images.train_labels, images.test_labels):
        if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < spec.classes):
            raise FormatError(
                f"{raw}: labels {int(labels.min())}..{int(labels.max())} fall outside "
                f"{spec.display}'s {spec.classes} classes"
            )
    shape = tuple(images.test_images.shape[1:])
    if shape != spec.shape:
        raise FormatError(
            f"{raw}: images of {list(shape)}, {spec.display}'s are {list(spec.shape)}"
        )
    return images
