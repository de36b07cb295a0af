"""Real PostgreSQL and MLflow servers for tests, started with :mod:`pipeline.server`.

- ``postgres_cluster()`` yields the URL (password inside) of a fresh cluster's ``mlflow``
  database; ``database(url, "optuna")`` names its other one.
- ``mlflow_server(backend_url, folder, auth=False)`` yields the ``http://`` URI of an MLflow
  server on that backend; with ``auth`` its admin is ``admin`` / ``ADMIN_PASSWORD``.
- ``team_server()`` yields the settings and addresses of ``make server``'s pair (a cluster of
  its own and MLflow on it), in a scratch folder.

Both listen on 127.0.0.1 on free ports (never 5000/5433, which a user may be running) and are
stopped, their folders removed, on exit, also when the test fails. Without the PostgreSQL
binaries ``require_postgres()`` skips the test (CI has them).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import server
from pipeline.server import tracking_server
from pipeline.server.common import free_port, free_ports
from pipeline.server.postgres import throwaway_cluster

ADMIN_PASSWORD = "admin-password-for-tests"  # MLflow wants 12+ characters

#: A stand-in for ``mlflow server`` (``python -c FAKE_MLFLOW PORT <mlflow_marker(folder)>``):
#: answers /health (any GET) on 127.0.0.1:PORT; the marker in its command line, as ``pid_of``
#: asks.
FAKE_MLFLOW = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def spawn_fake_mlflow(
    s: server.Settings, folder: Path, delay: float = 0.0
) -> subprocess.Popen[bytes]:
    """:data:`FAKE_MLFLOW` on ``s.port``, started as ``spawn_mlflow`` starts MLflow: in a
    session of its own, its output in ``folder/mlflow.log`` (which a failed start quotes: CI
    once lost a stand-in with nothing to say why), known to ``tracking_server`` as a child.
    It listens after ``delay`` seconds, as MLflow does after its imports."""
    code = f"import time; time.sleep({delay})\n{FAKE_MLFLOW}"
    argv = [sys.executable, "-c", code, str(s.port)]
    argv += tracking_server.mlflow_marker(folder).split()
    with open(folder / "mlflow.log", "ab") as log:
        proc = subprocess.Popen(argv, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    tracking_server._CHILDREN[proc.pid] = proc
    return proc


def require_postgres() -> None:
    """Skip the calling test when the PostgreSQL binaries are absent."""
    try:
        server.pg_bindir()
    except server.SettingsError as e:
        pytest.skip(f"PostgreSQL is not installed here: {e}")


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A fresh folder that the `postgres` user can enter, removed afterwards.

    pytest's ``tmp_path`` lies under /tmp/pytest-of-root (mode 700), which `postgres` cannot
    traverse, so this is a ``mkdtemp`` right under /tmp, opened to others (mode 755).
    """
    path = Path(tempfile.mkdtemp(prefix="pipeline-server-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` of the same server."""
    return f"{url.rsplit('/', 1)[0]}/{name}"


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A PostgreSQL cluster of its own: yields its ``mlflow`` database's URL with password."""
    require_postgres()
    with throwaway_cluster() as url:
        yield f"{url}/mlflow"


@contextlib.contextmanager
def mlflow_server(backend_url: str, folder: Path, auth: bool = False) -> Iterator[str]:
    """``mlflow server`` on ``backend_url`` (``make server DB=...``), its files in ``folder``."""
    admin = ADMIN_PASSWORD if auth else None
    settings = server.Settings(folder, port=free_port(), db=backend_url, auth=auth, workers=1)
    try:
        yield server.start(replace(settings, admin_password=admin)).tracking_uri
    finally:
        server.stop(folder)


Team = tuple[server.Settings, server.ServerInfo]


@contextlib.contextmanager
def team_server() -> Iterator[Team]:
    """``make server`` as a team runs it: PostgreSQL and MLflow, their files in a scratch
    folder, on free ports; stopped afterwards."""
    require_postgres()
    with scratch_folder() as root:
        settings, info = _started_team(root)
        try:
            yield settings, info
        finally:
            server.stop(settings.folder)


def _started_team(root: Path) -> Team:
    """``make server``'s pair started in ``root``; once more, in a fresh folder and on fresh
    ports, when the first MLflow ends before it answers. CI saw that while the other test
    process worked: uvicorn logged "Shutting down" two seconds after "Application startup
    complete", told to stop by no code of this project that we could find (pid files are
    matched to their folders since). A second failure is the test's."""
    for attempt in (1, 2):
        port, pg_port = free_ports(2)
        folder = root / f".server{'' if attempt == 1 else '-2'}"
        settings = server.Settings(folder=folder, port=port, pg_port=pg_port, workers=1)
        try:
            return settings, server.start(settings)
        except server.ServerError:
            server.stop(settings.folder)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
