"""A full disk, reported as one line that names the folder and what was being written.

A write that runs out of space fails deep inside a library, each in its own words: ``OSError``
errno 28 from a file copy, SQLite's "database or disk is full" wrapped by SQLAlchemy and MLflow,
a tracking server's HTTP 500 carrying the server's ``OSError``, and torch's checkpoint writer's
"unexpected pos ..." with no word of space at all. None of them says which of our folders filled
(the store, the scratch folder, the reports, the data). :func:`room_for` wraps each of our
writes with the folder it writes to and turns any of them into :class:`DiskFull`, one line
(exit 1; a run it interrupts ends FAILED and can be resumed once there is room).

No library classifies these errors for us: the checks below are the few signatures that the
writers of our stack give, and the free space of the folder for the writers that give none.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from typing_extensions import override

from pipeline.errors import RunFailed, causes

#: What the writers of our stack say when a disk or quota is full (OSError's text, SQLite's).
FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")
#: Below this much free space, a write that failed in words of its own (torch's checkpoint
#: writer) is taken to have failed for space: a partial write has just used the rest.
NEARLY_FULL_BYTES = 1 << 20


class DiskFull(RunFailed):
    """A write ran out of space: one line naming the folder and what it was writing (exit 1).

    Attributes:
        run_id: the MLflow run it ended (FAILED), set by the run as the error passes through:
            the line then says how to resume it.
    """

    run_id: str | None = None

    @override
    def __str__(self) -> str:
        text = super().__str__()
        if self.run_id is None:
            return text
        resume = f"make run RESUME={self.run_id}"
        return f"{text}; run {self.run_id} ended FAILED: make room, then {resume}"


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from or during) says a disk is full."""
    return any(
        (isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT))
        or any(t in str(x).lower() for t in FULL_TEXTS)
        for x in causes(e)
    )


def free_bytes(folder: Path) -> int | None:
    """Free space of the file system that holds ``folder`` (or its nearest existing parent);
    ``None`` when it cannot be told."""
    for path in (folder, *folder.parents):
        if path.exists():
            try:
                return shutil.disk_usage(path).free
            except OSError:
                return None
    return None


def size_text(n: float) -> str:
    """``1.3 MB``, ``512 kB``: a byte count for people (decimal units, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "kB") else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def full_message(folder: Path | str, what: str, needed: int | None = None) -> str:
    """``no space left on device in <folder> (<free> free) for <what>[, about <needed>]``."""
    where = str(folder)
    free = free_bytes(Path(folder)) if "://" not in where else None
    room = f" ({size_text(free)} free)" if free is not None else ""
    need = f", about {size_text(needed)}" if needed else ""
    return f"no space left on device in {where}{room} for {what}{need}"


@contextmanager
def room_for(folder: Path | str, what: str, needed: int | None = None) -> Iterator[None]:
    """Turn a write in the block that ran out of space into :class:`DiskFull`.

    Args:
        folder: where the block writes (a local folder, or a server's URI, shown as it is).
        what: what it writes, for the message ("the checkpoint of task 2").
        needed: the bytes it writes, when known.

    Raises:
        DiskFull: the block raised an error that says a disk is full, or an error of its own
            while the folder's file system has (almost) no space left.
    """
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        local = "://" not in str(folder)
        free = free_bytes(Path(folder)) if local else None
        if is_disk_full(e) or (free is not None and free < NEARLY_FULL_BYTES):
            raise DiskFull(full_message(folder, what, needed)) from e
        raise
