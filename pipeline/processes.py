"""Processes: which one owns something (a sweep's trial, a run): ``host:pid:start``, and whether
that process still runs, to tell a crashed owner from a live one (a dead sweep worker's trial is
retried, a run whose process died can be resumed); and how a command's process ends
(:func:`exit_now`)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import socket
import sys
import threading
from pathlib import Path
from typing import NoReturn


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


def exit_now(code: int) -> NoReturn:
    """End this process with ``code`` without the interpreter's teardown of its modules.

    Why our own: a normal exit frees every module and object one by one, and with torch,
    ``torch._dynamo``, Lightning and MLflow loaded that takes 2.2 to 2.4 s on 2 cores (a
    process importing only those ends that long after its last statement; ``import torch``
    alone, 0.8 to 0.9 s: ``benchmarks/timeline.py``, 2026-12-02), paid by every command and
    by each sweep worker. Python
    offers no switch to skip it, so this does first what an exit must do, in the
    interpreter's order: join the non-daemon threads (``threading._shutdown``, which also
    stops idle thread pools), run the ``atexit`` handlers (logging, temporary folders,
    multiprocessing, MLflow's and Lightning's), flush Python's and C's output buffers; then
    ``os._exit`` hands memory and file descriptors back to the OS. Where the interpreter lacks
    either private hook, it exits normally. Only the process's entry point calls this (never
    a library call: it does not return).

    Args:
        code: the exit status.
    """
    join_threads = getattr(threading, "_shutdown", None)
    run_atexit = getattr(atexit, "_run_exitfuncs", None)
    in_main = threading.current_thread() is threading.main_thread()
    if join_threads is None or run_atexit is None or not in_main:
        sys.exit(code)
    join_threads()
    run_atexit()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed, or None
            stream.flush()
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).fflush(None)  # what C libraries printed, still in stdio's buffers
    os._exit(code)
