"""What a dataset of the catalogue declares, and the registry its file adds it to.

A dataset is one file in this package that calls :func:`register_dataset` with a
:class:`DatasetSpec`: its files and their MD5s, where they can be downloaded, the format its
files are in (one of :class:`Format`, read by :mod:`pipeline.data.formats`), its image shape,
its classes and its normalisation. Nothing else names a dataset: provisioning
(``make data DATASETS=<name>``), the config's choices and the tasks read it from here. This
module imports nothing of the pipeline, so the config layer can check a dataset's name and
classes before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Format(StrEnum):
    """The file formats :mod:`pipeline.data.formats` reads.

    Attributes:
        idx: IDX files (MNIST's format): four files, in the order train images, train labels,
            test images, test labels; plain or gzipped.
        emnist: EMNIST's ``gzip.zip`` of gzipped IDX files, one set per split (``variant``),
            images stored transposed.
        cifar: CIFAR's ``tar.gz`` of pickled batches (``variant``: the labels key, ``labels``,
            ``fine_labels`` or ``coarse_labels``).
        svhn: SVHN's MATLAB files ``train_32x32.mat`` and ``test_32x32.mat`` (label 10 is 0).
        tinyimagenet: TinyImageNet's zip (``train/<wnid>/images``; ``val`` is the test split).
    """

    idx = "idx"
    emnist = "emnist"
    cifar = "cifar"
    svhn = "svhn"
    tinyimagenet = "tinyimagenet"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its name, its files and how to check, fetch and read them.

    Attributes:
        name: config name (``mnist``, ``cifar100``).
        display: human-readable name.
        folder: the folder under the data root (``<root>/<folder>/raw`` holds the files).
            Datasets that share their files (CIFAR-100's fine and coarse labels) share it.
        md5: expected MD5 of each file, keyed by file name; the keys are also the list of
            files the dataset consists of, in the order its format reads them.
        format: how the files are read.
        shape: (channels, height, width) of one image.
        classes: number of classes (labels are ``0..classes-1``).
        mean: per-channel mean of the training images scaled to [0, 1]; empty: computed from
            the training split when it is loaded.
        std: per-channel standard deviation, likewise.
        urls: where each file can be downloaded (torchvision's downloader, MD5-checked); empty
            for the datasets torchvision downloads with its own dataset class.
        homepage: where a user can download the files by hand (named in error messages).
        variant: what the format reads of the files (a CIFAR labels key, an EMNIST split).
        source: where the normalisation statistics and the protocol's numbers come from.
    """

    name: str
    display: str
    folder: str
    md5: dict[str, str]
    format: Format
    shape: tuple[int, int, int]
    classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    urls: dict[str, str] = field(default_factory=dict)
    homepage: str = ""
    variant: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        channels = self.shape[0]
        if self.mean and (len(self.mean) != channels or len(self.std) != channels):
            raise ValueError(f"{self.name}: mean and std need one value per channel")
        if not self.md5:
            raise ValueError(f"{self.name}: a dataset needs at least one file")

    def raw_dir(self, root: Path) -> Path:
        """The folder this dataset's files are kept in: ``<root>/<folder>/raw``."""
        return Path(root) / self.folder / "raw"


#: Every registered dataset by name (filled by the files of this package when it is read).
REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the catalogue (called once, by its file).

    Raises:
        ValueError: a dataset of that name is registered already.
    """
    if spec.name in REGISTRY and REGISTRY[spec.name] != spec:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec
