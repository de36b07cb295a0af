"""Processes: which one owns something (a sweep's trial, a run): ``host:pid:start``, and whether
that process still runs, to tell a crashed owner from a live one (a dead sweep worker's trial is
retried, a run whose process died can be resumed). How a command's process ends is
:mod:`pipeline.exiting`."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); empty when the
    process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> str:
    """Start time of a process (clock ticks since boot), to tell a reused pid from the worker."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


def process_id() -> str:
    """``host:pid:start`` of this process: enough to tell, on the same host, whether it still
    runs (a pid may be reused; its start time may not)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def process_alive(owner: str) -> bool | None:
    """Whether the process ``host:pid:start`` runs, when it is on this host; ``None`` when it
    is not (the process table of another host cannot tell)."""
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    fields = _stat(int(pid))
    if not fields or fields[0] in ("Z", "X"):  # gone, or a zombie its parent has not reaped
        return False
    return not start or fields[19] == start
