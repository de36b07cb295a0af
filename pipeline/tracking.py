"""MLflow tracking: the store in ``mlruns/``, one run per task sequence, and a Lightning logger
that writes each task's training curves into that run.

The store is a SQLite database (``mlruns/mlflow.db``) plus an artifact root
(``mlruns/artifacts``): MLflow 3.13+ refuses the old plain-folder store. Every experiment is
created with an explicit artifact location inside the store, so ``make ui`` (which serves exactly
this store) finds every artifact.

Runs are driven through ``MlflowClient`` with explicit run ids, never the fluent API's global
"active run", so that a sweep or a comparison can open a parent run and nest these runs under it
(``parent_run_id``), from threads or processes.
"""

from __future__ import annotations

import fcntl
import functools
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path

from pipeline.config import REPO_ROOT

LOCK_FILE = ".lock"  # in the store folder: see store_lock
_OPENED: set[Path] = set()  # stores whose database this process has created or checked


class _Shield:
    """Store writes in progress in this process, and an exit deferred until they are done."""

    depth = 0
    pending: int | None = None


@contextmanager
def shielded() -> Iterator[None]:
    """A store write that a termination signal must not cut in two.

    SIGTERM raises SystemExit wherever Python is (``pipeline.cli``); raised inside SQLAlchemy's
    commit, it left SQLite locked by the interrupted connection, so the run could not then be
    marked KILLED. Inside this block :func:`defer_exit` holds the exit until the write is done;
    :class:`ShieldedClient` wraps each write in it.
    """
    _Shield.depth += 1
    try:
        yield
    finally:
        _Shield.depth -= 1
    if not _Shield.depth and _Shield.pending is not None:
        code, _Shield.pending = _Shield.pending, None
        raise SystemExit(code)


def defer_exit(code: int) -> bool:
    """Hold ``SystemExit(code)`` until the store write in progress ends; False when none is."""
    if not _Shield.depth:
        return False
    _Shield.pending = code
    return True


class ShieldedClient(MlflowClient):
    """An ``MlflowClient`` whose writes run :func:`shielded`: every client of :func:`client_for`,
    so no store write (runs, sweeps, erasure) is cut in two by SIGTERM."""


def _shield(name: str) -> Callable[..., Any]:
    write = getattr(MlflowClient, name)

    @functools.wraps(write)
    def shielded_write(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        with shielded():
            return write(self, *args, **kwargs)

    return shielded_write


for _name in (
    "create_experiment",
    "create_run",
    "update_run",
    "set_terminated",
    "set_tag",
    "log_batch",
    "log_artifact",
    "log_text",
    "log_figure",
    "log_dict",
    "delete_run",
):
    setattr(ShieldedClient, _name, _shield(_name))


MAX_BATCH = 1000  # MLflow's log_batch accepts at most 1000 metrics per call
TRACKED_PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "mlflow",
    "omegaconf",
    "numpy",
)


def tracking_uri(store: str | Path) -> str:
    """SQLite URI of the store's database (the store folder is created if needed)."""
    path = Path(store).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def artifact_root(store: str | Path) -> Path:
    """Folder under which every experiment of the store keeps its artifacts."""
    return Path(store).resolve() / "artifacts"


@contextmanager
def store_lock(store: str | Path) -> Iterator[None]:
    """Exclusive lock on the store between processes (held while creating shared things)."""
    path = Path(store).resolve()
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def client_for(store: str | Path) -> ShieldedClient:
    """A client of the store; the first one in a process creates or upgrades its database.

    MLflow creates and migrates the SQLite database on first use without a lock, so two processes
    that open a new store at once (two ``make run``s after a clone) break each other's
    migration. The first use of each store in a process is done under :func:`store_lock`.
    """
    path = Path(store).resolve()
    if path in _OPENED:
        return ShieldedClient(tracking_uri=tracking_uri(path))
    with store_lock(path):
        client = ShieldedClient(tracking_uri=tracking_uri(path))  # creates or migrates the database
        client.search_experiments(max_results=1)
    _OPENED.add(path)
    return client


def ensure_experiment(client: MlflowClient, name: str, store: str | Path) -> str:
    """Id of the experiment ``name``, created with its artifacts inside the store."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    with store_lock(store):  # two processes may create it at once; one of them does
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        location = (artifact_root(store) / name).as_uri()
        return str(client.create_experiment(name, artifact_location=location))


def local_path(artifact_uri: str) -> Path:
    """Local folder of a run's artifacts (``file://`` URI; the store is on this machine)."""
    return Path(local_file_uri_to_path(artifact_uri))


def ui_url(experiment_id: str, run_id: str | None = None, port: int = 5000) -> str:
    """Link to the runs table (MLflow 3.17 opens experiments on a GenAI page otherwise)."""
    url = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs"
    return f"{url}/{run_id}" if run_id else url


def git_commit() -> str:
    """Commit of the working tree (with ``-dirty`` when it has uncommitted changes)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class Run:
    """One MLflow run, written through an explicit client and run id.

    Use :meth:`start` as a context manager: the run ends FINISHED when the block completes,
    FAILED (with the error as the ``error`` tag) when it raises, KILLED on Ctrl-C.
    """

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    @classmethod
    @contextmanager
    def start(
        cls,
        store: str | Path,
        experiment: str,
        run_name: str = "",
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[Run]:
        client = client_for(store)
        exp_id = ensure_experiment(client, experiment, store)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        info = client.create_run(exp_id, run_name=run_name or None, tags=all_tags).info
        with cls(client, info.run_id, exp_id)._managed() as run:
            yield run

    @classmethod
    @contextmanager
    def reopen(cls, store: str | Path, run_id: str) -> Iterator[Run]:
        """An existing run, RUNNING again until the block ends (as in :meth:`start`).

        Raises:
            LookupError: no run ``run_id`` in ``store``.
        """
        client = client_for(store)
        try:
            info = client.get_run(run_id).info
        except MlflowException:
            raise LookupError(f"no MLflow run '{run_id}' in {store}") from None
        client.update_run(run_id, status="RUNNING")
        with cls(client, run_id, info.experiment_id)._managed() as run:
            yield run

    @contextmanager
    def _managed(self) -> Iterator[Run]:
        try:
            yield self
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C/SIGTERM into SystemExit
            self._end_anyway("KILLED", "interrupted")
            raise
        except BaseException as e:
            self._end_anyway("FAILED", f"{type(e).__name__}: {e}")
            raise
        self.end("FINISHED")

    def _end_anyway(self, status: str, error: str) -> None:
        """End the run on the way out of an error, which a store error must not replace."""
        try:
            self.end(status, error)
        except Exception as e:
            print(f"warning: run {self.run_id} could not be marked {status}: {e}", file=sys.stderr)

    def end(self, status: str, error: str = "") -> None:
        with shielded():  # both or neither
            if error:
                self.client.set_tag(self.run_id, "error", error[:5000])
            self.client.set_terminated(self.run_id, status=status)

    @property
    def status(self) -> str:
        return str(self.client.get_run(self.run_id).info.status)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        ms = [Metric(k, float(v), _now_ms(), step) for k, v in metrics.items()]
        for i in range(0, len(ms), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=ms[i : i + MAX_BATCH])

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_json(self, obj: Any, name: str) -> None:
        self.log_text(json.dumps(obj, indent=2), name)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)


def _now_ms() -> int:
    return int(time.time() * 1000)


class TaskLogger(Logger):
    """Lightning logger that writes one task's training curves into an existing MLflow run.

    Metric names get a task prefix (``t0/train/loss``) because each task's fresh Trainer starts
    its ``global_step`` at 0 again. Metrics are buffered and written in batches; ``finalize``
    only flushes: the runner, not Lightning, decides when the run ends (Lightning's
    MLFlowLogger would mark the run FINISHED after the first task's ``fit``).
    """

    def __init__(self, run: Run, task_index: int) -> None:
        super().__init__()
        self.run = run
        self.prefix = f"t{task_index}/"
        self._buffer: list[Metric] = []

    @property
    def name(self) -> str:
        return "mlflow-task"

    @property
    def version(self) -> str:
        return self.run.run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are logged once per run by the runner, not per task."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = _now_ms()
        for k, v in metrics.items():
            if k != "epoch":
                self._buffer.append(Metric(self.prefix + k, float(v), now, step or 0))
        if len(self._buffer) >= MAX_BATCH:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            self.run.client.log_batch(self.run.run_id, metrics=chunk)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder for files that are logged as artifacts and then dropped."""
    with tempfile.TemporaryDirectory(prefix="pipeline-") as d:
        yield Path(d)
