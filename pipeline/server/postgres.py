"""Our own PostgreSQL cluster in the server folder (``initdb``, ``pg_ctl``, ``psql``), run as
an unprivileged user: ``initdb`` and ``postgres`` refuse to run as root."""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pipeline.server.common import (
    ServerError,
    Settings,
    SettingsError,
    failed,
    free_port,
    pid_of,
    secret,
)

ROLE = "pipeline"

SCHEME = "postgresql"  # psycopg 3 under SQLAlchemy 2.1
# Run by psql at each start (idempotent): the role, its password, its two databases.
SETUP_SQL = """
SELECT 'CREATE ROLE pipeline' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pipeline')
\\gexec
ALTER ROLE pipeline LOGIN PASSWORD '{password}';
SELECT format('CREATE DATABASE %I OWNER pipeline', db) FROM unnest(ARRAY['mlflow', 'optuna']) db
WHERE db NOT IN (SELECT datname FROM pg_database)
\\gexec
"""


def pg_bindir() -> Path:
    """The folder of ``initdb``, ``pg_ctl``, ``psql``: $PG_BINDIR, PATH, Debian's, RHEL's."""
    found = [os.environ.get("PG_BINDIR", ""), os.path.dirname(shutil.which("pg_ctl") or "")]
    for pattern in ("usr/lib/postgresql/*/bin", "usr/pgsql-*/bin"):  # the newest first
        found += sorted(map(str, Path("/").glob(pattern)), reverse=True)
    for d in filter(None, found):
        if all(os.access(Path(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "psql")):
            return Path(d)
    raise SettingsError("no PostgreSQL binaries: install PostgreSQL, set PG_BINDIR or pass DB=")


def split_url(url: str) -> tuple[str, str | None]:
    """A ``postgresql://`` URL without its password (``+driver`` dropped: psycopg 3 serves it),
    and the password."""
    parts = urlsplit(url)
    if parts.scheme.split("+")[0] != SCHEME or not parts.hostname or len(parts.path) < 2:
        raise SettingsError("DB must be a URL postgresql://user[:password]@host[:port]/database")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{parts.username}@{netloc}" if parts.username else netloc
    password = unquote(parts.password) if parts.password is not None else None
    return urlunsplit((SCHEME, netloc, parts.path, parts.query, "")), password


def connects(url: str, password: str | None) -> bool:
    """Whether the database at ``url`` lets us in with ``password``."""
    import psycopg  # here, not at the top: `stop` and `status` stay fast

    try:
        psycopg.connect(url, password=password, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def _owner() -> tuple[int, int] | None:
    """(uid, gid) of `postgres` when we are root (initdb and postgres refuse root), else None:
    PostgreSQL then runs as ourselves. That user must be able to reach the folder."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise SettingsError("running as root, and no `postgres` user to run PostgreSQL") from None
    return user.pw_uid, user.pw_gid


def _pg(folder: Path, *args: object, sql: str = "") -> subprocess.CompletedProcess[str]:
    """Run PostgreSQL's program ``args[0]`` as the cluster's owner."""
    owner = _owner()
    kw: dict[str, Any] = {"user": owner[0], "group": owner[1], "extra_groups": []} if owner else {}
    cmd = [str(pg_bindir() / str(args[0])), *map(str, args[1:])]
    return subprocess.run(cmd, input=sql, capture_output=True, text=True, cwd=folder, **kw)


def postgres_pid(folder: Path) -> int | None:
    """The postmaster's pid of the cluster in ``folder`` if it runs."""
    return pid_of(folder.resolve() / "pgdata" / "postmaster.pid", "postgres")


def start_postgres(s: Settings) -> int:
    """Create (the first time) and start the cluster in ``s.folder/pgdata``; return its pid.

    Idempotent: a running cluster is left as it is. At each start the role and databases are
    made if missing and the role gets the password of ``postgres.password``.
    """
    folder = s.folder.resolve()
    if pid := postgres_pid(folder):
        return pid
    data, run, log = folder / "pgdata", folder / "run", folder / "postgres.log"
    password = secret(folder / "postgres.password")
    data.mkdir(mode=0o700, exist_ok=True)
    run.mkdir(mode=0o700, exist_ok=True)
    log.touch(mode=0o600)
    if owner := _owner():  # the cluster's files belong to its owner
        for path in (data, run, log):
            os.chown(path, *owner)
    if not (data / "PG_VERSION").exists():
        r = _pg(folder, "initdb", "-D", data, "-E", "UTF8", "--no-locale", "--auth-local=peer")
        if r.returncode:  # most often a parent folder that the postgres user cannot enter
            raise ServerError(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1]}")
        # TCP: only role pipeline, only its databases, only with its password. The superuser
        # only on the socket, as the OS user that owns the cluster (peer).
        hba = "local all all peer\nhost mlflow,optuna pipeline all scram-sha-256\n"
        (data / "pg_hba.conf").write_text(hba)
        if owner:
            os.chown(data / "pg_hba.conf", *owner)
    # 300 slots: a team of 20 machines with 2 workers holds about 6 connections per worker
    opts = f"-c listen_addresses={s.host} -c max_connections=300 -p {s.pg_port} "
    opts += f"-k {shlex.quote(str(run))}"
    t = int(s.timeout)
    r = _pg(folder, "pg_ctl", "-D", data, "-l", log, "-w", "-t", t, "-o", opts, "start")
    if r.returncode or not (pid := postgres_pid(folder)):
        raise failed(f"PostgreSQL did not start on {s.host}:{s.pg_port}", log)
    (folder / "postgres.pid").write_text(f"{pid}\n")
    # The password goes on stdin, not on a command line that `ps` shows.
    args = f"-X -q -v ON_ERROR_STOP=1 -p {s.pg_port} -d postgres".split()
    r = _pg(
        folder, "psql", *args, "-h", run, sql=SETUP_SQL.format(password=password.replace("'", "''"))
    )
    if r.returncode:
        raise ServerError(f"creating role {ROLE} and its databases failed: {r.stderr.strip()}")
    return pid


def stop_postgres(folder: Path) -> int | None:
    """``pg_ctl stop -m fast`` on the cluster in ``folder``; return the pid it had, if any."""
    folder = folder.resolve()
    if pid := postgres_pid(folder):
        r = _pg(folder, "pg_ctl", "-D", folder / "pgdata", "-m", "fast", "-w", "stop")
        if r.returncode and postgres_pid(folder):
            raise ServerError(f"PostgreSQL (pid {pid}) did not stop: {r.stderr.strip()}")
    (folder / "postgres.pid").unlink(missing_ok=True)
    return pid


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A cluster of its own, for tests and benchmarks: in a fresh folder under ``/tmp`` (one the
    unprivileged owner can enter: pytest's temporary folders are mode 700), on a free port of
    127.0.0.1. Yields ``postgresql://pipeline:<password>@127.0.0.1:<port>`` (add ``/mlflow``
    or ``/optuna``); stopped and removed afterwards, also when the block fails.

    Raises:
        SettingsError: no PostgreSQL binaries.
    """
    pg_bindir()
    folder = Path(tempfile.mkdtemp(prefix="pipeline-postgres-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        settings = Settings(folder=folder, pg_port=free_port(), workers=1, timeout=60)
        try:
            start_postgres(settings)
            password = (folder / "postgres.password").read_text().strip()
            yield f"{SCHEME}://{ROLE}:{password}@127.0.0.1:{settings.pg_port}"
        finally:
            stop_postgres(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
