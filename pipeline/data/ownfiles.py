"""The user's own data as a task: an image folder, or arrays in ``.npz``/``.npy`` files.

An image folder is laid out as torchvision's ``ImageFolder`` reads it: one subfolder per class
(the class of a subfolder is its position among the sorted names), either directly under the
task's ``path`` or under its ``train/`` and ``test/`` subfolders. torchvision finds the classes
and files (:func:`torchvision.datasets.folder.make_dataset`, its list of image extensions);
the images are decoded here into one uint8 tensor, as every task is held.

Arrays: an ``.npz`` with ``images`` (uint8, N x H x W or N x H x W x C, C of 1 or 3) and
``labels`` (integers), optionally ``test_images`` and ``test_labels``, and optionally
``classes`` (the class names: labels must index them); or an ``.npy`` of images with the
``.npy`` of its labels named by the task's ``labels``.

A folder or file without its own test split gives up ``test_fraction`` of its samples as one,
chosen by ``split_seed``. Each problem is one line naming the file: no class or a single one,
an image that does not decode, images of mixed sizes with no resize rule
(``data.image_size``), a label outside the classes.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from pipeline.data.formats import FormatError, Images, decode_image

#: The PIL mode an image is decoded in, by the channels a task asks for.
MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class Peek:
    """What a task of the user's own data holds, learnt without decoding it all.

    Attributes:
        shape: (channels, height, width) of its first image.
        classes: the number of its classes.
    """

    shape: tuple[int, int, int]
    classes: int


def _class_files(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The sorted class names under ``folder`` and each image file with its class.

    Raises:
        FormatError: no class folder, a single class, or no image file.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder")
    try:
        classes, index = find_classes(str(folder))
        files = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise FormatError(f"{folder}: {e} (one subfolder per class)") from None
    if len(classes) < 2:
        raise FormatError(
            f"{folder} holds {len(classes)} class folder ({', '.join(classes)}): a task needs two "
            "or more classes, one subfolder each"
        )
    return classes, files


def _splits_of(folder: Path) -> dict[str, Path]:
    """``{"train": ..., "test": ...}`` when the folder has both; else ``{"all": folder}``."""
    train, test = folder / "train", folder / "test"
    if train.is_dir() and test.is_dir():
        return {"train": train, "test": test}
    return {"all": folder}


def peek_folder(folder: Path) -> Peek:
    """The first image's shape (grey images have one channel, any other mode three) and the
    number of classes of an image folder."""
    folder = _splits_of(folder).get("train", folder)
    classes, files = _class_files(folder)
    first = Path(files[0][0])
    image = decode_image(first.read_bytes(), "RGB", str(first))
    from PIL import Image

    with Image.open(first) as opened:
        channels = 1 if opened.mode in ("L", "1", "I;16", "I") else 3
    return Peek((channels, *image.shape[:2]), len(classes))


def _decode(
    files: list[tuple[str, int]], mode: str, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every file in ``mode``, resized to ``size`` (height, width) when given.

    Raises:
        FormatError: a file does not decode, or its size differs from the first's and no
            ``size`` is given.
    """
    from PIL import Image

    images: list[np.ndarray] = []
    for path, _ in files:
        pixels = decode_image(Path(path).read_bytes(), mode, path)
        if size is not None and pixels.shape[:2] != size:
            resized = Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(resized)
        if images and pixels.shape != images[0].shape:
            raise FormatError(
                f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, {files[0][0]} is "
                f"{images[0].shape[1]}x{images[0].shape[0]}: set data.image_size=[height,width] "
                "to resize them"
            )
        images.append(pixels)
    array = np.stack(images)
    array = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(array), np.array([label for _, label in files], dtype=np.int64)


class OwnData(NamedTuple):
    """The user's files read: their images (the test split empty when they have none of their
    own: the caller carves one) and their number of classes."""

    images: Images
    classes: int


def _no_test(images: Tensor, labels: Tensor) -> Images:
    """All of a source's samples as training ones, its test split empty."""
    return Images(images, labels, images[:0], labels[:0])


def read_folder(folder: Path, channels: int, size: tuple[int, int] | None) -> OwnData:
    """An image folder's images in ``channels`` channels; the test split is empty when the
    folder has none of its own (no ``train/`` and ``test/`` subfolders).

    Raises:
        FormatError: see the module docstring.
    """
    mode = MODES[channels]
    parts = _splits_of(folder)
    if "all" in parts:
        classes, files = _class_files(folder)
        images, labels = _decode(files, mode, size)
        return OwnData(_no_test(torch.from_numpy(images), torch.from_numpy(labels)), len(classes))
    train_classes, train_files = _class_files(parts["train"])
    test_classes, test_files = _class_files(parts["test"])
    if test_classes != train_classes:
        raise FormatError(
            f"{parts['test']} has the classes {test_classes}, {parts['train']} {train_classes}: "
            "the two splits need the same class folders"
        )
    split = Images(
        *map(torch.from_numpy, _decode(train_files, mode, size)),
        *map(torch.from_numpy, _decode(test_files, mode, size)),
    )
    return OwnData(split, len(train_classes))


def _load_arrays(path: Path, labels: Path | None) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            if labels is None:
                raise FormatError(f"{path}: an .npy of images needs its labels (data.tasks.labels)")
            return {"images": np.load(path, allow_pickle=False), "labels": np.load(labels)}
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FormatError(f"{path} is not a readable numpy file ({e})") from None


def _checked(
    images: np.ndarray, labels: np.ndarray, classes: int, where: str
) -> tuple[Tensor, Tensor]:
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise FormatError(
            f"{where}: images must be uint8 of N x H x W or N x H x W x C, not "
            f"{images.dtype} of {list(images.shape)}"
        )
    if images.ndim == 4 and images.shape[3] not in (1, 3):
        raise FormatError(f"{where}: {images.shape[3]} channels; images have 1 or 3")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.kind not in "iu":
        raise FormatError(f"{where}: labels must be {images.shape[0]} integers, one per image")
    outside = labels[(labels < 0) | (labels >= classes)]
    if outside.size:
        raise FormatError(
            f"{where}: label {int(outside[0])} is outside the classes 0..{classes - 1}"
        )
    chw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(chw)), torch.from_numpy(labels.astype(np.int64))


def _class_count(arrays: dict[str, np.ndarray]) -> int:
    if "classes" in arrays:
        return len(arrays["classes"])
    labels = [arrays[k] for k in ("labels", "test_labels") if k in arrays and arrays[k].size]
    return int(max(int(y.max()) for y in labels)) + 1 if labels else 0


def read_arrays(path: Path, labels: Path | None) -> OwnData:
    """The arrays of an ``.npz`` (or an ``.npy`` and its labels), as :func:`read_folder`.

    Raises:
        FormatError: see the module docstring.
    """
    arrays = _load_arrays(path, labels)
    if "images" not in arrays or "labels" not in arrays:
        raise FormatError(f"{path} needs arrays named images and labels, has {sorted(arrays)}")
    classes = _class_count(arrays)
    if classes < 2:
        raise FormatError(f"{path}: {classes} class; a task needs two or more")
    train = _checked(arrays["images"], arrays["labels"], classes, str(path))
    if "test_images" not in arrays:
        return OwnData(_no_test(*train), classes)
    test = _checked(
        arrays["test_images"], arrays.get("test_labels", np.zeros(0)), classes, f"{path} (test)"
    )
    if test[0].shape[1:] != train[0].shape[1:]:
        shapes = [list(x[0].shape[1:]) for x in (test, train)]
        raise FormatError(f"{path}: test images of {shapes[0]}, training images of {shapes[1]}")
    return OwnData(Images(*train, *test), classes)


def peek_arrays(path: Path, labels: Path | None) -> Peek:
    """The shape of the images and the number of classes of an ``.npz`` or ``.npy``."""
    arrays = _load_arrays(path, labels)
    images = arrays.get("images")
    if images is None or images.ndim not in (3, 4):
        raise FormatError(f"{path} needs an array of images named images (N x H x W [x C])")
    channels = 1 if images.ndim == 3 else int(images.shape[3])
    return Peek((channels, int(images.shape[1]), int(images.shape[2])), _class_count(arrays))
