"""How a command's process ends: at once, without the interpreter's teardown (:func:`exit_now`)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
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
