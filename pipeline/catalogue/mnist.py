"""MNIST (LeCun et al. 1998): handwritten digits, 28x28 grey, 60,000 + 10,000."""

from pipeline.catalogue.spec import DatasetSpec, Format, register_dataset

register_dataset(
    DatasetSpec(
        name="mnist",
        display="MNIST",
        folder="MNIST",
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        format=Format.idx,
        shape=(1, 28, 28),
        classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        # yann.lecun.com often refuses downloads nowadays; torchvision's own mirror does not.
        homepage="https://ossci-datasets.s3.amazonaws.com/mnist/ (or http://yann.lecun.com/exdb/mnist/)",
        source="the statistics of the PyTorch MNIST example",
    )
)
