"""Our own PostgreSQL cluster in the server folder (``initdb``, ``pg_ctl``, ``psql``), run as
an unprivileged user: ``initdb`` and ``postgres`` refuse to run as root.

Its files (``pgdata/``, the socket folder ``run/``, ``postgres.log``) are in the server folder,
or in a folder of their own (``--pg-data``, ``make server PG_DATA=``), linked from the server
folder so that ``stop`` and ``status`` find them. As root, the cluster runs as the ``postgres``
user, which must be able to enter every folder on the way to those files: a checkout under a
folder of mode 700 (``/root`` in most containers) is not reachable. The cluster's files then go,
the first time, to a folder of their own in the ``postgres`` user's home
(``/var/lib/postgresql/pipeline-<hash of the server folder>``), and ``start`` says so in one
line; an explicit ``--pg-data`` that user cannot reach is refused before anything is created.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shlex
import shutil
import stat
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
    """Run PostgreSQL's program ``args[0]`` as the cluster's owner, in the cluster's place (the
    server folder may be one that owner cannot enter)."""
    owner = _owner()
    kw: dict[str, Any] = {"user": owner[0], "group": owner[1], "extra_groups": []} if owner else {}
    cmd = [str(pg_bindir() / str(args[0])), *map(str, args[1:])]
    return subprocess.run(
        cmd, input=sql, capture_output=True, text=True, cwd=place_of(folder), **kw
    )


#: The cluster's files, in its place; linked from the server folder when the place is another.
CLUSTER_FILES = ("pgdata", "run", "postgres.log")


def place_of(folder: Path) -> Path:
    """The folder that holds the cluster's files of the server folder ``folder``: ``folder``
    itself, or where its ``pgdata`` link points (the names handed to PostgreSQL's programs go
    through no link: the cluster's owner may not be able to enter ``folder``)."""
    return (folder.resolve() / "pgdata").resolve().parent


def unreachable(path: Path, uid: int, gid: int) -> Path | None:
    """The first folder on the way to ``path`` (``path`` included) that the user ``uid`` of
    group ``gid`` may not enter (no search permission for it), or None. Folders that do not
    exist yet count as reachable: :func:`place_cluster` makes them open to it."""
    for folder in [*reversed(path.parents), path]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            return None
        # As the kernel decides: the owner's bits for the owner, else the group's, else others'.
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        else:
            bit = stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return folder
    return None


def auto_place(folder: Path, home: Path) -> Path:
    """Where the cluster of ``folder`` goes when its owner cannot reach ``folder``: a folder of
    its own in that user's ``home``, named after ``folder`` (the same one at every start)."""
    return home / f"pipeline-{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"


def cluster_place(s: Settings) -> tuple[Path, str]:
    """Where the cluster's files of ``s.folder`` go, and a line to tell the user when that was
    chosen for them; nothing is created.

    Where they are already (a cluster made before), else ``s.pg_data``, else the server folder
    when the cluster's owner can reach it, else :func:`auto_place` in that owner's home.

    Raises:
        SettingsError: ``s.pg_data`` is another place than the cluster's, or one that the
            ``postgres`` user cannot reach; or no place it can reach (set ``PG_DATA=``).
    """
    folder = s.folder.resolve()
    link = folder / "pgdata"
    chosen = Path(s.pg_data).expanduser().resolve() if s.pg_data else None
    if link.is_symlink() or (link / "PG_VERSION").exists():  # made before: it stays there
        here = place_of(folder)
        if chosen is not None and chosen != here:
            raise SettingsError(
                f"PG_DATA={s.pg_data}: the cluster of {folder} is in {here}; to move it, stop "
                f"the server and move {here / 'pgdata'} there, or remove {link} to start afresh"
            )
        return here, ""
    owner = _owner()
    if chosen is not None:
        if owner and (closed := unreachable(chosen, *owner)):
            raise SettingsError(
                f"PG_DATA={s.pg_data}: the postgres user cannot enter {closed} "
                f"(mode {stat.S_IMODE(closed.stat().st_mode):o}); choose a folder it can reach"
            )
        return chosen, ""
    if owner is None or not (closed := unreachable(folder, *owner)):
        return folder, ""
    why = f"the postgres user cannot enter {closed} (mode {stat.S_IMODE(closed.stat().st_mode):o})"
    home = Path(pwd.getpwuid(owner[0]).pw_dir)
    if home.is_dir() and not unreachable(home, *owner):
        place = auto_place(folder, home)
        note = f"note: {why}: PostgreSQL's files go to {place}, linked from {folder}/ "
        return place, note + "(choose the place: PG_DATA=<folder>)"
    raise SettingsError(f"{why}: choose a folder it can reach for PostgreSQL's files: PG_DATA=")


def place_cluster(s: Settings) -> str:
    """Make the place of :func:`cluster_place` (owned by the cluster's owner) and, when it is
    not the server folder, link the cluster's files from there; the line to tell the user.

    Raises:
        SettingsError: as :func:`cluster_place`; something in the server folder where a link
            goes (the empty ``pgdata/`` that an ``initdb`` which failed leaves is removed).
    """
    folder = s.folder.resolve()
    place, note = cluster_place(s)
    if place == folder:
        return note
    for made in [*reversed(place.parents), place]:
        if not made.is_dir():
            made.mkdir()
            made.chmod(0o755)  # whatever the umask: the cluster's owner goes through it
            if made == place and (owner := _owner()):
                os.chown(place, *owner)
    for name in CLUSTER_FILES:
        link = folder / name
        if link.is_symlink():
            continue
        with contextlib.suppress(OSError):  # leftovers of a start whose initdb failed, if empty
            if link.is_dir():
                link.rmdir()
            elif link.is_file() and not link.stat().st_size:
                link.unlink()
        if link.exists():
            raise SettingsError(f"{link} is in the way of a link to {place / name}: move it")
        link.symlink_to(place / name)
    return note


def postgres_pid(folder: Path) -> int | None:
    """The postmaster's pid of the cluster of the server folder ``folder`` if it runs.

    The process must name this cluster's data folder (``postgres -D <place>/pgdata``): a stale
    ``postmaster.pid`` whose pid now belongs to another process (pids wrap at 32768 on many
    machines) must not pass for it, or ``pg_ctl stop`` would signal that process. "postgres"
    alone did not do: an MLflow server on ``postgresql://`` has it in its command line."""
    folder = folder.resolve()
    return pid_of(folder / "pgdata" / "postmaster.pid", f"-D {place_of(folder) / 'pgdata'} ")


def start_postgres(s: Settings) -> int:
    """Create (the first time) and start the cluster in its place (:func:`place_of`, the
    server folder unless :func:`place_cluster` put it elsewhere); return its pid.

    Idempotent: a running cluster is left as it is. At each start the role and databases are
    made if missing and the role gets the password of ``postgres.password``.
    """
    folder = s.folder.resolve()
    if pid := postgres_pid(folder):
        return pid
    place = place_of(folder)
    data, run, log = place / "pgdata", place / "run", place / "postgres.log"
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
        data = place_of(folder) / "pgdata"
        r = _pg(folder, "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
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
