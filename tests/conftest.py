"""Fixtures and hooks only; what tests share besides fixtures is in ``tests/helpers/``."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.disks import SmallDisk


def pytest_configure(config: pytest.Config) -> None:
    # Small and fixed: the tests compare numbers across runs in one process.
    torch.set_num_threads(1)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "mlruns"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 32 MB tmpfs mounted at ``tmp_path/disk`` for the test (a full disk, for real: the
    kernel's ENOSPC). Mounting needs root (CI and these machines run as root); elsewhere the
    tests that need it are skipped and say why."""
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a small disk to fill) needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
