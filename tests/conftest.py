"""Shared fixtures: the real experiment configs, shrunk to seconds on synthetic tasks, and the
ways tests reach into the runs they make (always through the store's API, as users do)."""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import runfiles
from pipeline.config import ExperimentConfig
from pipeline.experiment import compose
from pipeline.results import SequenceResult
from pipeline.runner import run_sequence
from pipeline.tracking import DB_FILE, Run, Store

# Small and fixed: the tests compare numbers across runs in one process.
torch.set_num_threads(1)


@cache
def empty_store() -> Path:
    """A new embedded store, created once per test process: the folder's database, migrated."""
    folder = Path(tempfile.mkdtemp(prefix="template-mlruns-"))
    Store.at(folder).client()
    return folder / DB_FILE


def small_synthetic(store: Path | str, *overrides: str) -> ExperimentConfig:
    """``conf/experiment/synthetic_forgetting.yaml`` with a private MLflow store (and reports
    beside it), no bars.

    A local store that does not exist yet starts as a copy of :func:`empty_store`: MLflow
    creates a database by running every schema migration (2.7 s here), which most tests would
    otherwise pay once each. The tests of store creation itself go through the CLI."""
    reports = Path(store).parent / "reports" if "://" not in str(store) else "reports"
    cfg = compose(
        "synthetic_forgetting",
        [
            f"paths.store={store}",
            f"paths.reports={reports}",
            "trainer.progress_bar=false",
            "trainer.threads=1",
            *overrides,
        ],
    )
    folder = Path(store)
    if "://" not in str(store) and not folder.exists():
        folder.mkdir(parents=True)
        shutil.copyfile(empty_store(), folder / DB_FILE)
    return cfg


def run(cfg: ExperimentConfig, parent: str | None = None, **kwargs: Any) -> SequenceResult:
    """``run_sequence`` in a new run of the config's store and experiment."""
    return run_sequence(cfg, Run.of(cfg, parent), **kwargs)


def client(store: Path | str) -> MlflowClient:
    return Store.at(store).client()


def checkpoint(store: Path | str, run_id: str, index: int) -> runfiles.LoadedCheckpoint:
    """The (newest) checkpoint of a run after task ``index``, loaded."""
    r = Run.get(Store.at(store), run_id)
    file = runfiles.latest_checkpoints(r)[index]
    with runfiles.scratch_dir() as tmp:
        return runfiles.fetch_checkpoint(r, file, tmp)


def artifacts(store: Path | str, run_id: str, dst: Path) -> Path:
    """Every artifact of a run, downloaded into ``dst``; the folder."""
    return Path(client(store).download_artifacts(run_id, "", str(dst)))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "mlruns"


class SmallDisk:
    """A file system of its own (a tmpfs) that a test fills and empties at will."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def fill(self, leave: int = 0) -> None:
        """Take all its space but ``leave`` bytes (more than is free already: nothing)."""
        self.empty()
        free = shutil.disk_usage(self.path).free - leave
        with open(self.filler, "wb") as f:
            while free > 0:
                chunk = min(free, 1 << 20)
                try:
                    f.write(b"\0" * chunk)
                    f.flush()
                except OSError:
                    break
                free -= chunk

    def empty(self) -> None:
        """Free what :meth:`fill` took."""
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 32 MB tmpfs mounted at ``tmp_path/disk`` for the test (a full disk, for real: the
    kernel's ENOSPC). Mounting needs root (CI and these machines run as root); elsewhere the
    tests that need it are skipped and say why."""
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a small disk to fill) needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
