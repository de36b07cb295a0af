"""MLflow tracking: the store, one run per task sequence, and a Lightning logger that writes
each task's training curves into that run.

The store (:class:`Store`, from ``paths.store``) is one of:

- a local folder (the default, ``mlruns/``): the embedded store, an SQLite database
  (``mlflow.db``) plus an artifact root (``artifacts/``); MLflow 3.13+ refuses the old
  plain-folder store. Experiments are created with an explicit artifact location inside it, so
  ``make ui`` (which serves exactly this store) finds every artifact;
- ``sqlite:///<file>`` or ``postgresql://...``: a database, with artifacts in a folder beside an
  SQLite file, or in ``mlruns/artifacts`` of this machine for PostgreSQL;
- ``http(s)://host:port``: a tracking server (``make server``), which also stores the artifacts
  (``mlflow-artifacts:/`` URIs). Credentials come from MLflow's own environment variables.

Every artifact is read and written through MLflow's API (:class:`Run`), never as a local file,
so all four work alike. Runs are driven through ``MlflowClient`` with explicit run ids, never the
fluent API's global "active run", so that a sweep or a comparison can open a parent run and nest
these runs under it, from threads or processes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from typing_extensions import override

from pipeline.config import ExperimentConfig
from pipeline.disk import DiskFull, room_for
from pipeline.keys import has_accuracies
from pipeline.locks import file_lock, pg_lock
from pipeline.paths import DEFAULT_STORE, PathsConfig, redact, repo_path, uri_scheme
from pipeline.processes import process_id
from pipeline.provenance import default_run_name, source_name, ui_link
from pipeline.reach import (
    StoreError,
    first_line,
    probe_server,
    server_failed,
    server_trouble,
)
from pipeline.runids import resolve_run_id
from pipeline.server.ui_app import COLUMNS_TAG, LEGACY_COLUMNS_TAG
from pipeline.shield import ShieldedClient, shielded

DB_FILE = "mlflow.db"  # the embedded store's database, in the store folder
ARTIFACTS_DIR = "artifacts"  # the embedded store's artifact root, in the store folder
LOCK_FILE = ".lock"  # in the store folder: see Store.client
DESCRIPTION_TAG = "mlflow.note.content"  # what MLflow's UI shows as the description
OWNER_TAG = "pipeline.owner"  # host:pid:start of the process that writes a run (resume)
# MLflow draws a progress bar for every artifact it downloads, and prints a link each time a run
# ends on a server (to a page of its GenAI view): noise in our output and logs, where we print
# our own links. A user who wants them sets the variables.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
_OPENED: set[str] = set()  # stores this process has created, migrated or probed


MAX_BATCH = 1000  # MLflow's log_batch accepts at most 1000 metrics per call


@dataclass(frozen=True)
class Store:
    """Where MLflow runs are kept (see the module docstring).

    Attributes:
        uri: the tracking URI given to ``MlflowClient``.
        folder: the local folder of an embedded or SQLite store, else ``None``.
        artifact_root: where the experiments we create keep their artifacts; ``None`` for a
            tracking server, which decides (and serves them).
    """

    uri: str
    folder: Path | None
    artifact_root: Path | None

    @classmethod
    def of(cls, paths: PathsConfig) -> Store:
        """The store that ``paths.store`` (or ``$MLFLOW_TRACKING_URI``) names."""
        return cls.at(paths.store_uri())

    @classmethod
    def at(cls, value: str | Path) -> Store:
        """The store of a folder or tracking URI (the schemes ``PathsConfig.check`` accepts)."""
        value = str(value)
        scheme = uri_scheme(value)
        if not scheme:
            folder = repo_path(value)
            return cls(f"sqlite:///{folder / DB_FILE}", folder, folder / ARTIFACTS_DIR)
        if scheme == "sqlite":
            folder = Path(value.partition(":///")[2]).resolve().parent
            return cls(value, folder, folder / ARTIFACTS_DIR)
        if scheme == "postgresql":
            return cls(value, None, repo_path(DEFAULT_STORE) / ARTIFACTS_DIR)
        return cls(value.rstrip("/"), None, None)

    @property
    def server(self) -> bool:
        """Whether this is a tracking server (http/https)."""
        return uri_scheme(self.uri) in ("http", "https")

    @override
    def __str__(self) -> str:
        """What the user is shown: the folder of an embedded store, else the URI without its
        password."""
        if self.folder is not None and self.uri == f"sqlite:///{self.folder / DB_FILE}":
            return f"{self.folder}/"
        return redact(self.uri)

    def client(self, create: bool = True) -> ShieldedClient:
        """A client of the store; the first one in a process opens it (see :meth:`_open`).

        Args:
            create: create a local store that does not exist yet (``False``: commands that
                only read runs, which must not leave an empty store behind).

        Raises:
            StoreError: the store cannot be created, reached or written, or (``create=False``)
                a local store does not exist.
        """
        if self.uri not in _OPENED:
            if not create and self.folder is not None and not self.database.is_file():
                raise StoreError(f"no MLflow store at {self} ({self.database.name} is missing)")
            self._open()
            _OPENED.add(self.uri)
        return ShieldedClient(tracking_uri=self.uri, where=self.where)

    @property
    def where(self) -> str:
        """The store's place, as a full disk names it: a local folder, else the URI without its
        password (and, for PostgreSQL, the local folder its artifacts go to)."""
        if self.folder is not None:
            return str(self.folder)
        if self.artifact_root is not None:
            return f"{redact(self.uri)} or {self.artifact_root}"
        return redact(self.uri)

    @property
    def database(self) -> Path:
        """The SQLite file of a local store."""
        assert self.folder is not None, "only a local store has a database file"
        return Path(self.uri.partition(":///")[2])

    def _open(self) -> None:
        """Create or migrate a database store, or check that a server answers.

        MLflow creates and migrates a database on first use without a lock, so two processes
        that open a new store at once (two ``make run``s after a clone) break each other's
        migration: the first use is done under a lock (a file lock beside an SQLite file, an
        advisory lock in PostgreSQL).
        """
        if self.server:
            probe_server(self.uri)
            return
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema lines
        new_folder = self.folder is not None and not self.folder.exists()
        try:
            if self.folder is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                if not os.access(self.folder, os.W_OK):
                    raise StoreError(f"tracking store {self}: the folder is not writable")
                lock: AbstractContextManager[None] = file_lock(self.folder / LOCK_FILE)
            else:
                lock = pg_lock(self.uri, "pipeline:mlflow-schema")
            with lock:
                if self.folder is not None and not self.database.exists():
                    self._create_database()
                ShieldedClient(self.uri, self.where).search_experiments(max_results=1)
        except StoreError:
            raise
        except Exception as e:  # OSError, MlflowException, sqlalchemy's errors: all one line
            if new_folder and self.folder is not None:  # leave no half-made store behind
                shutil.rmtree(self.folder, ignore_errors=True)
            why = str(e) if isinstance(e, DiskFull) else first_line(e)
            raise StoreError(f"tracking store {self}: {why}") from None

    def _create_database(self) -> None:
        """Create and migrate a new SQLite database under a temporary name beside it, then
        rename it into place: a disk that fills during MLflow's migrations leaves no
        half-migrated database, which MLflow could not migrate again ("table
        _alembic_tmp_latest_metrics already exists")."""
        db = self.database
        # A name of its own per attempt: MLflow keeps an engine per URI for the process, whose
        # pooled connection would still see a failed attempt's deleted file.
        tmp = db.with_name(f".{db.name}.new-{uuid.uuid4().hex}")
        try:
            with room_for(db.parent, "a new MLflow database"):
                ShieldedClient(f"sqlite:///{tmp}", str(db.parent)).search_experiments(max_results=1)
                os.replace(tmp, db)
        finally:
            tmp.unlink(missing_ok=True)

    def experiment_id(self, name: str, description: str = "") -> str:
        """Id of the experiment ``name``, created (with its artifacts under
        :attr:`artifact_root`) when missing. Two processes may create it at once: the loser
        reads the winner's. ``description`` becomes the experiment's description (MLflow's
        note) unless it has one."""
        client = self.client()
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = (self.artifact_root / name).as_uri() if self.artifact_root else None
            try:
                exp_id = str(client.create_experiment(name, artifact_location=location))
            except MlflowException:
                if (exp := client.get_experiment_by_name(name)) is None:
                    raise
                exp_id = str(exp.experiment_id)
        else:
            exp_id = str(exp.experiment_id)
        if description and (exp is None or DESCRIPTION_TAG not in exp.tags):
            client.set_experiment_tag(exp_id, DESCRIPTION_TAG, description)
        return exp_id

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> Any:
        """Create a run with MLflow's context tags (user, source, git commit, as
        ``mlflow.start_run`` sets them) under ``tags``; its ``RunInfo``."""
        from mlflow.tracking.context.registry import resolve_tags

        source = source_name()
        context = resolve_tags({"mlflow.source.name": source} if source else {})
        info = self.client().create_run(
            experiment_id, run_name=run_name or None, tags=context | dict(tags)
        )
        return info.info

    def show_columns(self, experiment_id: str, columns: Sequence[str]) -> None:
        """Add ``columns`` (MLflow's column keys) to those the experiment's runs table shows
        by default (:mod:`pipeline.server.ui_app` seeds a browser's view from them)."""
        client = self.client()
        tags = client.get_experiment(experiment_id).tags
        shown = json.loads(tags.get(COLUMNS_TAG, "[]"))
        if missing := [c for c in columns if c not in shown]:
            client.set_experiment_tag(experiment_id, COLUMNS_TAG, json.dumps(shown + missing))
        if LEGACY_COLUMNS_TAG in tags:  # its columns name the metric keys of older versions
            client.delete_experiment_tag(experiment_id, LEGACY_COLUMNS_TAG)

    def ui_url(self, experiment_id: str, run_id: str | None = None, port: int = 5000) -> str:
        """Link to the runs table, or a run, in the model-training view (MLflow 3.17 opens
        experiments on its GenAI pages otherwise; see :mod:`pipeline.server.ui_app`): on the
        server itself, or on ``make ui`` for a store of this machine."""
        return ui_link(
            self.uri if self.server else f"http://127.0.0.1:{port}", experiment_id, run_id
        )


class StopRun(Exception):
    """Raised inside a run to end it on purpose (a pruned trial): the run ends with ``status``,
    its reason as the ``stop_reason`` tag plus ``tags``, and the exception goes on to the caller.

    Args:
        reason: why the run stops (one line).
        status: the MLflow status the run ends with.
        tags: more tags to set on the run as it ends.
    """

    def __init__(
        self, reason: str, status: str = "KILLED", tags: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.tags = dict(tags or {})


#: Opens the run a task sequence writes into; the caller decides its name, parent and tags.
RunFactory = Callable[[], AbstractContextManager["Run"]]


class Run:
    """One MLflow run, written and read through an explicit client and run id.

    Use :meth:`start` (a new run) or :meth:`reopen` (an existing one) as a context manager:
    the run ends FINISHED when the block completes, FAILED (with the error as the ``error``
    tag) when it raises, KILLED on Ctrl-C or SIGTERM, and as a :class:`StopRun` says when one
    is raised.
    """

    def __init__(self, store: Store, run_id: str, experiment_id: str) -> None:
        self.store = store
        self.client = store.client()
        self.run_id = run_id
        self.experiment_id = experiment_id

    @classmethod
    def get(cls, store: Store, run_id: str) -> Run:
        """An existing run, to read or add to; its status is left alone. ``run_id`` may be a
        unique prefix of 8+ characters (:func:`pipeline.runids.resolve_run_id`).

        Raises:
            LookupError: no run ``run_id`` in ``store``, or a prefix too short or ambiguous.
        """
        client = store.client()
        try:
            info = client.get_run(resolve_run_id(client, run_id, str(store))).info
        except MlflowException:
            raise LookupError(f"no MLflow run '{run_id}' in the store {store}") from None
        return cls(store, info.run_id, info.experiment_id)

    @classmethod
    @contextmanager
    def start(
        cls,
        store: Store,
        experiment: str,
        run_name: str = "",
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
    ) -> Iterator[Run]:
        exp_id = store.experiment_id(experiment, description)
        all_tags = {OWNER_TAG: process_id(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        info = store.create_run(exp_id, run_name, all_tags)
        with cls(store, info.run_id, exp_id)._managed() as run:
            yield run

    @classmethod
    def factory(
        cls,
        store: Store,
        experiment: str,
        run_name: str = "",
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
    ) -> RunFactory:
        """A :data:`RunFactory` that starts a new run with these settings."""
        return functools.partial(
            cls.start, store, experiment, run_name, parent_run_id, tags, description
        )

    @classmethod
    def of(
        cls,
        cfg: ExperimentConfig,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> RunFactory:
        """The factory of the run a config names: in its store (``paths.store``) and MLflow
        experiment (``tracking.experiment``, else the config's name), with its run name."""
        experiment = cfg.tracking.experiment or cfg.name
        name = cfg.tracking.run_name or default_run_name(cfg)
        store = Store.of(cfg.paths)
        return cls.factory(store, experiment, name, parent_run_id, tags, cfg.description)

    @classmethod
    @contextmanager
    def reopen(cls, store: Store, run_id: str) -> Iterator[Run]:
        """An existing run, RUNNING again until the block ends (as in :meth:`start`).

        Raises:
            LookupError: no run ``run_id`` in ``store``.
        """
        run = cls.get(store, run_id)
        run.set_tags({OWNER_TAG: process_id()})  # this process takes the run over
        run.client.update_run(run.run_id, status="RUNNING")
        with run._managed():
            yield run

    @contextmanager
    def _managed(self) -> Iterator[Run]:
        try:
            yield self
        except StopRun as e:
            self._end_anyway(e.status, tags={"stop_reason": e.reason, **e.tags})
            raise
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C/SIGTERM into SystemExit
            self._end_anyway("KILLED", {"error": "interrupted"})
            raise
        except BaseException as e:
            trouble = server_trouble(e) if self.store.server else ""
            if trouble != "down":  # a server that is down cannot be told that the run failed
                self._end_anyway("FAILED", {"error": f"{type(e).__name__}: {e}"})
            if trouble:
                raise server_failed(self.store.uri, self.run_id, trouble) from e
            if isinstance(e, DiskFull) and e.run_id is None:
                e.run_id = self.run_id  # the line the user sees says which run to resume
            raise
        self.end("FINISHED")

    def _end_anyway(self, status: str, tags: Mapping[str, str]) -> None:
        """End the run on the way out of an error, which a store error must not replace."""
        try:
            self.end(status, tags)
        except Exception as e:
            print(f"warning: run {self.run_id} could not be marked {status}: {e}", file=sys.stderr)

    def end(self, status: str, tags: Mapping[str, str] | None = None) -> None:
        """Set ``tags`` (an ``error``, a ``stop_reason``...) and end the run with ``status``."""
        with shielded():  # both or neither
            if tags:
                self.set_tags({k: str(v)[:5000] for k, v in tags.items()})
            self.client.set_terminated(self.run_id, status=status)

    @property
    def status(self) -> str:
        return str(self.client.get_run(self.run_id).info.status)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    def tasks_logged(self) -> bool:
        """Whether the run logged any task's accuracies (:func:`pipeline.keys.acc_key`)."""
        return has_accuracies(self.client.get_run(self.run_id).data.metrics)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values redacted: a URI's password never reaches the store)."""
        items = [Param(k, redact(str(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_records(metric_records(metrics, step))

    def log_records(self, records: Sequence[Metric]) -> None:
        """Log metric records (key, value, timestamp, step), in batches MLflow accepts."""
        records = list(records)
        for i in range(0, len(records), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=records[i : i + MAX_BATCH])

    def log_missing(self, records: Sequence[Metric]) -> int:
        """Log the records whose (key, step) the run does not hold yet; how many.

        A resumed run logs what its process logged after the last checkpoint only where the
        process died before logging it, so every metric step is logged once.
        """
        missing = []
        for key in sorted({r.key for r in records}):
            steps = {m.step for m in self.client.get_metric_history(self.run_id, key)}
            missing += [r for r in records if r.key == key and r.step not in steps]
        self.log_records(missing)
        return len(missing)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_json(self, obj: Any, name: str) -> None:
        self.log_text(json.dumps(obj, indent=2), name)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def list_files(self, folder: str = "") -> list[str]:
        """Artifact paths of the files directly in ``folder`` of the run."""
        return [f.path for f in self.client.list_artifacts(self.run_id, folder or None)]

    def download(self, path: str, dst: Path) -> Path:
        """Copy the artifact ``path`` into the folder ``dst``; the local file.

        Raises:
            LookupError: the run has no such artifact (or it cannot be fetched).
        """
        try:
            with room_for(dst, f"a copy of {path}"):  # a full scratch disk is not a bad file
                return Path(self.client.download_artifacts(self.run_id, path, str(dst)))
        except (MlflowException, OSError) as e:
            raise LookupError(f"run {self.run_id} has no readable {path}: {first_line(e)}") from e

    def read_json(self, path: str) -> Any:
        """The JSON artifact ``path``, parsed.

        Raises:
            LookupError: no such artifact, or not JSON.
        """
        with scratch_dir() as tmp:
            local = self.download(path, tmp)
            try:
                return json.loads(local.read_text())
            except (OSError, ValueError) as e:
                raise LookupError(f"run {self.run_id}: {path} is not readable JSON: {e}") from e

    def delete_file(self, path: str) -> None:
        """Remove the artifact ``path`` (MLflow's client has no call for it; its artifact
        repositories, local and proxied, do)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        uri = self.client.get_run(self.run_id).info.artifact_uri
        with shielded():
            get_artifact_repository(uri, tracking_uri=self.store.uri).delete_artifacts(path)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts and lists into ``a.b.0.c`` keys (MLflow params)."""
    if isinstance(tree, list) and all(not isinstance(v, dict | list) for v in tree):
        return {prefix: tree} if prefix else {}  # a list of scalars stays one param
    if isinstance(tree, dict):
        items = [(str(k), v) for k, v in tree.items()]
    elif isinstance(tree, list):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def metric_records(metrics: Mapping[str, float], step: int = 0) -> list[Metric]:
    """Metric records of ``metrics`` at ``step``, stamped now."""
    now = _now_ms()
    return [Metric(k, float(v), now, step) for k, v in metrics.items()]


def records_of(rows: Sequence[Sequence[Any]]) -> list[Metric]:
    """Metric records from ``[key, value, timestamp, step]`` rows (as kept in a checkpoint)."""
    return [Metric(str(k), float(v), int(t), int(s)) for k, v, t, s in rows]


def rows_of(records: Sequence[Metric]) -> list[list[Any]]:
    """``[key, value, timestamp, step]`` rows of metric records."""
    return [[r.key, r.value, r.timestamp, r.step] for r in records]


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder for files that are logged as artifacts and then dropped."""
    with tempfile.TemporaryDirectory(prefix="pipeline-") as d:
        yield Path(d)
