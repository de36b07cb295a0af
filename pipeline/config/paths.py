"""Where things live: the ``paths`` section of every config (datasets, the MLflow store, the
study storage, reports), the environment variables that stand in for it, and the URIs it
accepts. Relative paths are relative to the repository, never to the working directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import require

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Environment variables that say where the stores are when ``paths`` does not (MLflow's and
#: a common Optuna convention): a team exports them once per machine.
ENV_STORE = "MLFLOW_TRACKING_URI"
ENV_STUDIES = "OPTUNA_STORAGE"
DEFAULT_STORE = "mlruns"  # the embedded store: a folder of the repository
STUDY_JOURNAL = Path("optuna") / "journal.log"  # default study storage, inside a local store
#: URI schemes of ``paths.store`` (a plain path is a local store folder) and ``paths.studies``
#: (a plain path is an Optuna journal file). ``postgresql+psycopg2://`` counts as postgresql.
STORE_SCHEMES = ("sqlite", "postgresql", "http", "https")
STUDY_SCHEMES = ("sqlite", "postgresql")
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it replaced by
    ``***``: URIs are printed and logged, credentials never are."""
    return _PASSWORD.sub(r"\g<head>***@", text)


def uri_scheme(value: str) -> str:
    """The scheme of a store or storage URI (``postgresql+psycopg2`` -> ``postgresql``); ``""``
    for a plain path."""
    head, sep, _ = value.partition("://")
    if not sep:
        return ""
    return head.split("+", 1)[0].lower()


def repo_path(value: str | Path) -> Path:
    """A configured path: absolute as given, relative to the repository root otherwise (never
    to the working directory, which differs between ``make``, tests and a user's shell)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


@dataclass
class PathsConfig:
    """Where things live; every command reads this one section (``paths.<key>=...``).

    Relative paths are relative to the repository root.

    Attributes:
        data: the datasets, in torchvision's layout (``make data`` fills it).
        store: the MLflow tracking store: a local folder (an SQLite database plus an artifact
            root: the embedded store), ``sqlite:///<file>``, ``postgresql://...`` or a tracking
            server ``http(s)://host:port``. Empty: ``$MLFLOW_TRACKING_URI``, else ``mlruns``.
            Credentials of a server come from MLflow's environment variables
            (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``), not from this value.
        studies: the Optuna storage of sweeps: a journal file (several processes of one
            machine), ``sqlite:///<file>`` (one process) or ``postgresql://...`` (workers on
            many machines). Empty: ``$OPTUNA_STORAGE``, else ``optuna/journal.log`` inside the
            local store folder (inside ``mlruns/`` when the store is not a local folder).
        reports: folder of the reports of comparisons, sweeps and landscapes.
    """

    data: str = "data"
    store: str = ""
    studies: str = ""
    reports: str = "reports"

    def store_uri(self) -> str:
        """The tracking store as configured: ``paths.store``, ``$MLFLOW_TRACKING_URI`` or
        ``mlruns`` (a local folder is made absolute)."""
        value = self.store or os.environ.get(ENV_STORE, "") or DEFAULT_STORE
        return value if uri_scheme(value) else str(repo_path(value))

    def store_folder(self) -> Path | None:
        """The local folder of the store (embedded SQLite), or ``None`` for a database or a
        server that is not a folder of this machine."""
        uri = self.store_uri()
        if not uri_scheme(uri):
            return Path(uri)
        if uri_scheme(uri) == "sqlite":
            return Path(uri.partition(":///")[2] or ".").resolve().parent
        return None

    def studies_uri(self) -> str:
        """The study storage: ``paths.studies``, ``$OPTUNA_STORAGE`` or the journal file of
        the local store (a journal file is made absolute)."""
        value = self.studies or os.environ.get(ENV_STUDIES, "")
        if not value:
            return str((self.store_folder() or repo_path(DEFAULT_STORE)) / STUDY_JOURNAL)
        return value if uri_scheme(value) else str(repo_path(value))

    def data_dir(self) -> Path:
        return repo_path(self.data)

    def reports_dir(self) -> Path:
        return repo_path(self.reports)

    def check(self) -> None:
        store = self.store or os.environ.get(ENV_STORE, "")
        where = "paths.store" if self.store else ENV_STORE
        scheme = uri_scheme(store)
        require(
            not scheme or scheme in STORE_SCHEMES,
            where,
            f"'{redact(store)}' is not a folder, sqlite:///<file>, postgresql://... or "
            "http(s)://<server>",
        )
        require(
            scheme not in ("sqlite",) or bool(store.partition(":///")[2]),
            where,
            f"'{redact(store)}': an SQLite URI names its file, sqlite:///<path>",
        )
        if store and not scheme:
            require(
                not repo_path(store).exists() or repo_path(store).is_dir(),
                where,
                f"'{store}' is a file, not a store folder",
            )
        studies = self.studies or os.environ.get(ENV_STUDIES, "")
        where = "paths.studies" if self.studies else ENV_STUDIES
        require(
            uri_scheme(studies) in ("", *STUDY_SCHEMES),
            where,
            f"'{redact(studies)}' is not a journal file, sqlite:///<file> or postgresql://...",
        )
        if studies and not uri_scheme(studies):
            require(
                not repo_path(studies).is_dir(),
                where,
                f"'{studies}' is a directory; a journal storage is a file (e.g. journal.log)",
            )
