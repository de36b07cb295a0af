"""A small file system of its own, to fill: the ``small_disk`` fixture (``tests/conftest.py``)
mounts it."""

import shutil
from pathlib import Path


class SmallDisk:
    """A file system of its own (a tmpfs) that a test fills and empties at will."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def fill(self, leave: int = 0) -> None:
        """Take all its space but ``leave`` bytes (more than is free already: nothing)."""
        self.empty()
        free = shutil.disk_usage(self.path).free - leave
        with open(self.filler, "wb") as f:
            while free > 0:
                chunk = min(free, 1 << 20)
                try:
                    f.write(b"\0" * chunk)
                    f.flush()
                except OSError:
                    break
                free -= chunk

    def empty(self) -> None:
        """Free what :meth:`fill` took."""
        self.filler.unlink(missing_ok=True)
