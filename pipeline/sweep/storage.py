"""Where a study is stored, opened once per process, and the lock its workers share.

Storages (``paths.studies``, ``$OPTUNA_STORAGE`` or ``STORAGE=``):

- a journal file (the default, ``mlruns/optuna/journal.log``): several worker processes of one
  machine share it;
- ``sqlite:///<file>``: one process (Optuna's own advice);
- ``postgresql://...``: workers on many machines, the engine options a long sweep needs
  (connections checked before use, a bounded pool, recycled before a server or firewall drops
  them).

Optuna creates a study or an RDB schema without a lock, and counting the finished trials then
asking for one more is two steps: two workers doing them at once overshoot the total or race
the creation. Both happen under :func:`storage_lock`: a file lock beside a journal or SQLite
file, a PostgreSQL advisory lock for a study shared by many machines (the engines' own locks,
not a coordinator of ours).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage, JournalStorage, RDBStorage

from pipeline.config.paths import redact, uri_scheme
from pipeline.journal import GuardedJournal, StorageError, repair
from pipeline.locks import file_lock, pg_lock
from pipeline.retry import patiently

PG_ENGINE = {
    "pool_pre_ping": True,  # a connection the server dropped (idle, restarted) is replaced
    "pool_size": 2,  # a worker asks and tells one trial at a time, plus its heartbeat
    "max_overflow": 2,
    "pool_recycle": 300,  # seconds: before firewalls and servers drop idle connections
    "connect_args": {"connect_timeout": 10},
}


# -- storages ------------------------------------------------------------------------------------
# One storage per URL and process: an RDB storage holds a pool of connections, and opening
# one per call (a worker loads its study more than once, a test polls) exhausts the server's
# connection slots; a forked process must not share its parent's.
_STORAGES: dict[tuple[int, str], BaseStorage] = {}


def open_storage(url: str) -> BaseStorage:
    """A journal file path, ``sqlite:///...`` or ``postgresql://...`` (one per process).

    A journal whose last line is torn is repaired first (:mod:`pipeline.journal`).

    Raises:
        StorageError: an RDB that cannot be reached or refuses the credentials; a journal
            damaged before its last line.
    """
    key = (os.getpid(), url)
    if key not in _STORAGES:
        _STORAGES[key] = _open_storage(url)
    return _STORAGES[key]


def _open_storage(url: str) -> BaseStorage:
    scheme = uri_scheme(url)
    if not scheme:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        repair(path)
        return JournalStorage(GuardedJournal(str(path)))
    engine: dict[str, Any] = PG_ENGINE if scheme == "postgresql" else {"pool_pre_ping": True}
    try:
        with _schema_lock(url):  # Optuna creates its tables without a lock
            return PatientRDBStorage(url, engine_kwargs=dict(engine))
    except Exception as e:  # sqlalchemy's OperationalError and friends: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"study storage {redact(url)}: {redact(first)[:300]}") from None


class PatientRDBStorage(RDBStorage):
    """Optuna's RDB storage whose calls ride out a database that restarts or drops off the
    network for up to :data:`pipeline.retry.RETRY_S` (:func:`pipeline.retry.patiently`), so
    that a sweep's workers carry on through a PostgreSQL restart. Opening it still fails at
    once: a storage that is down when a command starts is bad input.

    Each call of Optuna's storage API is one transaction, rolled back when the connection
    drops, so calling it again does it once. Only the outermost call retries: one storage
    method calling another would otherwise multiply the waits.
    """

    _depth = threading.local()


def _patient(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def patient(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(PatientRDBStorage._depth, "n", 0)
        PatientRDBStorage._depth.n = depth + 1
        try:
            if depth:
                return method(self, *args, **kwargs)
            what = f"the study storage {redact(self.url)}"
            return patiently(lambda: method(self, *args, **kwargs), what)
        finally:
            PatientRDBStorage._depth.n = depth

    return patient


for _name in [n for n in vars(BaseStorage) if not n.startswith("_")]:
    if callable(getattr(RDBStorage, _name, None)):
        setattr(PatientRDBStorage, _name, _patient(_name))


# Beside a journal or SQLite file; not "<file>.lock", which Optuna's journal uses for its own
# (symlink) lock.
LOCK_SUFFIX = ".pipeline-lock"


def _schema_lock(url: str) -> AbstractContextManager[None]:
    if uri_scheme(url) == "postgresql":
        return pg_lock(url, "pipeline:optuna-schema")
    return file_lock(Path(url.partition(":///")[2] + LOCK_SUFFIX))


def storage_lock(url: str, study: str) -> AbstractContextManager[None]:
    """An exclusive lock on ``study`` among every worker of the storage (see the module
    docstring): a file lock for a journal or SQLite file, an advisory lock in PostgreSQL."""
    scheme = uri_scheme(url)
    if scheme == "postgresql":  # workers hold on through a PostgreSQL restart
        return pg_lock(url, f"pipeline:study:{study}", patient=True)
    path = url.partition(":///")[2] if scheme else url
    return file_lock(Path(path + LOCK_SUFFIX))
