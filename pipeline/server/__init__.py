"""Team mode (``make server``): PostgreSQL and an MLflow tracking server for several machines.

``start`` runs both in the background, each in its own session, returns once both answer and
prints the lines to export on every machine; ``stop`` stops both. In the folder (``.server/``):
the cluster (``pgdata/``, socket in ``run/``; role ``pipeline``, its random password in
``postgres.password``, mode 600, never printed; databases ``mlflow`` and ``optuna``), the
artifacts MLflow proxies (clients see ``mlflow-artifacts:/`` URIs), logs, pid files and
``server.json`` (the settings in use). ``--db URL``: an existing PostgreSQL instead.

``--pg-data DIR`` (``make server PG_DATA=``) puts the cluster's files (``pgdata/``, ``run/``,
``postgres.log``) in ``DIR``, linked from the folder. As root the cluster runs as the
``postgres`` user, which cannot enter a checkout under a folder of mode 700 (``/root`` in most
containers): its files then go to ``~postgres/pipeline-<hash>`` (one line says so), or, with no
such home, the start is refused with a line that asks for ``PG_DATA=`` (see
:mod:`~pipeline.server.postgres`). A busy ``--port`` or ``--pg-port`` is refused, naming
``PORT=`` or ``PG_PORT=``, before anything is created.

The package: :mod:`~pipeline.server.common` (settings, processes, addresses),
:mod:`~pipeline.server.postgres` (the cluster), :mod:`~pipeline.server.tracking_server` (MLflow)
and, here, start, stop, status and the command line.

Why our own code: nothing needs coordinating. We only start the real engines (``initdb``,
``pg_ctl``, ``mlflow server``) with settings for a small machine; clients talk to them directly.

Environment: ``--auth`` needs ``MLFLOW_AUTH_ADMIN_PASSWORD`` (MLflow's variable, 12+ characters,
read only when MLflow creates the admin user at the first start); optional
``MLFLOW_AUTH_ADMIN_USERNAME`` (``admin``), ``MLFLOW_FLASK_SERVER_SECRET_KEY`` (else a random one
kept in the folder), ``PG_BINDIR``, ``MLFLOW_SERVER_ALLOWED_HOSTS`` (replaces the Host
names we let in when ``--host`` is not loopback). ``mlflow server`` gets the database password as
``PGPASSWORD`` (never on a command line) and ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: its
job runner and 7 huey consumers serve GenAI features only and would be 8 of its 10 processes.

URLs are plain ``postgresql://`` (SQLAlchemy 2.1 reads them with psycopg 3, a dependency).
Linux only (``/proc`` tells which processes are ours).
Exit codes: 0 done (``status``: running), 1 a server did not come up or stop (with the end of
its log), 2 bad input (nothing started), 3 ``status``: not running.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from typing_extensions import override

from pipeline.server.common import (
    ServerError,
    Settings,
    SettingsError,
    default_workers,
    failed,
    pid_of,
    require_port,
    secret,
    url_host,
)
from pipeline.server.postgres import (
    ROLE,
    SCHEME,
    cluster_place,
    connects,
    pg_bindir,
    place_cluster,
    postgres_pid,
    split_url,
    start_postgres,
    stop_postgres,
)
from pipeline.server.tracking_server import mlflow_marker, start_mlflow, stop_mlflow

__all__ = ["ServerInfo", "Settings", "Status", "main", "start", "status", "stop"]


@dataclass(frozen=True)
class ServerInfo:
    """How clients reach the servers; ``started`` is False when they were running already."""

    tracking_uri: str
    storage_url: str  # for Optuna's RDBStorage, without password
    password_file: Path | None  # None with an external --db
    username: str | None  # the MLflow admin with --auth
    mlflow_pid: int
    postgres_pid: int | None
    started: bool = True

    def exports(self) -> list[str]:
        """The shell lines that point a machine at these servers (no secret in them)."""
        lines = [f"export MLFLOW_TRACKING_URI={self.tracking_uri}"]
        lines.append(f"export OPTUNA_STORAGE={self.storage_url}")
        if self.password_file:
            lines.append(f'export PGPASSWORD="$(cat {self.password_file})"  # copy the file over')
        else:
            lines.append("export PGPASSWORD=...  # the password of that database user")
        if self.username:
            lines.append(f"export MLFLOW_TRACKING_USERNAME={self.username}")
            lines.append("export MLFLOW_TRACKING_PASSWORD=...  # MLFLOW_AUTH_ADMIN_PASSWORD's")
        return lines


@dataclass(frozen=True)
class Status:
    """Pids of what runs from a folder (None: not running); ``info`` while all of it runs."""

    postgres_pid: int | None
    mlflow_pid: int | None
    info: ServerInfo | None


def validate(s: Settings) -> None:
    """Raise SettingsError on bad input, before anything starts."""
    for name, port in (("port", s.port), ("PostgreSQL port", s.pg_port)):
        if not 1 <= port <= 65535:
            raise SettingsError(f"{name} {port} is out of range (1-65535)")
    try:
        ipaddress.ip_address(s.host)
    except ValueError:
        raise SettingsError(f"host {s.host!r} is not an IP address (e.g. 0.0.0.0)") from None
    if s.workers < 1:
        raise SettingsError(f"workers must be at least 1, not {s.workers}")
    if not s.timeout > 0:  # also NaN
        raise SettingsError(f"timeout must be above 0 seconds, not {s.timeout}")
    if s.db:
        split_url(s.db)
    else:
        if s.port == s.pg_port:
            raise SettingsError(f"MLflow and PostgreSQL cannot share port {s.port}")
        pg_bindir()
        place, _ = cluster_place(s)  # a place the postgres user cannot reach is refused here
        if len(str(place / "run" / f".s.PGSQL.{s.pg_port}")) > 107:  # sun_path
            raise SettingsError(f"folder {place} is too deep for PostgreSQL's socket path")
    if s.auth and len(s.admin) < 12:
        raise SettingsError("auth needs MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters) set")


def status(folder: Path) -> Status:
    """What runs from ``folder``; stale pid files are removed."""
    folder = folder.resolve()
    pg, ml = postgres_pid(folder), pid_of(folder / "mlflow.pid", mlflow_marker(folder))
    for pid, name in ((pg, "postgres.pid"), (ml, "mlflow.pid")):
        if not pid:
            (folder / name).unlink(missing_ok=True)
    try:
        state = json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return Status(pg, ml, None)
    if not (ml and (pg or state["db"])):  # an external backend is not ours to watch
        return Status(pg, ml, None)
    return Status(pg, ml, _info(folder, state, ml, pg, False))


def _info(folder: Path, state: dict[str, Any], ml: int, pg: int | None, new: bool) -> ServerInfo:
    ours = not state["db"]
    optuna = f"{SCHEME}://{ROLE}@{url_host(state['pg_host'])}:{state['pg_port']}/optuna"
    return ServerInfo(
        tracking_uri=f"http://{url_host(state['host'])}:{state['port']}",
        storage_url=optuna if ours else state["db"].rsplit("/", 1)[0] + "/optuna",
        password_file=folder / "postgres.password" if ours else None,
        username=state["username"] or None,
        mlflow_pid=ml,
        postgres_pid=pg if ours else None,
        started=new,
    )


def start(settings: Settings, say: Callable[[str], None] | None = None) -> ServerInfo:
    """Start what is not running yet (PostgreSQL, then MLflow) and return how to reach them.

    Idempotent: when both run, nothing starts and ``started`` is False. A cluster still
    running without its MLflow keeps its address and port. ``say`` gets the line that tells
    where the cluster's files went when they could not go into the folder.

    Raises:
        SettingsError: bad input; nothing was started.
        ServerError: a server did not come up; what this call started is stopped again.
    """
    validate(settings)
    s = replace(settings, folder=settings.folder.resolve())
    now = status(s.folder)
    if now.info:
        return now.info
    # Ports first: a busy one is bad input (exit 2), found before anything is created.
    if not now.mlflow_pid:
        require_port(s.host, s.port, "make server PORT=<port>")
    if not (s.db or now.postgres_pid):
        require_port(s.host, s.pg_port, "make server PG_PORT=<port>")
    s.folder.mkdir(mode=0o755, parents=True, exist_ok=True)  # the postgres user enters it
    old: dict[str, Any] = {}
    if now.postgres_pid:
        with contextlib.suppress(OSError, ValueError):
            old = json.loads((s.folder / "server.json").read_text())
    pg_s = replace(s, host=old.get("pg_host", s.host), pg_port=old.get("pg_port", s.pg_port))
    url, password = split_url(s.db) if s.db else ("", None)
    if s.db and not connects(url, password):
        raise ServerError(f"cannot connect to {url} (PGPASSWORD or the password in DB wrong?)")
    username = (os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin") if s.auth else ""
    state = {"host": s.host, "port": s.port, "db": url, "username": username}
    state.update(pg_host=pg_s.host, pg_port=pg_s.pg_port)
    pg = None
    try:
        if not s.db:
            if not now.postgres_pid and (note := place_cluster(s)) and say:
                say(note)
            pg = start_postgres(pg_s)
            password = secret(s.folder / "postgres.password")
            url = f"{SCHEME}://{ROLE}@{url_host(pg_s.host, local=True)}:{pg_s.pg_port}/mlflow"
            if not connects(url, password):  # pg_ctl -w waited: it must answer now
                raise failed(f"PostgreSQL does not let {ROLE} in", s.folder / "postgres.log")
        ml = start_mlflow(s, url, password)
    except ServerError:
        if pg and not now.postgres_pid:
            stop_postgres(s.folder)
        raise
    (s.folder / "server.json").write_text(json.dumps(state, indent=1) + "\n")
    return _info(s.folder, state, ml, pg, True)


def stop(folder: Path) -> list[str]:
    """Stop MLflow (its whole process group), then PostgreSQL; return what was stopped."""
    folder, done = folder.resolve(), []
    if pid := stop_mlflow(folder):
        done.append(f"MLflow server (process group {pid})")
    if (folder / "pgdata").is_dir() and (pid := stop_postgres(folder)):
        done.append(f"PostgreSQL (pid {pid})")
    (folder / "server.json").unlink(missing_ok=True)
    return done


class _Parser(argparse.ArgumentParser):
    @override
    def error(self, message: str) -> NoReturn:  # one line, like the other bad input
        self.exit(2, f"error: {message} (see --help)\n")


def _print(info: ServerInfo, folder: Path, state: str) -> None:
    pg = f", PostgreSQL pid {info.postgres_pid}" if info.postgres_pid else ""
    print(f"{state}: MLflow on {info.tracking_uri} (pid {info.mlflow_pid}{pg}); logs in {folder}/")
    print("on every machine that runs the pipeline:")
    print("\n".join(f"  {line}" for line in info.exports()))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``start``, ``stop``, ``status`` (``make server``, ``make server-stop``).

    Args:
        argv: the arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit code: 0 done (running), 1 a server failed, 2 bad input, 3 not running,
        130 interrupted.
    """
    parser = _Parser(prog="python -m pipeline server", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="start PostgreSQL and MLflow (a no-op when they run)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=5000, help="MLflow's port (default 5000)")
    p.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's (default 5433)")
    p.add_argument("--db", default="", help="an existing postgresql:// URL instead of a cluster")
    p.add_argument(
        "--pg-data",
        default="",
        help="folder for the cluster's files (default: the server folder, or one in the "
        "postgres user's home when that user cannot enter it)",
    )
    p.add_argument("--auth", action="store_true", help="MLflow's basic-auth app")
    p.add_argument("--workers", type=int, default=default_workers(), help="uvicorn workers")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each")
    for q in (p, sub.add_parser("stop", help="stop both"), sub.add_parser("status")):
        q.add_argument("--folder", type=Path, default=Path(".server"), help="default .server")
    args = parser.parse_args(argv)
    try:
        if args.command == "stop":
            done = stop(args.folder)
            print(f"stopped {' and '.join(done)}" if done else "nothing was running")
        elif args.command == "status":
            now = status(args.folder)
            if not now.info:
                pids = f"PostgreSQL pid {now.postgres_pid}, MLflow pid {now.mlflow_pid}"
                print(f"not running ({pids}) in {args.folder}/")
                return 3
            _print(now.info, args.folder, "running")
        else:
            t0 = time.monotonic()
            names = ("folder", "host", "port", "pg_port", "db", "pg_data", "auth", "workers")
            settings = Settings(timeout=args.timeout, **{n: getattr(args, n) for n in names})
            info = start(settings, say=lambda line: print(line, flush=True))
            took = f"started in {time.monotonic() - t0:.0f} s"
            _print(info, args.folder, took if info.started else "already running")
            if not info.started:
                print("(with the settings they were started with: stop them to change those)")
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, SettingsError) else 1
    except KeyboardInterrupt:
        print("interrupted: what had started may run on (stop it: make server-stop)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
