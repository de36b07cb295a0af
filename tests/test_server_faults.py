"""The faults real machines meet when a command serves something: a port another program holds
(`make ui`, `make dashboard`, `make server`), refused in one line naming the make variable that
changes it, before any address is printed or any file written; and a checkout that the
`postgres` user cannot reach (root under /root, mode 700), whose cluster goes elsewhere."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.servers import require_postgres, spawn_fake_mlflow

from pipeline import server
from pipeline.server import postgres, tracking_server
from pipeline.server.common import end_session, free_port, free_ports, process_group


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A port of 127.0.0.1 that a listening socket of this test holds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def command(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=120, check=False
    )


def refused(done: subprocess.CompletedProcess[str], *says: str) -> None:
    """Exit 2, one `error:` line on stderr that says ``says``, nothing announced on stdout."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert all(s in done.stderr for s in says), done.stderr
    assert done.stdout == "", done.stdout


@pytest.mark.parametrize("what", ["ui", "dashboard"])
def test_a_busy_port_is_refused_before_the_address_is_printed(what: str, tmp_path: Path) -> None:
    studies = tmp_path / "journal.log"
    studies.write_text("")  # a study storage that is there: the dashboard gets to its port
    with held_port() as port:
        done = command(
            "-m",
            "pipeline",
            what,
            "--port",
            str(port),
            f"paths.store={tmp_path / 'mlruns'}",
            f"paths.studies={studies}",
        )
    refused(done, f"127.0.0.1:{port} is in use", f"make {what} PORT=<port>")
    assert not (tmp_path / "mlruns").exists()  # the store was not created either


@pytest.mark.parametrize("which", ["port", "pg-port"])
def test_a_busy_server_port_is_refused_before_anything_is_created(
    which: str, tmp_path: Path
) -> None:
    require_postgres()
    folder = tmp_path / ".server"
    port, pg_port = free_ports(2)
    with held_port() as busy:
        ports = {"port": port, "pg-port": pg_port, which: busy}
        args = ["--folder", str(folder), "--port", str(ports["port"])]
        done = command("-m", "pipeline.server", "start", *args, "--pg-port", str(ports["pg-port"]))
    variable = {"port": "PORT=", "pg-port": "PG_PORT="}[which]
    refused(done, f"127.0.0.1:{busy} is in use", f"make server {variable}<port>")
    assert not folder.exists()


@pytest.fixture
def closed_checkout(tmp_path: Path) -> Path:
    """A folder of mode 700, as /root: the `postgres` user cannot enter it."""
    if os.geteuid() != 0:
        pytest.skip("PostgreSQL runs as the `postgres` user only when we are root (as CI)")
    require_postgres()
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    checkout.chmod(0o700)
    return checkout


def first_closed(path: Path) -> Path:
    """The first folder on the way to ``path`` that others may not enter (pytest's folders are
    mode 700 too), all of them root's: where the `postgres` user stops."""
    return next(p for p in [*reversed(path.parents), path] if not p.stat().st_mode & 0o001)


def test_an_unreachable_checkout_gets_its_cluster_placed_where_postgres_reaches_it(
    closed_checkout: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make server` as root in a checkout under a folder of mode 700: the cluster's files go to
    the postgres user's home, linked from .server/, and one line says so; status and stop find
    them. MLflow is a stand-in that answers /health: the cluster is what is tested here."""

    def spawn(s: server.Settings, folder: Path, backend: str, password: str | None) -> int:
        return spawn_fake_mlflow(s, folder).pid

    monkeypatch.setattr(tracking_server, "spawn_mlflow", spawn)
    folder = closed_checkout / ".server"
    port, pg_port = free_ports(2)
    args = ["--folder", str(folder)]
    place = postgres.auto_place(folder.resolve(), Path(os.path.expanduser("~postgres")))
    assert not place.exists()
    try:
        start = [*args, "--port", str(port), "--pg-port", str(pg_port), "--timeout", "60"]
        # the whole output in the message (a CaptureResult's repr is cut in the middle, where
        # the reason a start failed is)
        assert server.main(["start", *start]) == 0, "\n".join(capsys.readouterr())
        out = capsys.readouterr().out.splitlines()
        assert out[0] == (
            f"note: the postgres user cannot enter {first_closed(folder)} (mode 700): PostgreSQL's "
            f"files go to {place}, linked from {folder}/ (choose the place: PG_DATA=<folder>)"
        )
        assert out[1].startswith("started in ")
        assert (folder / "pgdata").resolve() == place / "pgdata"
        assert (place / "pgdata" / "PG_VERSION").exists()
        pid = server.postgres_pid(folder)
        assert pid and server.main(["status", *args]) == 0
        assert str(pid) in capsys.readouterr().out
    finally:
        stopped = server.stop(folder)
        shutil.rmtree(place, ignore_errors=True)
    assert len(stopped) == 2 and f"PostgreSQL (pid {pid})" in stopped[1]
    assert not process_group(int(stopped[0].split()[-1].rstrip(")")))


def test_a_pg_data_folder_postgres_cannot_reach_is_refused(
    closed_checkout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = closed_checkout / "open" / ".server"
    closed = closed_checkout / "pg"
    args = ["--folder", str(folder), "--port", str(free_port()), "--pg-data", str(closed)]
    assert server.main(["start", *args]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: PG_DATA={closed}: the postgres user cannot enter {first_closed(closed)} "
        "(mode 700); "
        "choose a folder it can reach\n"
    )
    assert not folder.exists() and not closed.exists()


def test_a_stale_pid_file_never_signals_the_process_that_took_its_pid(tmp_path: Path) -> None:
    """A server folder whose processes died long ago keeps their pid files; pids wrap (at 32768
    here), and a new process may hold one. It must not pass for the cluster or the server, or
    `make server-stop` (pg_ctl stop, killpg) would signal it: CI lost freshly started MLflow
    servers so, an MLflow server on postgresql:// having "postgres" in its command line."""
    folder = tmp_path / ".server"
    (folder / "pgdata").mkdir(parents=True)
    # A bystander whose command line has both words the old check looked for.
    code = "import time; time.sleep(60)"
    bystander = subprocess.Popen(
        [sys.executable, "-c", code, "mlflow", "server", "postgresql://x", "-D", "/elsewhere"]
    )
    try:
        for name in ("pgdata/postmaster.pid", "mlflow.pid"):
            (folder / name).write_text(f"{bystander.pid}\n")
        assert postgres.postgres_pid(folder) is None
        assert server.stop(folder) == []  # nothing of this folder runs: nothing stopped
        time.sleep(0.5)
        assert bystander.poll() is None, "the bystander was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_starting_server_is_not_taken_for_dead_when_proc_misleads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI twice lost a starting MLflow server: the look at /proc (`pid_of`) missed it while it
    ran, the start waited 10 s for an exit status that did not come, called it "exited" and
    stopped it. Our own child is asked directly, for the start and for the stop."""
    seen: list[int] = []
    real = tracking_server.pid_of

    def blind_at_first(pid_file: Path, marker: str) -> int | None:
        seen.append(1)
        return None if len(seen) <= 2 else real(pid_file, marker)

    def spawn(s: server.Settings, folder: Path, backend: str, password: str | None) -> int:
        return spawn_fake_mlflow(s, folder, delay=1.5).pid

    monkeypatch.setattr(tracking_server, "spawn_mlflow", spawn)
    monkeypatch.setattr(tracking_server, "pid_of", blind_at_first)
    settings = server.Settings(folder=tmp_path, port=free_port(), timeout=60)
    pid = tracking_server.start_mlflow(settings, "postgresql://x@127.0.0.1/mlflow")
    assert process_group(pid) == [pid]
    monkeypatch.setattr(tracking_server, "pid_of", lambda pid_file, marker: None)
    assert tracking_server.stop_mlflow(tmp_path) == pid
    assert process_group(pid) == [] and pid not in tracking_server._CHILDREN
    assert not (tmp_path / "mlflow.pid").exists()


def test_end_session_signals_only_a_group_whose_leader_is_not_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader that ignores SIGTERM is killed after the timeout; one already reaped (it ended
    early, `poll()` saw it) gets no signal: its number may be another group's by now."""
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1)"
    stubborn += "; time.sleep(60)"
    leader = subprocess.Popen(
        [sys.executable, "-u", "-c", stubborn], stdout=subprocess.PIPE, start_new_session=True
    )
    assert leader.stdout is not None and leader.stdout.readline()  # SIGTERM is ignored now
    end_session(leader, timeout=1)
    leader.stdout.close()
    assert leader.returncode == -9 and process_group(leader.pid) == []
    sent: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: sent.append(pgid))
    ended = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    ended.wait()
    end_session(ended)
    assert sent == []
