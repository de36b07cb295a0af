"""What the ids the commands take are, said once for their ``--help`` (and the errors of
:mod:`pipeline.erasure` point there), and the file of ids ``make erase IDS_FILE=`` reads.
Imports only the errors: the parser stays cheap."""

from pipeline.errors import ConfigError

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


def read_ids(text: str, task: str) -> dict[str, list[int]]:
    """The ids of an ``IDS_FILE``: one sample per line, ``<id>`` (of ``task``) or
    ``<task>,<id>``; blank lines and ``#`` comments are skipped.

    Raises:
        ConfigError: a line that is neither, or a bare id with no ``task``.
    """
    found: dict[str, list[int]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, value = line.rpartition(",")
        name = name.strip() or task
        if not name:
            raise ConfigError(
                f"ids file line {n}: '{line}' names no task (give --task or 'task,id')"
            )
        try:
            found.setdefault(name, []).append(int(value))
        except ValueError:
            raise ConfigError(
                f"ids file line {n}: '{line}' is not '<id>' or '<task>,<id>'"
            ) from None
    return found
