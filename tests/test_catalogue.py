"""The dataset catalogue: each dataset provisioned by `make data` from a folder holding its files
in the canonical format, verified, and read back exactly; bad files refused in one line.

No CIFAR, SVHN, KMNIST, EMNIST or TinyImageNet file can be downloaded here: each test builds a
small archive in the dataset's exact format (tests/helpers/archives.py) and registers the
catalogue's own entry with the archive's checksums in place of the real ones, so that the same
code path (sources, MD5 check, reader) runs as on the real files.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import archives
from helpers.archives import Archive

from pipeline.catalogue import dataset, datasets
from pipeline.catalogue import spec as catalogue
from pipeline.config.paths import REPO_ROOT
from pipeline.data import command
from pipeline.data.formats import read_dataset
from pipeline.data.provision import verify

#: Per dataset of the catalogue: the builder of its test archive, and what the reader must
#: return from it (train images, train labels, test images, test labels).
Expected = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _plain(a: Archive) -> Expected:
    return (*a.train, *a.test)


def _coarse(a: Archive) -> Expected:
    return a.train[0], a.extra["coarse_train"], a.test[0], a.extra["coarse_test"]


def _letters(a: Archive) -> Expected:
    x = a.extra
    return (
        x["letters_train_images"],
        x["letters_train_labels"],
        x["letters_test_images"],
        x["letters_test_labels"],
    )


CASES: dict[str, tuple[Callable[[Path], Archive], Callable[[Archive], Expected]]] = {
    "cifar10": (archives.cifar10, _plain),
    "cifar100": (archives.cifar100, _plain),
    "cifar100_coarse": (archives.cifar100, _coarse),
    "svhn": (archives.svhn, _plain),
    "kmnist": (archives.kmnist, _plain),
    "emnist_balanced": (archives.emnist, _plain),
    "emnist_letters": (archives.emnist, _letters),
    "tinyimagenet": (archives.tinyimagenet, _plain),
}


def register_test_archive(name: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Archive:
    """Build ``name``'s test archive in ``folder`` and register the catalogue's entry with its
    checksums (the only change from the real entry)."""
    build, _ = CASES[name]
    archive = build(folder)
    spec = dataclasses.replace(dataset(name), md5={n: archive.md5[n] for n in dataset(name).md5})
    monkeypatch.setitem(catalogue.REGISTRY, name, spec)
    return archive


def test_every_dataset_of_the_catalogue_has_a_canonical_test_archive():
    assert set(datasets()) == set(CASES) | {"mnist", "fashion_mnist"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_make_data_provisions_from_the_folder_named_and_the_reader_decodes_it_exactly(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    supplied = tmp_path / "downloads" / "somewhere"
    archive = register_test_archive(name, supplied, monkeypatch)
    root = tmp_path / "data"
    argv = ["--root", str(root), "--dataset", name, "--from", str(tmp_path / "downloads")]
    assert command.main([*argv, "--no-download", "--no-registry"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert "verified (MD5)" in line
    spec = dataset(name)
    assert verify(spec, root) == spec.md5
    got = read_dataset(spec, root)
    for have, want in zip(got, CASES[name][1](archive), strict=True):
        assert np.array_equal(have.numpy(), want)
    assert tuple(got.train_images.shape[1:]) == spec.shape
    test_only = read_dataset(spec, root, test_only=True)
    assert len(test_only.train_labels) == 0 and np.array_equal(
        test_only.test_labels, got.test_labels
    )


def test_a_wrong_checksum_is_refused_with_what_to_download_and_its_md5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real entry's MD5 stands: a file of the right name but other content is not taken."""
    archives.cifar10(tmp_path / "downloads")  # the right name, not the real archive
    root = tmp_path / "data"
    argv = ["--root", str(root), "--dataset", "cifar10", "--from", str(tmp_path / "downloads")]
    assert command.main([*argv, "--no-download", "--no-registry"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not provision CIFAR-10")
    assert "no copy of cifar-10-python.tar.gz" in err and "matches its MD5" in err
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert f"{url} (MD5 c58f30108f718f92721af3b95e74349a)" in err
    assert "make data DATASETS=cifar10 FROM=DIR" in err
    assert not (dataset("cifar10").raw_dir(root) / "cifar-10-python.tar.gz").exists()


def test_a_truncated_archive_that_passes_its_check_fails_in_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalogue entry whose MD5 is that of a damaged file (a user's own entry made from a
    broken download): the reader names the file in one line rather than a traceback."""
    from pipeline.data.formats import FormatError

    archive = archives.cifar10(tmp_path / "build")
    raw = dataset("cifar10").raw_dir(tmp_path / "data")
    raw.mkdir(parents=True)
    data = archive.files["cifar-10-python.tar.gz"].read_bytes()
    (raw / "cifar-10-python.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=rf"^{raw}: cannot read CIFAR-10's files") as info:
        read_dataset(dataset("cifar10"), tmp_path / "data")
    assert "\n" not in str(info.value)


def test_a_new_dataset_is_one_file_in_the_catalogue(tmp_path: Path) -> None:
    """A copy of the package with one file added to pipeline/catalogue/ (a dataset in CIFAR's
    format, its checksum its own): `make data` provisions it and a run trains on it, with no
    other file changed."""
    shutil.copytree(
        REPO_ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    archive = archives.cifar10(tmp_path / "downloads", n_per_batch=20, n_test=20)
    (tmp_path / "pipeline" / "catalogue" / "toy.py").write_text(
        '"""A toy dataset in CIFAR-10\'s format."""\n\n'
        "from pipeline.catalogue.spec import DatasetSpec, Format, register_dataset\n\n"
        "register_dataset(\n"
        "    DatasetSpec(\n"
        '        name="toy",\n'
        '        display="Toy",\n'
        '        folder="Toy",\n'
        f'        md5={{"cifar-10-python.tar.gz": "{archive.md5["cifar-10-python.tar.gz"]}"}},\n'
        "        format=Format.cifar,\n"
        "        shape=(3, 32, 32),\n"
        "        classes=10,\n"
        '        variant="labels",\n'
        "    )\n"
        ")\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def pipeline(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "pipeline", *args]
        return subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    data = pipeline(
        "data",
        "--root",
        "data",
        "--dataset",
        "toy",
        "--from",
        "downloads",
        "--no-download",
        "--no-registry",
    )
    assert data.returncode == 0, data.stderr
    run = pipeline(
        "run",
        "split_cifar10",
        "data.dataset=toy",
        "model=cnn",
        "trainer.epochs=1",
        "trainer.max_batches=1",
        "trainer.progress_bar=false",
        "paths.data=data",
        "paths.store=mlruns",
        "trainer.threads=1",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "toy_01 -> toy_23 -> toy_45 -> toy_67 -> toy_89" in run.stdout, run.stdout[-2000:]
