"""Small datasets in the exact on-disk formats of the real ones, for tests that cannot download.

Each builder writes what the dataset's own site serves (same file names, inner paths, pickle
keys and types, ``.mat`` variables, IDX headers, folder layout), only with a few random images,
and returns an :class:`Archive`: the files written, their MD5s, and the arrays a correct reader
must decode from them. Every archive is a pure function of its seed (fixed member times, gzip
``mtime=0``, a fixed MAT-file header), so its MD5 is stable across calls and machines.

- :func:`cifar10`, :func:`cifar100`: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``,
  the Python 2 pickles inside written opcode by opcode as Python 2's cPickle wrote them;
- :func:`svhn`: ``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB v5, compressed);
- :func:`kmnist`: the four gzipped IDX files;
- :func:`emnist`: ``gzip.zip`` with the ``balanced`` and ``letters`` splits (images stored
  transposed, as in the real files);
- :func:`tinyimagenet`: ``tiny-imagenet-200.zip`` (JPEGs, one of them greyscale);
- :func:`image_folder` and :func:`npz_arrays`: a user's own data, as an ImageFolder tree of PNGs
  or an ``.npz``.

Decoded images are always ``uint8`` arrays ``N x C x H x W``, labels ``int64``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import numpy as np
import scipy.io
from numpy.typing import NDArray
from PIL import Image

Images: TypeAlias = NDArray[np.uint8]
Labels: TypeAlias = NDArray[np.int64]
Seed: TypeAlias = int | np.random.Generator

#: The time stamp of every tar and zip member (2009-06-11, about when CIFAR-10 was packed).
MTIME = 1244732414
_ZIP_TIME = (2015, 2, 9, 12, 0, 0)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: CIFAR-100's superclasses and the 5 classes of each, with the names of its ``meta`` file.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

#: ``fine_label_names`` of CIFAR-100's ``meta``: alphabetical, the fine label is the index.
CIFAR100_FINE = sorted(f for fine in CIFAR100_SUPERCLASSES.values() for f in fine)

#: ``coarse_label_names`` of CIFAR-100's ``meta``: alphabetical too.
CIFAR100_COARSE = sorted(CIFAR100_SUPERCLASSES)

#: The coarse label of each fine label (``coarse_labels[i] == CIFAR100_COARSE_OF_FINE[
#: fine_labels[i]]`` in the real files).
CIFAR100_COARSE_OF_FINE = np.array(
    [
        CIFAR100_COARSE.index(next(c for c, f in CIFAR100_SUPERCLASSES.items() if name in f))
        for name in CIFAR100_FINE
    ],
    dtype=np.int64,
)

#: Some of TinyImageNet's real classes (wnid, words), used before made-up ones.
TINY_WNIDS = (
    ("n01443537", "goldfish, Carassius auratus"),
    ("n01629819", "European fire salamander, Salamandra salamandra"),
    ("n01641577", "bullfrog, Rana catesbeiana"),
    ("n01644900", "tailed frog, bell toad, ribbed toad, tailed toad, Ascaphus trui"),
    ("n01698640", "American alligator, Alligator mississipiensis"),
    ("n01742172", "boa constrictor, Constrictor constrictor"),
    ("n01768244", "trilobite"),
    ("n01770393", "scorpion"),
    ("n01774384", "black widow, Latrodectus mactans"),
    ("n01774750", "tarantula"),
    ("n02124075", "Egyptian cat"),
    ("n04067472", "reel"),
    ("n04540053", "volleyball"),
    ("n04099969", "rocking chair, rocker"),
    ("n07749582", "lemon"),
)


@dataclass(frozen=True, eq=False)
class Archive:
    """What a builder wrote, and what a correct reader must decode from it.

    Attributes:
        files: each file written, by name (``"cifar-10-python.tar.gz"``), to its path.
        md5: each file's hex MD5, by name.
        train: the training split, ``(images N x C x H x W uint8, labels int64)``.
        test: the test split (TinyImageNet: its labelled ``val`` folder), likewise.
        extra: more arrays, per builder (see each one's docstring).
    """

    files: dict[str, Path]
    md5: dict[str, str]
    train: tuple[Images, Labels]
    test: tuple[Images, Labels]
    extra: dict[str, NDArray[np.generic]] = field(default_factory=dict)


def md5_of(path: Path) -> str:
    """The hex MD5 of a file."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _archive(
    files: Iterable[Path],
    train: tuple[Images, Labels],
    test: tuple[Images, Labels],
    extra: dict[str, NDArray[np.generic]] | None = None,
) -> Archive:
    by_name = {p.name: p for p in files}
    return Archive(
        files=by_name,
        md5={name: md5_of(p) for name, p in by_name.items()},
        train=train,
        test=test,
        extra=extra or {},
    )


# --- containers, deterministic ---------------------------------------------------------------


def _gzip(data: bytes) -> bytes:
    """``data`` gzipped with no name and ``mtime=0`` in the header: the same bytes every time."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def _dirs_of(names: Iterable[str]) -> list[str]:
    """Every folder above the given member names, parents first (``"a/"``, ``"a/b/"``...)."""
    dirs: dict[str, None] = {}
    for name in names:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs["/".join(parts[:i]) + "/"] = None
    return list(dirs)


def _write_tar_gz(path: Path, members: Mapping[str, bytes]) -> Path:
    """A ``.tar.gz`` (GNU tar) of the folders above ``members`` and the members, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in _dirs_of(members):
            info = tarfile.TarInfo(d.rstrip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            tar.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_gzip(buf.getvalue()))
    return path


def _write_zip(path: Path, members: Mapping[str, bytes]) -> Path:
    """A deflated ``.zip`` with a directory entry for every folder, then the members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for d in _dirs_of(members):
            info = zipfile.ZipInfo(d, date_time=_ZIP_TIME)
            info.external_attr = ((stat.S_IFDIR | 0o755) << 16) | 0x10
            zf.writestr(info, b"")
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
    return path


# --- Python 2 pickles (CIFAR) ----------------------------------------------------------------


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str``: SHORT_BINSTRING or BINSTRING (Python 3 loads it as ``str`` with
    ``encoding="latin1"``, as ``bytes`` with ``encoding="bytes"``)."""
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<i", len(b)) + b


def _py2_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _py2_tuple(items: Sequence[bytes]) -> bytes:
    if 1 <= len(items) <= 3:
        return b"".join(items) + b"\x85\x86\x87"[len(items) - 1 : len(items)]
    return b"(" + b"".join(items) + b"t"


def _py2_array(a: NDArray[np.uint8]) -> bytes:
    """A uint8 array as numpy 1.x under Python 2 pickled it (``numpy.core.multiarray``)."""
    if a.dtype != np.uint8:
        raise TypeError(f"only uint8 arrays, not {a.dtype}")
    dtype = (
        b"cnumpy\ndtype\n"
        + _py2_tuple([_py2_str(b"u1"), _py2_int(0), _py2_int(1)])
        + b"R"
        + _py2_tuple(
            [
                _py2_int(3),
                _py2_str(b"|"),
                b"N",
                b"N",
                b"N",
                _py2_int(-1),
                _py2_int(-1),
                _py2_int(0),
            ]
        )
        + b"b"
    )
    state = [
        _py2_int(1),
        _py2_tuple([_py2_int(n) for n in a.shape]),
        dtype,
        b"\x89",  # not Fortran-ordered
        _py2_str(np.ascontiguousarray(a).tobytes()),
    ]
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + _py2_tuple([b"cnumpy\nndarray\n", _py2_tuple([_py2_int(0)]), _py2_str(b"b")])
        + b"R"
        + _py2_tuple(state)
        + b"b"
    )


def _py2_value(v: object) -> bytes:
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, bool) or v is None:
        raise TypeError(f"no Python 2 pickling for {v!r} here")
    if isinstance(v, int):
        return _py2_int(v)
    if isinstance(v, np.ndarray):
        return _py2_array(v)
    if isinstance(v, list):
        return b"]" + (b"(" + b"".join(_py2_value(x) for x in v) + b"e" if v else b"")
    if isinstance(v, dict):
        items = b"".join(_py2_value(k) + _py2_value(x) for k, x in v.items())
        return b"}" + (b"(" + items + b"u" if v else b"")
    raise TypeError(f"no Python 2 pickling for {type(v).__name__}")


def py2_pickle(obj: Mapping[bytes, object]) -> bytes:
    """A dict pickled as Python 2's ``cPickle.dump(obj, f, 2)`` did: protocol 2, ``str`` keys
    and values as (SHORT_)BINSTRING, arrays reduced to ``numpy.core.multiarray._reconstruct``.

    Readable by ``pickle.load(f, encoding="latin1")`` (``str`` keys, torchvision's way) and by
    ``pickle.load(f, encoding="bytes")`` (``bytes`` keys, the CIFAR site's way), like the real
    files. Python 3's own pickler cannot write this: it writes ``bytes`` as
    ``_codecs.encode(...)`` (``bytes`` keys under both encodings) and arrays as
    ``numpy._core`` (unreadable by numpy 1.x)."""
    return b"\x80\x02" + _py2_value(obj) + b"."


# --- CIFAR -----------------------------------------------------------------------------------


def _cifar_rows(images: Images) -> Images:
    """``N x 3 x 32 x 32`` as CIFAR's ``data``: ``N x 3072``, the red plane, green, blue."""
    return np.ascontiguousarray(images.reshape(len(images), 3 * 32 * 32))


def _random_images(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> Images:
    return rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def cifar10(dest: Path, seed: Seed = 0, n_per_batch: int = 4, n_test: int = 6) -> Archive:
    """``dest/cifar-10-python.tar.gz``, as https://www.cs.toronto.edu/~kriz/ serves it.

    Inside: ``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5`` (``n_per_batch``
    images each), ``test_batch`` (``n_test``), ``batches.meta`` and ``readme.html``. Each batch
    is a Python 2 pickle (:func:`py2_pickle`) of ``{"data": uint8 N x 3072, "labels": [int],
    "batch_label": str, "filenames": [str]}``; ``batches.meta`` holds ``label_names``,
    ``num_cases_per_batch`` and ``num_vis``.

    Args:
        dest: the folder to write into (created).
        seed: a seed or a generator.
        n_per_batch: images in each of the 5 training batches.
        n_test: images in ``test_batch``.

    Returns:
        The archive; ``train`` is the 5 batches in order, ``test`` the test batch.
    """
    rng = _rng(seed)
    base = "cifar-10-batches-py"
    members: dict[str, bytes] = {}
    train_x, train_y = [], []

    def batch(n: int, label: bytes) -> tuple[bytes, Images, Labels]:
        images = _random_images(rng, n, 3, 32, 32)
        labels = rng.integers(0, 10, size=n).astype(np.int64)
        filenames = [
            f"{CIFAR10_CLASSES[y]}_s_{rng.integers(0, 10**6):06d}.png".encode() for y in labels
        ]
        d = {
            b"batch_label": label,
            b"labels": [int(y) for y in labels],
            b"data": _cifar_rows(images),
            b"filenames": filenames,
        }
        return py2_pickle(d), images, labels

    for i in range(1, 6):
        data, x, y = batch(n_per_batch, f"training batch {i} of 5".encode())
        members[f"{base}/data_batch_{i}"] = data
        train_x.append(x)
        train_y.append(y)
    test_data, test_x, test_y = batch(n_test, b"testing batch 1 of 1")
    members[f"{base}/test_batch"] = test_data
    members[f"{base}/batches.meta"] = py2_pickle(
        {
            b"num_cases_per_batch": n_per_batch,
            b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_vis": 3072,
        }
    )
    members[f"{base}/readme.html"] = (
        b'<meta HTTP-EQUIV="REFRESH" content="0; url=http://www.cs.toronto.edu/~kriz/cifar.html">'
    )
    path = _write_tar_gz(Path(dest) / "cifar-10-python.tar.gz", members)
    return _archive([path], (np.concatenate(train_x), np.concatenate(train_y)), (test_x, test_y))


def cifar100(dest: Path, seed: Seed = 0, n_train: int = 10, n_test: int = 6) -> Archive:
    """``dest/cifar-100-python.tar.gz``, as https://www.cs.toronto.edu/~kriz/ serves it.

    Inside: ``cifar-100-python/`` with ``train``, ``test``, ``meta`` and ``file.txt~``. ``train``
    and ``test`` are Python 2 pickles of ``{"filenames", "batch_label", "fine_labels",
    "coarse_labels", "data"}`` (``coarse_labels`` the real superclass of each fine label,
    :data:`CIFAR100_COARSE_OF_FINE`); ``meta`` holds ``fine_label_names`` and
    ``coarse_label_names``.

    Args:
        dest: the folder to write into (created).
        seed: a seed or a generator.
        n_train: images in ``train``.
        n_test: images in ``test``.

    Returns:
        The archive; labels are the fine labels (0..99). ``extra["coarse_train"]`` and
        ``extra["coarse_test"]`` are the coarse ones (0..19, int64).
    """
    rng = _rng(seed)
    base = "cifar-100-python"
    members: dict[str, bytes] = {}
    splits: list[tuple[Images, Labels]] = []
    coarse: list[Labels] = []
    for name, n, label in (
        ("train", n_train, b"training batch 1 of 1"),
        ("test", n_test, b"testing batch 1 of 1"),
    ):
        images = _random_images(rng, n, 3, 32, 32)
        fine = rng.integers(0, 100, size=n).astype(np.int64)
        coarse_labels = CIFAR100_COARSE_OF_FINE[fine]
        members[f"{base}/{name}"] = py2_pickle(
            {
                b"filenames": [
                    f"{CIFAR100_FINE[y]}_s_{rng.integers(0, 10**6):06d}.png".encode() for y in fine
                ],
                b"batch_label": label,
                b"fine_labels": [int(y) for y in fine],
                b"coarse_labels": [int(y) for y in coarse_labels],
                b"data": _cifar_rows(images),
            }
        )
        splits.append((images, fine))
        coarse.append(coarse_labels)
    members[f"{base}/meta"] = py2_pickle(
        {
            b"fine_label_names": [c.encode() for c in CIFAR100_FINE],
            b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE],
        }
    )
    members[f"{base}/file.txt~"] = b""
    path = _write_tar_gz(Path(dest) / "cifar-100-python.tar.gz", members)
    return _archive(
        [path], splits[0], splits[1], {"coarse_train": coarse[0], "coarse_test": coarse[1]}
    )


# --- SVHN ------------------------------------------------------------------------------------

#: The 116-byte text of a MAT-file header; scipy writes the current time there, we do not.
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970"


def _write_mat(path: Path, variables: dict[str, NDArray[np.generic]]) -> Path:
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, format="5", do_compression=True, oned_as="column")
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def svhn(dest: Path, seed: Seed = 0, n_train: int = 8, n_test: int = 6) -> Archive:
    """``dest/train_32x32.mat`` and ``dest/test_32x32.mat``, SVHN's cropped digits (format 2).

    Each is a MATLAB v5 file (compressed, as the real ones) with ``X`` uint8 ``32 x 32 x 3 x N``
    (height, width, channel, image) and ``y`` uint8 ``N x 1`` with labels 1..10, where 10 is
    the digit 0. Every split holds at least one 10 when it has 2 images or more.

    Args:
        dest: the folder to write into (created).
        seed: a seed or a generator.
        n_train: images in ``train_32x32.mat``.
        n_test: images in ``test_32x32.mat``.

    Returns:
        The archive: images ``X.transpose(3, 2, 0, 1)`` (``N x 3 x 32 x 32``), labels 0..9
        (10 read as 0), as torchvision's SVHN decodes them.
    """
    rng = _rng(seed)
    files, splits = [], []
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        images = _random_images(rng, n, 3, 32, 32)
        digits = rng.integers(0, 10, size=n).astype(np.int64)
        if n >= 2:
            digits[0] = 0  # stored as 10: the label readers must map
        stored = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        x = np.ascontiguousarray(images.transpose(2, 3, 1, 0))  # N C H W -> H W C N
        files.append(_write_mat(Path(dest) / name, {"X": x, "y": stored}))
        splits.append((images, digits))
    return _archive(files, splits[0], splits[1])


# --- MNIST-like: KMNIST, EMNIST --------------------------------------------------------------


def idx_images(images: NDArray[np.uint8]) -> bytes:
    """``N x H x W`` uint8 images as an (uncompressed) IDX file: magic 0x00000803, the three
    sizes as big-endian int32, the pixels row by row."""
    n, h, w = images.shape
    return struct.pack(">iiii", 0x803, n, h, w) + np.ascontiguousarray(images).tobytes()


def idx_labels(labels: NDArray[np.integer]) -> bytes:
    """Labels as an (uncompressed) IDX file: magic 0x00000801, N as big-endian int32, uint8s."""
    return struct.pack(">ii", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


def kmnist(dest: Path, seed: Seed = 0, n_train: int = 8, n_test: int = 6) -> Archive:
    """KMNIST's four gzipped IDX files in ``dest``: ``train-images-idx3-ubyte.gz``,
    ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``.

    Args:
        dest: the folder to write into (created).
        seed: a seed or a generator.
        n_train: training images.
        n_test: test images.

    Returns:
        The archive: images ``N x 1 x 28 x 28``, labels 0..9.
    """
    rng = _rng(seed)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files, splits = [], []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = _random_images(rng, n, 1, 28, 28)
        labels = rng.integers(0, 10, size=n).astype(np.int64)
        for kind, data in (
            ("images-idx3", idx_images(images[:, 0])),
            ("labels-idx1", idx_labels(labels)),
        ):
            path = dest / f"{prefix}-{kind}-ubyte.gz"
            path.write_bytes(_gzip(data))
            files.append(path)
        splits.append((images, labels))
    return _archive(files, splits[0], splits[1])


def emnist(dest: Path, seed: Seed = 0, n_train: int = 8, n_test: int = 6) -> Archive:
    """``dest/gzip.zip`` as NIST serves EMNIST, with two of its six splits.

    Inside: ``gzip/emnist-{balanced,letters}-{train,test}-{images-idx3,labels-idx1}-ubyte.gz``.
    The images are stored transposed (each file image is the upright one's transpose), as in the
    real files; ``balanced`` labels are stored 0..46, ``letters`` labels 1..26.

    Args:
        dest: the folder to write into (created).
        seed: a seed or a generator.
        n_train: training images of each split.
        n_test: test images of each split.

    Returns:
        The archive: ``train``/``test`` are the ``balanced`` split (upright images
        ``N x 1 x 28 x 28``, labels 0..46 as stored); ``extra`` holds the ``letters`` split as
        ``letters_train_images``, ``letters_train_labels``, ``letters_test_images``,
        ``letters_test_labels`` (upright, labels 0..25: the stored ones minus 1).
    """
    rng = _rng(seed)
    members: dict[str, bytes] = {}
    decoded: dict[tuple[str, str], tuple[Images, Labels]] = {}
    for split, low, high in (("balanced", 0, 47), ("letters", 1, 27)):
        for part, n in (("train", n_train), ("test", n_test)):
            upright = _random_images(rng, n, 1, 28, 28)
            stored = rng.integers(low, high, size=n).astype(np.int64)
            prefix = f"gzip/emnist-{split}-{part}"
            members[f"{prefix}-images-idx3-ubyte.gz"] = _gzip(
                idx_images(upright[:, 0].transpose(0, 2, 1))
            )
            members[f"{prefix}-labels-idx1-ubyte.gz"] = _gzip(idx_labels(stored))
            decoded[split, part] = (upright, stored - low)
    path = _write_zip(Path(dest) / "gzip.zip", members)
    extra: dict[str, NDArray[np.generic]] = {}
    for part in ("train", "test"):
        extra[f"letters_{part}_images"], extra[f"letters_{part}_labels"] = decoded["letters", part]
    return _archive([path], decoded["balanced", "train"], decoded["balanced", "test"], extra)


# --- TinyImageNet ----------------------------------------------------------------------------


def _jpeg(pixels: NDArray[np.uint8]) -> tuple[bytes, Images]:
    """``H x W x 3`` (RGB) or ``H x W`` (greyscale, mode L) pixels as a JPEG, and what PIL
    decodes back from it, converted to RGB, ``3 x H x W``."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=75)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        back = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    return buf.getvalue(), np.ascontiguousarray(back)


def _smooth(rng: np.random.Generator, size: int, channels: int) -> NDArray[np.uint8]:
    """A blocky random image (JPEG keeps it closer than noise), ``H x W [x C]``."""
    shape = (size // 8, size // 8) + ((channels,) if channels > 1 else ())
    small = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(8, axis=0).repeat(8, axis=1))


def tinyimagenet(
    dest: Path,
    seed: Seed = 0,
    n_classes: int = 3,
    n_train_per_class: int = 3,
    n_val_per_class: int = 2,
    n_test: int = 2,
) -> Archive:
    """``dest/tiny-imagenet-200.zip`` with the real layout, for ``n_classes`` classes.

    Inside ``tiny-imagenet-200/``: ``wnids.txt`` (one wnid a line, NOT sorted, as in the real
    file), ``words.txt`` (``wnid<TAB>words``, sorted by wnid, with more synsets than the
    classes, as the real one lists all of ImageNet's), ``train/<wnid>/images/<wnid>_<i>.JPEG``
    with ``train/<wnid>/<wnid>_boxes.txt``, ``val/images/val_<i>.JPEG`` (classes mixed) with
    ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1``), and
    ``test/images/test_<i>.JPEG`` (no labels). Images are 64x64 JPEGs; the first training image
    of the first class and ``val_0.JPEG`` are greyscale (mode L), as some real ones are.

    Args:
        dest: the folder to write into (created).
        seed: a seed or a generator.
        n_classes: the classes (wnids).
        n_train_per_class: training images of each class.
        n_val_per_class: validation images of each class.
        n_test: unlabelled test images.

    Returns:
        The archive; ``test`` is the labelled ``val`` folder. Images are what PIL decodes from
        the written JPEGs, converted to RGB (``N x 3 x 64 x 64``); a label is the wnid's
        position in ``sorted(wnids)``. ``train`` is in ImageFolder's order (classes sorted,
        then file names sorted as strings: ``_10`` before ``_2``), ``test`` in
        ``val_annotations.txt``'s order (``val_0``, ``val_1``...). ``extra["train_files"]``
        and ``extra["test_files"]`` are the images' file names in those orders,
        ``extra["wnids"]`` the sorted wnids.
    """
    rng = _rng(seed)
    known = list(TINY_WNIDS)
    chosen = known[:n_classes] + [
        (f"n9{i:07d}", f"made-up class {i}") for i in range(max(0, n_classes - len(known)))
    ]
    wnids = sorted(w for w, _ in chosen)
    root = "tiny-imagenet-200"
    members: dict[str, bytes] = {}
    listed = [wnids[i] for i in rng.permutation(len(wnids))]
    if len(listed) > 1 and listed == wnids:
        listed.reverse()
    members[f"{root}/wnids.txt"] = "".join(f"{w}\n" for w in listed).encode()
    words = dict(chosen) | {"n00001740": "entity", "n00001930": "physical entity"}
    members[f"{root}/words.txt"] = "".join(f"{w}\t{words[w]}\n" for w in sorted(words)).encode()

    def box() -> str:
        x0, y0 = rng.integers(0, 32, size=2)
        x1, y1 = rng.integers(32, 64, size=2)
        return f"{x0}\t{y0}\t{x1}\t{y1}"

    train: list[tuple[str, Images, int]] = []
    for label, wnid in enumerate(wnids):
        boxes = []
        for i in range(n_train_per_class):
            name = f"{wnid}_{i}.JPEG"
            grey = label == 0 and i == 0
            data, decoded = _jpeg(_smooth(rng, 64, 1 if grey else 3))
            members[f"{root}/train/{wnid}/images/{name}"] = data
            boxes.append(f"{name}\t{box()}\n")
            train.append((name, decoded, label))
        members[f"{root}/train/{wnid}/{wnid}_boxes.txt"] = "".join(boxes).encode()
    train.sort(key=lambda t: (t[2], t[0]))

    val_labels = np.repeat(np.arange(len(wnids)), n_val_per_class)[
        rng.permutation(len(wnids) * n_val_per_class)
    ]
    val: list[tuple[str, Images, int]] = []
    annotations = []
    for i, label in enumerate(val_labels):
        name = f"val_{i}.JPEG"
        data, decoded = _jpeg(_smooth(rng, 64, 1 if i == 0 else 3))
        members[f"{root}/val/images/{name}"] = data
        annotations.append(f"{name}\t{wnids[label]}\t{box()}\n")
        val.append((name, decoded, int(label)))
    members[f"{root}/val/val_annotations.txt"] = "".join(annotations).encode()
    for i in range(n_test):
        members[f"{root}/test/images/test_{i}.JPEG"] = _jpeg(_smooth(rng, 64, 3))[0]

    path = _write_zip(Path(dest) / "tiny-imagenet-200.zip", members)

    def arrays(items: list[tuple[str, Images, int]]) -> tuple[Images, Labels]:
        images = np.stack([x for _, x, _ in items]) if items else np.zeros((0, 3, 64, 64), np.uint8)
        return images, np.array([y for _, _, y in items], dtype=np.int64)

    return _archive(
        [path],
        arrays(train),
        arrays(val),
        {
            "train_files": np.array([n for n, _, _ in train], dtype=str),
            "test_files": np.array([n for n, _, _ in val], dtype=str),
            "wnids": np.array(wnids, dtype=str),
        },
    )


# --- a user's own data -----------------------------------------------------------------------


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


def image_folder(
    dest: Path,
    classes: Sequence[str] = ("cat", "dog"),
    per_class: int = 3,
    size: int | tuple[int, int] = 8,
    mode: str = "RGB",
    seed: Seed = 0,
) -> tuple[Images, Labels]:
    """An ImageFolder tree of PNGs: ``dest/<class>/<i>.png``, ``per_class`` of each class.

    Args:
        dest: the root folder (created).
        classes: the class folder names, in any order.
        per_class: images in each class folder.
        size: ``H`` (square) or ``(H, W)``.
        mode: the PIL mode of every image: ``"RGB"``, ``"L"`` or ``"RGBA"``.
        seed: a seed or a generator.

    Returns:
        The images as stored (PNG is lossless), ``N x C x H x W`` with C the mode's bands (1, 3
        or 4; torchvision's ImageFolder converts all to RGB), and labels (the index in
        ``sorted(classes)``), in ImageFolder's order: classes sorted, then file names sorted as
        strings (``10.png`` before ``2.png``).
    """
    rng = _rng(seed)
    bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    h, w = _hw(size)
    items: list[tuple[int, str, Images]] = []
    for label, name in enumerate(sorted(classes)):
        folder = Path(dest) / name
        folder.mkdir(parents=True, exist_ok=True)
        images = _random_images(rng, per_class, bands, h, w)
        for i, x in enumerate(images):
            pixels = x[0] if bands == 1 else x.transpose(1, 2, 0)
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{i}.png")
            items.append((label, f"{i}.png", x))
    items.sort(key=lambda t: (t[0], t[1]))
    if not items:
        return np.zeros((0, bands, h, w), np.uint8), np.zeros(0, np.int64)
    return np.stack([x for _, _, x in items]), np.array([y for y, _, _ in items], np.int64)


def npz_arrays(
    path: Path,
    n: int = 10,
    size: int | tuple[int, int] = 8,
    channels: int | None = None,
    n_classes: int = 3,
    seed: Seed = 0,
) -> tuple[NDArray[np.uint8], Labels]:
    """An ``.npz`` with ``images`` (uint8 ``N x H x W``, or ``N x H x W x C`` with ``channels``)
    and ``labels`` (int64, 0..n_classes-1).

    Args:
        path: the file to write (its folder is created).
        n: the number of images.
        size: ``H`` (square) or ``(H, W)``.
        channels: ``None`` for ``N x H x W``, else the trailing channel count.
        n_classes: labels are drawn from ``range(n_classes)``.
        seed: a seed or a generator.

    Returns:
        ``(images, labels)`` exactly as written (images in the file's layout, channels last).
    """
    rng = _rng(seed)
    h, w = _hw(size)
    shape = (n, h, w) if channels is None else (n, h, w, channels)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    labels = rng.integers(0, n_classes, size=n).astype(np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels)
    return images, labels
