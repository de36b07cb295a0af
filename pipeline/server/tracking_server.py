"""The MLflow tracking server: ``mlflow server`` on the PostgreSQL backend, proxying the
artifacts, in its own session (so that ``make server`` can return), with its log and pid file
in the server folder."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.server.common import (
    Settings,
    failed,
    pid_of,
    primary_ip,
    process_group,
    require_port,
    secret,
    url_host,
)
from pipeline.server.postgres import split_url

PRIVATE_HOSTS = ["10.*", "192.168.*", *[f"172.{i}.*" for i in range(16, 32)]]  # as MLflow's

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # the MLflow servers we started: reaped at stop


def security_flags(host: str, port: int) -> list[str]:
    """Let other machines in: by default MLflow accepts only loopback and private-IP Host
    headers (DNS rebinding), and browser writes only from localhost pages (CORS)."""
    if ipaddress.ip_address(host).is_loopback or os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        return []  # theirs, which MLflow reads, wins
    names = {url_host(host), primary_ip(), socket.gethostname(), socket.getfqdn(), "localhost"}
    names.add("127.0.0.1")
    hosts = sorted(names | {f"{n}:{port}" for n in names}) + PRIVATE_HOSTS
    origins = [f"http://{n}:{port}" for n in sorted(names)] + [f"http://{p}" for p in PRIVATE_HOSTS]
    return ["--allowed-hosts", ",".join(hosts), "--cors-allowed-origins", ",".join(origins)]


def start_mlflow(s: Settings, backend: str, password: str | None = None) -> int:
    """Start ``mlflow server`` on ``backend`` in its own session; return its pid (its group).

    Idempotent: a running server is left as it is. Returns once ``/health`` answers; on
    failure the server's process group is stopped.

    Args:
        s: folder (logs, artifacts, auth files), host, port, workers, auth, timeout.
        backend: the tracking backend's URL.
        password: the backend's password unless in its URL; passed as PGPASSWORD.
    """
    folder = s.folder.resolve()
    pid_file, log = folder / "mlflow.pid", folder / "mlflow.log"
    if not (pid := pid_of(pid_file, mlflow_marker(folder))):
        pid = spawn_mlflow(s, folder, backend, password)
        pid_file.write_text(f"{pid}\n")
    # Wait also for one found running: it may be a start that was interrupted.
    health = f"http://{url_host(s.host, local=True)}:{s.port}/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # not via http_proxy
    deadline, retried = time.monotonic() + s.timeout, False
    while True:
        with contextlib.suppress(OSError), opener.open(health, timeout=2) as answer:
            if answer.status == 200:
                return pid
        ended, code = _ended(pid, pid_file, folder)
        if ended and not retried and code is not None and code <= 0:
            # Stopped from outside before it answered: killed by a signal (code < 0), or told
            # to stop, which uvicorn obeys with a clean exit (0: a server that fails exits
            # non-zero). Nothing of ours sends either here; seen on a loaded CI machine. Start
            # it once more rather than fail; a second end is reported.
            retried = True
            _kill_group(pid)  # its uvicorn, should it outlive it: the port must be free
            pid = spawn_mlflow(s, folder, backend, password)
            pid_file.write_text(f"{pid}\n")
            continue
        if ended or time.monotonic() > deadline:
            how = _how_it_ended(code) if ended else "is silent"
            stop_mlflow(folder)
            if pid in _CHILDREN:  # ended, or missed by stop_mlflow's look at /proc
                _kill_group(pid)
            raise failed(f"MLflow {how} on port {s.port}", log)
        time.sleep(0.5)


def _ended(pid: int, pid_file: Path, folder: Path) -> tuple[bool, int | None]:
    """Whether the server ``pid`` has ended, and its exit status when it was our child.

    Our own child is asked directly: while it is not reaped no other process can take its
    pid, and /proc is not read. What /proc says misleads now and then (a dying process loses
    its command line before it is a zombie), and CI twice took a starting server for dead
    there while it ran (no exit status came in 10 s; the stop that followed found it and
    ended it). One found running from an earlier start is not our child: :func:`pid_of`
    decides.
    """
    if (child := _CHILDREN.get(pid)) is not None:
        code = child.poll()
        return code is not None, code
    return not pid_of(pid_file, mlflow_marker(folder)), None


def _running_child(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if it is a server this process started and it runs (see
    :func:`_ended`)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().split()[0])
        if (child := _CHILDREN.get(pid)) is not None and child.poll() is None:
            return pid
    return None


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of an ended server's process group, reap the server, and wait (at
    most 5 s) until the group is gone, so that its port is free for a new start."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if (child := _CHILDREN.pop(pgid, None)) is not None:
        child.wait()
    deadline = time.monotonic() + 5
    while process_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def mlflow_marker(folder: Path) -> str:
    """What the command line of the MLflow server of ``folder`` holds, and another's does not:
    its artifact destination (:func:`pipeline.server.common.pid_of`)."""
    return f"--artifacts-destination {folder.resolve() / 'artifacts'} "


def spawn_mlflow(s: Settings, folder: Path, backend: str, password: str | None) -> int:
    require_port(s.host, s.port, "make server PORT=<port>")  # taken since start() checked it?
    url, in_url = split_url(backend)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    if (password := in_url if in_url is not None else password) is not None:
        env["PGPASSWORD"] = password
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", url, "--host", s.host]
    cmd += ["--serve-artifacts", "--artifacts-destination", str(folder / "artifacts")]
    cmd += [*f"--port {s.port} --workers {s.workers}".split(), *security_flags(s.host, s.port)]
    if s.auth:
        ini, db = folder / "basic_auth.ini", folder / "basic_auth.db"
        ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{db}\n")
        db.touch()
        db.chmod(0o600)  # password hashes: private, like the other secrets
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        env["MLFLOW_AUTH_ADMIN_USERNAME"] = env.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = s.admin
        if not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):  # one key across restarts
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret(folder / "flask_secret.key")
        cmd += ["--app-name", "basic-auth"]
    else:  # MLflow's app opening on the training view (pipeline.server.ui_app)
        cmd += ["--app-name", "pipeline"]
    with (folder / "mlflow.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def stop_mlflow(folder: Path, timeout: float = 30.0) -> int | None:
    """Stop the server's whole process group (SIGTERM, then SIGKILL); return its pid, if any."""
    pid_file = folder.resolve() / "mlflow.pid"
    if pid := pid_of(pid_file, mlflow_marker(folder)) or _running_child(pid_file):
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while process_group(pid) and time.monotonic() < deadline:
                if pid in _CHILDREN:  # our child (tests): reap it
                    _CHILDREN[pid].poll()
                time.sleep(0.2)
            if not process_group(pid):
                break
    if pid in _CHILDREN:
        _CHILDREN.pop(pid).wait(5)
    pid_file.unlink(missing_ok=True)
    return pid
