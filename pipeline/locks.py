"""Exclusive locks between processes: a file lock for what lives on one machine, a PostgreSQL
advisory lock for what a team shares.

These are the engines' own primitives (``flock``, ``pg_advisory_lock``), used where MLflow or
Optuna do something without a lock that two processes may do at once: create or migrate a
database, create a study, count a study's trials and ask for one more.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block.

    The kernel drops the lock when the process dies, so a killed holder never blocks others.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` from a name."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


# One small pool per database and process (a forked worker must not share its parent's
# connections): a lock costs no new login.
_ENGINES: dict[tuple[int, str], Any] = {}


@contextmanager
def pg_lock(url: str, name: str, timeout_s: float = 10.0, patient: bool = False) -> Iterator[None]:
    """Hold the PostgreSQL session-level advisory lock ``name`` on the database at ``url``.

    Held on a connection of its own (from a pool of one per database and process), so the
    server drops it if this process dies (the connection closes) and a killed worker never
    blocks the others; the lock is released before the connection goes back to the pool.

    Args:
        url: a SQLAlchemy URL of the database (``postgresql://...``).
        name: what is locked (a study name, say); hashed to the lock's key.
        timeout_s: connection timeout.
        patient: wait for a database that cannot be reached (:func:`pipeline.retry.patiently`)
            instead of failing at once. A restart of the server while the lock is held ends
            the lock with the connection: releasing it then is not an error.
    """
    import sqlalchemy

    from pipeline.config.paths import redact
    from pipeline.retry import patiently, transient

    where = (os.getpid(), url)
    if where not in _ENGINES:
        _ENGINES[where] = sqlalchemy.create_engine(
            url,
            pool_size=1,
            max_overflow=1,  # a lock taken inside another (schema, then study) gets its own
            pool_pre_ping=True,
            connect_args={"connect_timeout": int(timeout_s)},
        )
    key = advisory_key(name)

    def take() -> Any:
        conn = _ENGINES[where].connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        except BaseException:
            conn.close()
            raise
        return conn

    conn = patiently(take, f"the database {redact(url)}") if patient else take()
    try:
        yield
    finally:
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
        except Exception as e:
            if not (patient and transient(e)):
                raise
        finally:
            conn.close()
