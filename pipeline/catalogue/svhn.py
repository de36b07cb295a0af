"""SVHN (Netzer et al. 2011), cropped digits: 32x32 colour, 10 classes, 73,257 + 26,032 (the
``extra`` set is not used). Files and MD5s as torchvision's ``SVHN`` lists them."""

from pipeline.catalogue.spec import DatasetSpec, Format, register_dataset

_URL = "http://ufldl.stanford.edu/housenumbers/"
_MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}

register_dataset(
    DatasetSpec(
        name="svhn",
        display="SVHN",
        folder="SVHN",
        md5=_MD5,
        format=Format.svhn,
        shape=(3, 32, 32),
        classes=10,
        urls={name: _URL + name for name in _MD5},
        homepage="http://ufldl.stanford.edu/housenumbers/",
        source="normalisation computed on the training split when loaded",
    )
)
