"""What the ids the commands take are, said once for their ``--help`` (and the errors of
:mod:`pipeline.erasure` point there). Imports nothing: the parser stays cheap."""

RUN_ID = "MLflow run id, or its first 8+ characters (as printed)"  # pipeline.runids resolves it

ERASE_IDS = (
    "Sample ids: a sample's index in its dataset's training split (MNIST, Fashion-MNIST: "
    "0..59999, the order of torchvision's MNIST(root, train=True)[i]; CIFAR: the order of its "
    "batches; an image folder: sorted by class, then file name; synthetic: "
    "0..data.synthetic.n_train-1), the id every training batch carries. A task trains on the "
    "samples of its classes (Split MNIST's mnist_01: digits 0 and 1) less the validation split "
    "carved out of them (data.val_fraction): only those ids can be named. A strategy with a "
    "buffer (replay...) holds a few of them in each checkpoint: --list prints which; erasing "
    "one it does not hold removes nothing (the weights were still trained on it)."
)
