"""What the servers share: their settings and errors, addresses, processes and secrets."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import random
import secrets
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError


class ServerError(Exception):
    """A server did not come up or could not be stopped (exit 1)."""


class SettingsError(ServerError, ConfigError):
    """Bad input, found before anything started (exit 2). A :class:`ConfigError` too, so that
    the pipeline's commands (``make ui``, ``make dashboard``) report it as their own."""


def default_workers(cores: int | None = None) -> int:
    """Uvicorn workers for ``cores`` CPUs: 1 up to 2 cores, else cores / 2, at most 4."""
    cores = cores or os.cpu_count() or 1
    return 1 if cores <= 2 else min(4, cores // 2)


@dataclass(frozen=True)
class Settings:
    """What ``start`` runs; an empty ``db`` means our own cluster in ``folder``."""

    folder: Path = Path(".server")
    host: str = "127.0.0.1"
    port: int = 5000
    pg_port: int = 5433
    db: str = ""
    pg_data: str = ""  # the folder for the cluster's files; "": the server folder (or automatic)
    auth: bool = False
    workers: int = field(default_factory=default_workers)
    timeout: float = 180.0  # MLflow imports itself twice (CLI, uvicorn): ~20 s on 2 idle cores
    admin_password: str | None = field(default=None, repr=False)  # None: from the environment

    @property
    def admin(self) -> str:
        """The MLflow admin's password for ``auth``."""
        return self.admin_password or os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")


def url_host(host: str, local: bool = False) -> str:
    """``host`` as a URL names it, for this machine (``local``) or others: for a wildcard, our
    domain name if we have one, else our address on the default route."""
    if host in ("0.0.0.0", "::") and local:
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    elif host in ("0.0.0.0", "::"):
        fqdn = socket.getfqdn()
        host = fqdn if "." in fqdn and not fqdn.startswith("localhost") else primary_ip()
    return f"[{host}]" if ":" in host else host


def primary_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.connect(("10.255.255.255", 1))  # sends nothing: only picks the route's address
        return str(s.getsockname()[0])
    return "127.0.0.1"


def pid_of(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process runs (no zombie) and its command line holds
    ``marker`` (its arguments joined by spaces, with one after the last): a pid reused by
    another program must not pass for our server, so the marker names this server's own
    folder."""
    try:
        pid = int(pid_file.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, ValueError, IndexError):
        return None
    return pid if state != "Z" and marker.encode() in cmdline else None


def process_group(pgid: int) -> list[int]:
    """Live members of process group ``pgid``; zombies are not (a container's PID 1 may not
    reap them)."""
    alive = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] != "Z" and int(stat[2]) == pgid:
                alive.append(int(proc.name))
    return alive


def end_session(leader: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Stop the process group that ``leader`` leads (started with ``start_new_session``):
    SIGTERM, then SIGKILL after ``timeout`` seconds; reap the leader.

    The group is signalled only while the leader is not reaped: until then no other process
    can take its number. A leader found ended earlier (``poll()`` reaps it) may have passed its
    number on already, and a signal to it could stop a stranger's group (CI lost freshly
    started servers to signals sent to reused numbers).
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, None)):
        if leader.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(wait)


def failed(what: str, log: Path) -> ServerError:
    with contextlib.suppress(OSError):
        end = log.read_text(errors="replace").splitlines()[-15:]
        return ServerError(f"{what}; end of {log}:\n" + "\n".join(f"  {x}" for x in end))
    return ServerError(f"{what} ({log} is missing)")


def secret(path: Path) -> str:
    """The secret kept in ``path``, created random with mode 600 at first use."""
    if not path.exists():
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")  # URL- and SQL-safe characters
    path.chmod(0o600)
    return path.read_text().strip()


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host:port`` now (None: it could). The socket binds
    with SO_REUSEADDR, as uvicorn and PostgreSQL do: a port left in TIME_WAIT counts as free,
    one that a process listens on does not. It is closed at once."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    return _bind_error(host, port) is None


def require_port(host: str, port: int, change: str) -> None:
    """Check that a server can listen on ``host:port``, before anything announces that address
    (the servers themselves find out only once started, and ``mlflow ui`` then exits 0).

    Args:
        host: the IP address to listen on.
        port: the TCP port.
        change: how the user picks another port, e.g. ``make ui PORT=<port>``.

    Raises:
        SettingsError: the host is not an IP address of this machine; the port is none, in
            use or privileged.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise SettingsError(
            f"--host: {host!r} is not an IP address (127.0.0.1, 0.0.0.0, ::)"
        ) from None
    if not 1 <= port <= 65535:
        raise SettingsError(f"--port: {port} is not a TCP port (1-65535)")
    e = _bind_error(host, port)
    if e is None:
        return
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if e.errno == errno.EADDRNOTAVAIL:
        raise SettingsError(f"{where}: {host} is no address of this machine; choose another: HOST=")
    why = {errno.EADDRINUSE: "is in use (another server?)", errno.EACCES: "needs root (below 1024)"}
    raise SettingsError(
        f"{where} {why.get(e.errno or 0, f'cannot be listened on ({e.strerror})')}; "
        f"choose another port: {change}"
    )


PRIVATE_LOW = 20000  # above the well-known and most registered servers' ports (5000, 5432...)
EPHEMERAL_LOW = 32768  # Linux's default start of ip_local_port_range


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that nothing listens on now, for servers that
    tests and benchmarks start.

    Drawn below the kernel's ephemeral range (``ip_local_port_range``): a port from that range
    is also what every outgoing connection of this machine takes, so a client connecting
    elsewhere could take it in the seconds before the server binds it (a test's server then
    died with "address already in use").
    """
    low = EPHEMERAL_LOW
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    draw = random.Random()  # not the global one: a test may have seeded it
    while len(ports) < n:
        port = draw.randrange(PRIVATE_LOW, max(PRIVATE_LOW + n + 1, low))
        if port not in ports and port_free("127.0.0.1", port):
            ports.append(port)
    return ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return free_ports(1)[0]
