"""CIFAR-10 (Krizhevsky 2009): 32x32 colour, 10 classes, 50,000 + 10,000. The archive's MD5 as
torchvision's ``CIFAR10`` lists it; the normalisation of Mammoth's ``seq-cifar10``."""

from pipeline.catalogue.spec import DatasetSpec, Format, register_dataset

register_dataset(
    DatasetSpec(
        name="cifar10",
        display="CIFAR-10",
        folder="CIFAR10",
        md5={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        format=Format.cifar,
        shape=(3, 32, 32),
        classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2615),
        urls={"cifar-10-python.tar.gz": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"},
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        variant="labels",
        source="Mammoth (aimagelab/mammoth), datasets/seq_cifar10.py",
    )
)
