"""The study journal (``mlruns/optuna/journal.log``, Optuna's ``JournalFileBackend``), kept
readable when a write to it was cut short.

Optuna appends each operation to the journal as one JSON line, under its lock
(``<journal>.lock``), and its reader stops at a line that is not a whole record. A last line
torn by a worker killed mid-write, or by a full disk, is skipped when read; but the next append
is written onto it, and the merged line then fails every read that follows (a
``json.decoder.JSONDecodeError``) and loses the operation it swallowed. Optuna has no repair of
its own, hence this module:

- :func:`repair`, run before a command opens a journal (sweep, its workers, best, dashboard):
  a torn tail (what follows the last whole record) is cut, under Optuna's lock, saved beside the
  journal (``<journal>.torn-<time>``), with one warning line; a damaged line followed by whole
  records, which no append cut short leaves, is refused in one line (:class:`StorageError`);
- :class:`GuardedJournal`, the backend the pipeline opens: each append first cuts a torn tail
  under the same lock (a worker killed mid-write while the others go on), and a damaged journal
  read later fails in one line. Its append is Optuna's own (five lines), written out again here
  because the cut must happen under the lock that the append holds.

A last record without its line end is cut as well: Optuna's reader applies no line without one
(the newline is the commit mark), so no process has seen that operation, and its writer did not
learn that it was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from typing_extensions import override

from pipeline.errors import ConfigError

TORN_SUFFIX = ".torn-"  # <journal>.torn-<time>: the bytes cut off a torn tail


class StorageError(ConfigError):
    """The study storage cannot be opened (unreachable, refused, damaged): one line, exit 2."""


def _warn(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass(frozen=True)
class Scan:
    """What a journal holds: where its whole records end, and any damage before that."""

    size: int  # bytes read
    good_end: int  # the offset just after the last whole record
    damaged_line: int | None  # the first line that is no record, where whole records follow it

    @property
    def clean(self) -> bool:
        return self.damaged_line is None and self.good_end == self.size


def _whole(line: bytes) -> bool:
    """Whether Optuna's reader applies ``line``: a JSON object ending with a newline."""
    if not line.endswith(b"\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # a JSONDecodeError, or bytes that are no text
        return False


def scan(path: Path) -> Scan:
    """Read the journal at ``path`` line by line (see :class:`Scan`)."""
    size = good_end = 0
    first_bad: int | None = None
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            size += len(line)
            if not _whole(line):
                first_bad = first_bad or number
            elif first_bad is not None:
                return Scan(size, good_end, first_bad)
            else:
                good_end = size
    return Scan(size, good_end, None)


def _damaged(path: Path, line: int) -> StorageError:
    return StorageError(
        f"study journal {path}: line {line} is not a whole record, yet records follow it (not "
        "a write cut short): restore the journal from a backup, or cut it before that line"
    )


def repair(path: Path, warn: Callable[[str], None] = _warn) -> None:
    """Cut a torn tail off the journal at ``path`` (see the module docstring); nothing when it
    is whole or does not exist.

    Raises:
        StorageError: a damaged line followed by whole records; a torn tail that cannot be cut
            (the journal or its folder is read-only, the disk is full).
    """
    if not path.is_file() or scan(path).clean:  # the usual case: no lock taken
        return
    lock = JournalFileSymlinkLock(str(path))
    try:
        lock.acquire()
    except OSError as e:
        raise StorageError(
            f"study journal {path} is torn and cannot be locked to repair it: {e}"
        ) from None
    try:
        # Again under the lock: without it, a record being appended looked torn.
        found = scan(path)
        if found.damaged_line is not None:
            raise _damaged(path, found.damaged_line)
        if found.good_end < found.size:
            _cut(path, found.good_end, warn)
    finally:
        # RuntimeError: another process took the lock over after Optuna's grace period.
        with contextlib.suppress(RuntimeError):
            lock.release()


def _cut(path: Path, end: int, warn: Callable[[str], None]) -> None:
    """Save the bytes of the journal after ``end`` beside it, then truncate it to ``end``
    (call under Optuna's lock)."""
    with open(path, "rb+") as f:
        f.seek(end)
        torn = f.read()
        side = _save(path, torn)
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    warn(
        f"warning: study journal {path}: its last line was torn (a write cut short by a kill or "
        f"a full disk): cut {len(torn)} bytes, saved in {side}"
    )


def _save(path: Path, torn: bytes) -> Path:
    """Write ``torn`` to a new ``<journal>.torn-<time>[-n]`` file; its path.

    Raises:
        StorageError: it cannot be written (then nothing is cut).
    """
    stem = f"{path}{TORN_SUFFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        side = Path(stem if n == 1 else f"{stem}-{n}")
        try:
            with open(side, "xb") as f:
                f.write(torn)
                f.flush()
                os.fsync(f.fileno())
            return side
        except FileExistsError:
            continue
        except OSError as e:
            side.unlink(missing_ok=True)
            raise StorageError(
                f"study journal {path}: its last line is torn, and the torn bytes cannot be "
                f"saved to {side} ({e.strerror or e}): free some space and run again"
            ) from None
    raise StorageError(f"study journal {path}: too many {TORN_SUFFIX}* files beside it")


def _cut_torn_end(path: Path, warn: Callable[[str], None]) -> None:
    """Cut the bytes after the journal's last newline (call under Optuna's lock): what an
    append cut short left. Reads the file's end only: it runs before every append."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            newline = f.read(pos - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            pos = start
        else:
            end = 0
    _cut(path, end, warn)


class GuardedJournal(JournalFileBackend):
    """Optuna's journal file backend, whose appends cut a torn tail first and whose reads fail
    in one line on a damaged journal (see the module docstring)."""

    def __init__(self, path: str, warn: Callable[[str], None] = _warn) -> None:
        self._path = Path(path)
        self._warn = warn
        self._guard = JournalFileSymlinkLock(path)
        super().__init__(path, self._guard)

    @override
    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError as e:  # a JSONDecodeError, "Invalid log format.", bytes that are no text
            found = scan(self._path)
            if found.damaged_line is not None:
                raise _damaged(self._path, found.damaged_line) from None
            raise StorageError(f"study journal {self._path} cannot be read: {e}") from None

    @override
    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._guard.acquire()
        try:
            _cut_torn_end(self._path, self._warn)
            # Optuna's JournalFileBackend.append_logs, inside the lock already held
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        finally:
            self._guard.release()
