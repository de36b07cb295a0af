"""TinyImageNet-200 (Le and Yang 2015, Stanford CS231n): 64x64 colour, 200 classes, 100,000
training images; its labelled ``val`` folder (10,000) is the test split, as in every continual
learning paper that uses it. The zip's MD5 as Avalanche and Mammoth check it; the normalisation
of Mammoth's ``seq-tinyimg``."""

from pipeline.catalogue.spec import DatasetSpec, Format, register_dataset

register_dataset(
    DatasetSpec(
        name="tinyimagenet",
        display="TinyImageNet",
        folder="TinyImageNet",
        md5={"tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de"},
        format=Format.tinyimagenet,
        shape=(3, 64, 64),
        classes=200,
        mean=(0.4802, 0.4480, 0.3975),
        std=(0.2770, 0.2691, 0.2821),
        urls={"tiny-imagenet-200.zip": "http://cs231n.stanford.edu/tiny-imagenet-200.zip"},
        homepage="http://cs231n.stanford.edu/",
        source="Mammoth (aimagelab/mammoth), datasets/seq_tinyimagenet.py",
    )
)
