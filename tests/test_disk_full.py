"""Disks fill: the store, the checkpoints' scratch folder, the reports and the data on a file
system that runs out of space (a real tmpfs, the kernel's ENOSPC). Each ends in one line that
names the folder, with a non-zero exit; a run it interrupts ends FAILED with no checkpoint that
looks complete but is not, and resumes once there is room."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from helpers.disks import SmallDisk
from helpers.runs import run, small_synthetic
from helpers.stores import client

from pipeline import checkpoints, runfiles
from pipeline.cli import main
from pipeline.disk import DiskFull
from pipeline.store import Store
from pipeline.tracking import Run

SMALL = ["trainer.threads=1", "trainer.progress_bar=false", "trainer.epochs=1"]
SMALL += ["trainer.max_batches=4", "data.synthetic.n_train=200", "data.synthetic.n_test=100"]
CHECKPOINT_BYTES = 1_000_000  # a checkpoint of synthetic_forgetting's CNN: 0.99 MB


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def only_run(store: Path) -> str:
    c = client(store)
    (r,) = c.search_runs([c.get_experiment_by_name("synthetic_forgetting").experiment_id])
    return str(r.info.run_id)


def test_a_new_store_on_a_full_disk_is_refused_and_leaves_nothing(
    small_disk: SmallDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    store = small_disk.path / "mlruns"
    small_disk.fill(leave=64_000)  # MLflow's migrations write about 1 MB
    assert main(["run", "synthetic_forgetting", f"paths.store={store}", *SMALL]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"no space left on device in {store}" in line and "MLflow database" in line
    assert not store.exists()  # no half-migrated database that MLflow could not migrate again
    small_disk.empty()
    Store.at(store).client().search_experiments()  # the same store, once there is room


def test_a_store_that_fills_mid_run_fails_the_run_which_resumes_once_there_is_room(
    small_disk: SmallDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    store = small_disk.path / "mlruns"
    small_synthetic(store)  # the store made (a copy of a migrated one), before the disk fills
    small_disk.fill(leave=int(1.5 * CHECKPOINT_BYTES))  # room for task 0's checkpoint only
    args = [f"paths.store={store}", f"paths.reports={store.parent}", *SMALL]
    assert main(["run", "synthetic_forgetting", *args]) == 1
    line = one_error_line(capsys.readouterr().err)
    run_id = only_run(store)
    assert f"no space left on device in {store}" in line, line
    assert f"make run RESUME={run_id}" in line
    r = Run.get(Store.at(store), run_id)
    assert r.status == "FAILED"
    assert sorted(checkpoints.checkpoint_files(r)) == [0]  # task 1's never looked complete
    with runfiles.scratch_dir() as tmp:
        checkpoints.fetch_checkpoint(r, checkpoints.latest_checkpoints(r)[0], tmp)  # and 0's loads

    small_disk.empty()
    assert main(["run", "--resume", run_id, *args[:2]]) == 0
    assert r.status == "FINISHED"
    assert sorted(checkpoints.checkpoint_files(r)) == [0, 1]
    c = client(store)
    for key in c.get_run(run_id).data.metrics:  # every step logged once
        steps = [m.step for m in c.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)


def test_a_full_scratch_folder_names_it_and_tmpdir(
    small_disk: SmallDisk,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "mlruns"
    small_synthetic(store)
    monkeypatch.setattr(tempfile, "tempdir", str(small_disk.path))  # TMPDIR, for this process
    small_disk.fill(leave=100_000)
    assert main(["run", "synthetic_forgetting", f"paths.store={store}", *SMALL]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"no space left on device in {small_disk.path}" in line and "TMPDIR=" in line
    assert re.search(r"the checkpoint task00-synthetic0.ckpt .*, about 9\d\d kB", line), line
    run_id = only_run(store)
    assert Run.get(Store.at(store), run_id).status == "FAILED"
    assert f"make run RESUME={run_id}" in line


def test_full_reports_folder_and_full_scratch_on_download(
    small_disk: SmallDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "mlruns"
    result = run(small_synthetic(store, *SMALL))
    small_disk.fill()
    reports = small_disk.path / "reports"
    argv = ["landscape", result.run_id, f"paths.store={store}", f"paths.reports={reports}"]
    assert main([*argv, "--points", "3", "--samples", "20"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"no space left on device in {reports}" in line and "landscape" in line
    # A checkpoint fetched into a full scratch folder is not an unreadable checkpoint (a resume
    # would otherwise start the run again from its first task).
    r = Run.get(Store.at(store), result.run_id)
    with pytest.raises(DiskFull, match="no space left on device"):
        r.download(checkpoints.latest_checkpoints(r)[0].path, reports)
