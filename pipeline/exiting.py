"""How a command's process ends: at once, without the interpreter's teardown (:func:`exit_now`),
and on SIGTERM as on Ctrl-C, its runs ended KILLED (:func:`unwind_on_sigterm`)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import NoReturn


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


def _terminate(signum: int, frame: object) -> None:
    shield = sys.modules.get("pipeline.shield")  # loaded by the commands that write runs
    if shield is not None and shield.defer_exit(128 + signum):
        return  # raised as soon as the MLflow write in progress is done
    raise SystemExit(128 + signum)


def unwind_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in this process (its main thread only).

    Python's default SIGTERM stops the process on the spot and leaves its MLflow runs RUNNING;
    as an exception it unwinds like Ctrl-C: runs end KILLED, scratch files go. Lightning calls
    this handler too while it trains (it chains the existing handler). A command's process
    installs it first thing, and so does each worker process a command starts.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
