"""The test archives of :mod:`helpers.archives` against independent readers: torchvision's own
dataset classes (their hard-coded MD5s replaced by the archive's), ``pickle`` as the CIFAR site
reads it, ``scipy.io.loadmat``, and the ``tarfile``/``zipfile``/``gzip`` modules."""

import gzip
import pickle
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import scipy.io
import torch
from helpers.archives import (
    CIFAR10_CLASSES,
    CIFAR100_COARSE,
    CIFAR100_COARSE_OF_FINE,
    CIFAR100_FINE,
    Archive,
    cifar10,
    cifar100,
    emnist,
    image_folder,
    kmnist,
    md5_of,
    npz_arrays,
    svhn,
    tinyimagenet,
)
from PIL import Image
from torchvision import datasets
from torchvision.datasets.utils import extract_archive

#: CIFAR-100's coarse label of each fine label, as public projects hard-code it.
COARSE_OF_FINE = [
    *[4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11],
    *[6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5],
    *[5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17],
    *[10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13],
    *[16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13],
]


def same(a: Any, b: Any) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    assert np.array_equal(a, b)


def md5s(folder: Path) -> list[list[str]]:
    """torchvision's ``[[file name, md5], ...]`` of a folder's files, sorted."""
    return [[p.name, md5_of(p)] for p in sorted(folder.iterdir()) if p.is_file()]


def test_cifar10_reads_as_torchvision_and_the_cifar_site_read_it(tmp_path: Path) -> None:
    a = cifar10(tmp_path / "dl", seed=1, n_per_batch=3, n_test=4)
    (name,) = a.files
    assert name == "cifar-10-python.tar.gz"
    with tarfile.open(a.files[name]) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "root", filter="data")
    base = "cifar-10-batches-py"
    assert sorted(names) == sorted(
        [base]
        + [f"{base}/{n}" for n in ("batches.meta", "readme.html", "test_batch")]
        + [f"{base}/data_batch_{i}" for i in range(1, 6)]
    )
    folder = tmp_path / "root" / base
    sums = dict(md5s(folder))

    class Cifar10(datasets.CIFAR10):
        train_list: ClassVar = [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)]
        test_list: ClassVar = [["test_batch", sums["test_batch"]]]
        meta: ClassVar = {
            "filename": "batches.meta",
            "key": "label_names",
            "md5": sums["batches.meta"],
        }

    for split, train in ((a.train, True), (a.test, False)):
        ds = Cifar10(tmp_path / "root", train=train)
        same(ds.data, split[0].transpose(0, 2, 3, 1))  # torchvision's data is N H W C
        same(np.array(ds.targets, dtype=np.int64), split[1])
        assert ds.classes == list(CIFAR10_CLASSES)

    # the CIFAR site's reader: bytes keys, the values Python 2 strings were (bytes)
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"batch_label"] == b"training batch 2 of 5"
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (3, 3072)
    same(batch[b"data"][0, :1024].reshape(32, 32), a.train[0][3, 0])  # the red plane first
    assert all(isinstance(n, bytes) and n.endswith(b".png") for n in batch[b"filenames"])
    with open(folder / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    assert meta == {
        "num_cases_per_batch": 3,
        "label_names": list(CIFAR10_CLASSES),
        "num_vis": 3072,
    }
    # as the real files: Python 3's default (ASCII) decoding fails on the pixel bytes
    with open(folder / "test_batch", "rb") as f, pytest.raises(UnicodeDecodeError):
        pickle.load(f)


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    a = cifar100(tmp_path / "dl", seed=2, n_train=7, n_test=5)
    extract_archive(str(a.files["cifar-100-python.tar.gz"]), str(tmp_path / "root"))
    folder = tmp_path / "root" / "cifar-100-python"
    assert sorted(p.name for p in folder.iterdir()) == ["file.txt~", "meta", "test", "train"]
    sums = dict(md5s(folder))

    class Cifar100(datasets.CIFAR100):
        train_list: ClassVar = [["train", sums["train"]]]
        test_list: ClassVar = [["test", sums["test"]]]
        meta: ClassVar = {"filename": "meta", "key": "fine_label_names", "md5": sums["meta"]}

    for split, coarse, name, train in (
        (a.train, a.extra["coarse_train"], "train", True),
        (a.test, a.extra["coarse_test"], "test", False),
    ):
        ds = Cifar100(tmp_path / "root", train=train)
        same(ds.data, split[0].transpose(0, 2, 3, 1))
        same(np.array(ds.targets, dtype=np.int64), split[1])
        assert ds.classes == CIFAR100_FINE
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        assert set(entry) == {"filenames", "batch_label", "fine_labels", "coarse_labels", "data"}
        same(np.array(entry["coarse_labels"], dtype=np.int64), coarse)
        same(CIFAR100_COARSE_OF_FINE[split[1]], coarse)
    with open(folder / "meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert meta[b"coarse_label_names"] == [c.encode() for c in CIFAR100_COARSE]
    # the mapping as many public projects spell it (github.com/ryanchankh/cifar100coarse)
    same(CIFAR100_COARSE_OF_FINE, np.array(COARSE_OF_FINE, dtype=np.int64))
    assert CIFAR100_COARSE[CIFAR100_COARSE_OF_FINE[CIFAR100_FINE.index("whale")]] == (
        "aquatic_mammals"
    )


def test_svhn_reads_as_torchvision(tmp_path: Path) -> None:
    a = svhn(tmp_path, seed=3, n_train=5, n_test=4)
    assert set(a.files) == {"train_32x32.mat", "test_32x32.mat"}
    mat = scipy.io.loadmat(a.files["train_32x32.mat"])
    assert mat["X"].shape == (32, 32, 3, 5) and mat["X"].dtype == np.uint8
    assert mat["y"].shape == (5, 1) and mat["y"].dtype == np.uint8
    assert mat["y"][0, 0] == 10 and set(mat["y"].ravel()) <= set(range(1, 11))
    assert mat["__header__"].startswith(b"MATLAB 5.0 MAT-file")

    class Svhn(datasets.SVHN):
        split_list: ClassVar = {
            s: ["", f"{s}_32x32.mat", a.md5[f"{s}_32x32.mat"]] for s in ("train", "test")
        }

    for split, name in ((a.train, "train"), (a.test, "test")):
        ds = Svhn(str(tmp_path), split=name)
        same(ds.data, split[0])
        same(ds.labels, split[1])
    assert a.train[1][0] == 0


def test_kmnist_reads_as_torchvision(tmp_path: Path) -> None:
    a = kmnist(tmp_path / "dl", seed=4, n_train=5, n_test=3)
    assert sorted(a.files) == sorted(
        f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
    )
    raw = tmp_path / "root" / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in a.files.values():
        extract_archive(str(path), str(raw))
    head = (raw / "train-images-idx3-ubyte").read_bytes()[:16]
    assert head == bytes.fromhex("00000803 00000005 0000001c 0000001c")
    for split, train in ((a.train, True), (a.test, False)):
        ds = datasets.KMNIST(tmp_path / "root", train=train)
        same(ds.data.numpy()[:, None], split[0])
        same(ds.targets.numpy(), split[1])
    with gzip.open(a.files["t10k-labels-idx1-ubyte.gz"]) as f:
        assert f.read()[:8] == bytes.fromhex("00000801 00000003")


def test_emnist_is_stored_transposed(tmp_path: Path) -> None:
    a = emnist(tmp_path / "dl", seed=5, n_train=4, n_test=3)
    with zipfile.ZipFile(a.files["gzip.zip"]) as zf:
        assert sorted(n for n in zf.namelist() if not n.endswith("/")) == sorted(
            f"gzip/emnist-{s}-{p}-{k}-ubyte.gz"
            for s in ("balanced", "letters")
            for p in ("train", "test")
            for k in ("images-idx3", "labels-idx1")
        )
    # what torchvision's EMNIST.download does after the download
    raw = tmp_path / "root" / "EMNIST" / "raw"
    extract_archive(str(a.files["gzip.zip"]), str(raw))
    for gz in (raw / "gzip").iterdir():
        extract_archive(str(gz), str(raw))
    for train, part in ((True, "train"), (False, "test")):
        balanced = datasets.EMNIST(tmp_path / "root", split="balanced", train=train)
        letters = datasets.EMNIST(tmp_path / "root", split="letters", train=train)
        images, labels = a.train if train else a.test
        # torchvision returns the images as stored: transposed
        same(balanced.data.transpose(1, 2).numpy()[:, None], images)
        assert not torch.equal(balanced.data, torch.from_numpy(images[:, 0]))
        same(balanced.targets.numpy(), labels)
        same(letters.data.transpose(1, 2).numpy()[:, None], a.extra[f"letters_{part}_images"])
        same(letters.targets.numpy() - 1, a.extra[f"letters_{part}_labels"])
        assert set(letters.targets.tolist()) <= set(range(1, 27))


def test_tinyimagenet_layout_and_imagefolder(tmp_path: Path) -> None:
    a = tinyimagenet(tmp_path / "dl", seed=6, n_classes=3, n_train_per_class=11, n_val_per_class=2)
    extract_archive(str(a.files["tiny-imagenet-200.zip"]), str(tmp_path))
    root = tmp_path / "tiny-imagenet-200"
    listed = (root / "wnids.txt").read_text().split()
    wnids = sorted(listed)
    assert listed != wnids and wnids == a.extra["wnids"].tolist()
    words = dict(line.split("\t") for line in (root / "words.txt").read_text().splitlines())
    assert set(wnids) < set(words)
    assert sorted(p.name for p in root.iterdir()) == [
        "test",
        "train",
        "val",
        "wnids.txt",
        "words.txt",
    ]
    assert sorted(p.name for p in (root / "train" / wnids[0]).iterdir()) == [
        "images",
        f"{wnids[0]}_boxes.txt",
    ]
    assert len(list((root / "test" / "images").glob("test_*.JPEG"))) == 2

    ds = datasets.ImageFolder(str(root / "train"))
    assert ds.classes == wnids
    got = np.stack([np.asarray(ds[i][0]).transpose(2, 0, 1) for i in range(len(ds))])
    same(got, a.train[0])
    same(np.array(ds.targets, dtype=np.int64), a.train[1])
    assert [Path(p).name for p, _ in ds.samples] == a.extra["train_files"].tolist()
    assert a.extra["train_files"][:3].tolist() == [f"{wnids[0]}_{i}.JPEG" for i in (0, 1, 10)]
    with Image.open(root / "train" / wnids[0] / "images" / f"{wnids[0]}_0.JPEG") as im:
        assert im.mode == "L" and im.size == (64, 64)

    rows = [
        line.split("\t") for line in (root / "val" / "val_annotations.txt").read_text().splitlines()
    ]
    assert all(len(r) == 6 for r in rows)
    assert (
        [r[0] for r in rows]
        == a.extra["test_files"].tolist()
        == [f"val_{i}.JPEG" for i in range(6)]
    )
    val = []
    for r in rows:
        with Image.open(root / "val" / "images" / r[0]) as im:
            val.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
    same(np.stack(val), a.test[0])
    same(np.array([wnids.index(r[1]) for r in rows], dtype=np.int64), a.test[1])
    assert np.bincount(a.test[1]).tolist() == [2, 2, 2]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_image_folder(tmp_path: Path, mode: str) -> None:
    images, labels = image_folder(tmp_path, ["dog", "cat"], per_class=11, size=(4, 5), mode=mode)
    bands = 3 if mode == "RGB" else 1
    assert images.shape == (22, bands, 4, 5) and labels.dtype == np.int64
    ds = datasets.ImageFolder(str(tmp_path), loader=lambda p: np.asarray(Image.open(p)))
    assert ds.classes == ["cat", "dog"]
    got = np.stack([ds[i][0] for i in range(len(ds))])
    same(got.transpose(0, 3, 1, 2) if mode == "RGB" else got[:, None], images)
    same(np.array(ds.targets, dtype=np.int64), labels)
    assert Path(ds.samples[2][0]).name == "10.png"


def test_npz_arrays(tmp_path: Path) -> None:
    for channels, shape in ((None, (6, 4, 5)), (3, (6, 4, 5, 3))):
        images, labels = npz_arrays(
            tmp_path / f"{channels}.npz", n=6, size=(4, 5), channels=channels
        )
        with np.load(tmp_path / f"{channels}.npz") as f:
            assert set(f.files) == {"images", "labels"}
            same(f["images"], images)
            same(f["labels"], labels)
        assert images.shape == shape


BUILDERS: dict[str, Callable[..., Archive]] = {
    "cifar10": cifar10,
    "cifar100": cifar100,
    "svhn": svhn,
    "kmnist": kmnist,
    "emnist": emnist,
    "tinyimagenet": tinyimagenet,
}


@pytest.mark.parametrize("name", BUILDERS)
def test_md5_depends_on_the_seed_only(tmp_path: Path, name: str) -> None:
    build = BUILDERS[name]
    first, again, other = (build(tmp_path / d, seed=s) for d, s in (("a", 7), ("b", 7), ("c", 8)))
    assert first.md5 == again.md5
    assert all(first.md5[n] != other.md5[n] for n in first.md5)
    assert first.md5 == {n: md5_of(p) for n, p in first.files.items()}
    same(first.train[0], again.train[0])
    assert first.train[0].dtype == np.uint8 and first.train[1].dtype == np.int64
    assert first.train[0].ndim == 4
