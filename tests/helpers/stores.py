"""A private MLflow store, and the ways tests reach into the runs they make there (always
through the store's API, as users do)."""

import tempfile
from functools import cache
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline import checkpoints, runfiles
from pipeline.store import DB_FILE, Store
from pipeline.tracking import Run


@cache
def empty_store() -> Path:
    """A new embedded store, created once per test process: the folder's database, migrated."""
    folder = Path(tempfile.mkdtemp(prefix="template-mlruns-"))
    Store.at(folder).client()
    return folder / DB_FILE


def client(store: Path | str) -> MlflowClient:
    return Store.at(store).client()


def checkpoint(store: Path | str, run_id: str, index: int) -> checkpoints.LoadedCheckpoint:
    """The (newest) checkpoint of a run after task ``index``, loaded."""
    r = Run.get(Store.at(store), run_id)
    file = checkpoints.latest_checkpoints(r)[index]
    with runfiles.scratch_dir() as tmp:
        return checkpoints.fetch_checkpoint(r, file, tmp)


def artifacts(store: Path | str, run_id: str, dst: Path) -> Path:
    """Every artifact of a run, downloaded into ``dst``; the folder."""
    return Path(client(store).download_artifacts(run_id, "", str(dst)))
