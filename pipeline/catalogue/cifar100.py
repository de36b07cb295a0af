"""CIFAR-100 (Krizhevsky 2009): 32x32 colour, 50,000 + 10,000, with its 100 fine labels
(``cifar100``) or its 20 coarse superclasses (``cifar100_coarse``), from one archive (MD5 as
torchvision's ``CIFAR100`` lists it); the normalisation of Mammoth's ``seq-cifar100``."""

from pipeline.catalogue.spec import DatasetSpec, Format, register_dataset

_FILE = "cifar-100-python.tar.gz"

for name, display, classes, labels in (
    ("cifar100", "CIFAR-100", 100, "fine_labels"),
    ("cifar100_coarse", "CIFAR-100 (superclasses)", 20, "coarse_labels"),
):
    register_dataset(
        DatasetSpec(
            name=name,
            display=display,
            folder="CIFAR100",
            md5={_FILE: "eb9058c3a382ffc7106e4002c42a8d85"},
            format=Format.cifar,
            shape=(3, 32, 32),
            classes=classes,
            mean=(0.5071, 0.4867, 0.4408),
            std=(0.2675, 0.2565, 0.2761),
            urls={_FILE: f"https://www.cs.toronto.edu/~kriz/{_FILE}"},
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            variant=labels,
            source="Mammoth (aimagelab/mammoth), datasets/seq_cifar100.py",
        )
    )
