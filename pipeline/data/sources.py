"""The source contract of :mod:`pipeline.data.provision` and the sources that need no registry.

A source writes what it can of the IDX files a :class:`Request` names into its staging
directory, or raises :class:`SourceUnavailable` to say why it could not; the orchestration in
:mod:`pipeline.data.provision` tries the sources in order and verifies and installs what they
deliver. This module holds that contract, the file helpers the sources share (MD5, IDX writing,
unpacking) and three sources: ``present`` (``.gz`` files next to the missing ones),
``torchvision`` (its own download) and ``from_dir`` (a directory the user names). The
``registry`` source (PyPI wheel, Debian package) is in :mod:`pipeline.data.registry`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import socket
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.catalogue import DatasetSpec
from pipeline.disk import room_for

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


def unpack(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``, decompressing it first if its name ends in ``.gz`` and the
    wanted file's does not (a ``.tar.gz`` a dataset consists of is copied as it is).

    Raises:
        DiskFull: ``dst``'s disk is full (not an ``OSError``: the callers take those for a
            damaged archive and try the next copy).
    """
    with room_for(dst.parent, f"unpacking {src.name}"):
        if src.name.endswith(".gz") and not dst.name.endswith(".gz"):  # not a wanted archive
            with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        else:
            shutil.copyfile(src, dst)


# What reading a damaged or truncated archive can raise.
UNPACK_ERRORS = (OSError, EOFError, zlib.error)


def one_line(text: str, limit: int = 400) -> str:
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
        name: what :func:`~pipeline.data.provision.provision` reports on success (and the
            error message names).
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
                unpack(gz, req.out / name)
                continue
            except UNPACK_ERRORS as e:
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
    """Source ``torchvision``: torchvision's own download (all mirrors it knows), into scratch;
    the files a dataset lists URLs of with its ``download_url`` (MD5-checked)."""
    if req.spec.urls:
        _download_urls(req)
        return
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
        raise SourceUnavailable(f"download failed: {one_line(str(e))}") from e
    finally:
        socket.setdefaulttimeout(old_timeout)
    downloaded = Path(dataset.raw_folder)
    for name in req.needed:
        if (downloaded / name).is_file():
            os.replace(downloaded / name, req.out / name)


def _download_urls(req: Request) -> None:
    """Download each needed file from its URL into ``req.out`` (torchvision checks its MD5)."""
    from torchvision.datasets.utils import download_url

    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    chatter = io.StringIO()  # torchvision's progress bar
    try:
        for name in req.needed:
            url = req.spec.urls[name]
            try:
                with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                    download_url(url, str(req.scratch), name, req.spec.md5[name])
            except Exception as e:  # urllib's URLError, socket errors, torchvision's checks
                raise SourceUnavailable(f"download of {url} failed: {one_line(str(e))}") from e
            os.replace(req.scratch / name, req.out / name)
    finally:
        socket.setdefaulttimeout(old_timeout)


def _name_variants(name: str) -> tuple[str, ...]:
    """File names a user's copy of ``name`` may have: plain or gzipped, ``-idx`` or ``.idx``."""
    # Some archives (and browsers) turn "train-images-idx3-ubyte" into "train-images.idx3-ubyte".
    stems = dict.fromkeys([name, name.replace("-idx", ".idx")])
    if name.endswith((".gz", ".zip", ".mat")):  # an archive: only its own name
        return tuple(stems)
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
                unpack(path, dst)
            except UNPACK_ERRORS:
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
