"""The datasets the pipeline knows: their names, torchvision's file layout, the MD5 of every
file, and the normalisation statistics (one place, read by provisioning and by the tasks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The IDX file names torchvision expects in ``<root>/<folder>/raw/`` (same for both datasets).
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What one dataset is called, where torchvision looks for it and how to check it.

    Attributes:
        name: config name (``"mnist"``, ``"fashion_mnist"``).
        display: human-readable name.
        folder: torchvision's folder under the root (its dataset class name).
        md5: expected MD5 of each uncompressed IDX file, keyed by file name. The keys are also
            the list of files the dataset consists of.
        mean: mean pixel value of the training images (scaled to [0, 1]), for normalisation.
        std: standard deviation of the same.
        homepage: where a user can download the files by hand (named in error messages).
    """

    name: str
    display: str
    folder: str
    md5: dict[str, str]
    mean: float
    std: float
    homepage: str = ""

    def raw_dir(self, root: Path) -> Path:
        """Return the directory torchvision reads this dataset's IDX files from.

        Args:
            root: the data root (what is passed to the torchvision dataset class).

        Returns:
            ``<root>/<folder>/raw``.
        """
        return Path(root) / self.folder / "raw"


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        display="MNIST",
        folder="MNIST",
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mean=0.1307,
        std=0.3081,
        # yann.lecun.com often refuses downloads nowadays; torchvision's own mirror does not.
        homepage="https://ossci-datasets.s3.amazonaws.com/mnist/ (or http://yann.lecun.com/exdb/mnist/)",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        display="Fashion-MNIST",
        folder="FashionMNIST",
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mean=0.2860,
        std=0.3530,
        homepage="https://github.com/zalandoresearch/fashion-mnist#get-the-data",
    ),
}
