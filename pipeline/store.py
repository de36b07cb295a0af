"""The MLflow store a command tracks into, opened once per process: created and migrated under
a lock, probed when it is a server, and the experiments in it.

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

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from typing_extensions import override

from pipeline.config.paths import DEFAULT_STORE, PathsConfig, redact, repo_path, uri_scheme
from pipeline.disk import DiskFull, room_for
from pipeline.locks import file_lock, pg_lock
from pipeline.provenance import source_name, ui_link
from pipeline.reach import (
    StoreError,
    first_line,
    probe_server,
)
from pipeline.server.ui_app import COLUMNS_TAG, LEGACY_COLUMNS_TAG
from pipeline.shield import ShieldedClient

DB_FILE = "mlflow.db"  # the embedded store's database, in the store folder
ARTIFACTS_DIR = "artifacts"  # the embedded store's artifact root, in the store folder
LOCK_FILE = ".lock"  # in the store folder: see Store.client
DESCRIPTION_TAG = "mlflow.note.content"  # what MLflow's UI shows as the description
# MLflow draws a progress bar for every artifact it downloads, and prints a link each time a run
# ends on a server (to a page of its GenAI view): noise in our output and logs, where we print
# our own links. A user who wants them sets the variables.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
_OPENED: set[str] = set()  # stores this process has created, migrated or probed


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
            try:
                client.set_experiment_tag(exp_id, DESCRIPTION_TAG, description)
            except MlflowException:  # another process's, set at the same moment (see below)
                if DESCRIPTION_TAG not in client.get_experiment(exp_id).tags:
                    raise
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
        for attempt in range(3):
            tags = client.get_experiment(experiment_id).tags
            shown = json.loads(tags.get(COLUMNS_TAG, "[]"))
            if not (missing := [c for c in columns if c not in shown]):
                break
            try:
                client.set_experiment_tag(experiment_id, COLUMNS_TAG, json.dumps(shown + missing))
                break
            except MlflowException:
                # Two processes adding the tag at once (two sweep workers' first trials): in
                # SQLite both insert it and the second breaks the key's UNIQUE constraint.
                # Read the winner's columns and add ours to them.
                if attempt == 2:
                    raise
        if LEGACY_COLUMNS_TAG in tags:  # its columns name the metric keys of older versions
            client.delete_experiment_tag(experiment_id, LEGACY_COLUMNS_TAG)

    def ui_url(self, experiment_id: str, run_id: str | None = None, port: int = 5000) -> str:
        """Link to the runs table, or a run, in the model-training view (MLflow 3.17 opens
        experiments on its GenAI pages otherwise; see :mod:`pipeline.server.ui_app`): on the
        server itself, or on ``make ui`` for a store of this machine."""
        return ui_link(
            self.uri if self.server else f"http://127.0.0.1:{port}", experiment_id, run_id
        )
