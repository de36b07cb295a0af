"""Shared fixtures: the real experiment configs, shrunk to seconds on synthetic tasks, and the
ways tests reach into the runs they make (always through the store's API, as users do)."""

import shutil
import tempfile
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
