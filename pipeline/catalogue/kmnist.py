"""Kuzushiji-MNIST (Clanuwat et al. 2018): cursive Japanese characters, 28x28 grey, 10 classes,
60,000 + 10,000. Files and MD5s as torchvision's ``KMNIST`` lists them."""

from pipeline.catalogue.spec import DatasetSpec, Format, register_dataset

_URL = "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"
_MD5 = {
    "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
    "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
    "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
    "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
}

register_dataset(
    DatasetSpec(
        name="kmnist",
        display="KMNIST",
        folder="KMNIST",
        md5=_MD5,
        format=Format.idx,
        shape=(1, 28, 28),
        classes=10,
        urls={name: _URL + name for name in _MD5},
        homepage="https://github.com/rois-codh/kmnist",
        source="normalisation computed on the training split when loaded",
    )
)
