"""EMNIST (Cohen et al. 2017), two of its splits: ``balanced`` (47 classes of digits and
letters, 112,800 + 18,800) and ``letters`` (26 classes, 124,800 + 20,800), 28x28 grey, from the
one archive ``gzip.zip`` (MD5 as torchvision's ``EMNIST`` lists it)."""

from pipeline.catalogue.spec import DatasetSpec, Format, register_dataset

_MD5 = {"gzip.zip": "58c8d27c78d21e728a6bc7b3cc06412e"}
_URLS = {"gzip.zip": "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"}
_HOME = "https://www.nist.gov/itl/products-and-services/emnist-dataset"

for split, display, classes in (
    ("balanced", "EMNIST-Balanced", 47),
    ("letters", "EMNIST-Letters", 26),
):
    register_dataset(
        DatasetSpec(
            name=f"emnist_{split}",
            display=display,
            folder="EMNIST",
            md5=_MD5,
            format=Format.emnist,
            shape=(1, 28, 28),
            classes=classes,
            urls=_URLS,
            homepage=_HOME,
            variant=split,
            source="normalisation computed on the training split when loaded",
        )
    )
