"""Resume: a 3-task sequence killed with SIGKILL in training, between tasks and in its final write,
resumed after each, ends with the matrix of an uninterrupted run, every metric step logged once
and every checkpoint loading; and what cannot be resumed is refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.runs import run, small_synthetic
from helpers.stores import client

from pipeline import checkpoints, runfiles
from pipeline.cli import main
from pipeline.store import Store
from pipeline.tracking import OWNER_TAG, Run

CHAOS = Path(__file__).with_name("chaos.py")
TASKS = "data.tasks=[" + ",".join(f"{{dataset: synthetic, seed: {i}}}" for i in range(3)) + "]"
SMALL = [
    "trainer.threads=1",
    "trainer.progress_bar=false",
    "trainer.epochs=1",
    "tracking.figures=false",
]
SMALL += ["trainer.max_batches=6", "data.synthetic.n_train=300", "data.synthetic.n_test=100"]


def killed(store: Path, target: str, nth: int, when: str, *argv: str) -> None:
    """Run the pipeline with a SIGKILL planted at ``target``'s ``nth`` call; it must die."""
    done = subprocess.run(
        [sys.executable, str(CHAOS), target, str(nth), when, *argv, f"paths.store={store}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, (target, done.returncode, done.stdout, done.stderr[-3000:])


def the_run(store: Path) -> str:
    c = client(store)
    (only,) = c.search_runs([c.get_experiment_by_name("synthetic_forgetting").experiment_id])
    return str(only.info.run_id)


def test_killed_three_times_and_resumed_it_ends_as_if_never_killed(tmp_path: Path) -> None:
    store = tmp_path / "mlruns"
    start = ["run", "synthetic_forgetting", TASKS, *SMALL, f"paths.reports={tmp_path}"]
    killed(store, "pipeline.module:ContinualModule.training_step", 3, "before", *start)
    run_id = the_run(store)  # died in task 0: no checkpoint yet, the run left RUNNING
    assert client(store).get_run(run_id).info.status == "RUNNING"
    resume = ["run", "--resume", run_id, "trainer.threads=1"]
    # after task 1's checkpoint, before its metrics are logged
    killed(store, "pipeline.checkpoints:save_checkpoint", 2, "after", *resume)
    killed(store, "pipeline.runfiles:write_results", 1, "before", *resume)  # the final write
    assert main([*resume, f"paths.store={store}"]) == 0

    expected = run(small_synthetic(tmp_path / "uninterrupted", TASKS, *SMALL))
    got = runfiles.read_result(Store.at(store), run_id)
    for split in ("val", "test"):
        np.testing.assert_array_equal(got.matrix[split], expected.matrix[split])
    assert got.init == expected.init
    c, ce = client(store), client(tmp_path / "uninterrupted")
    info, reference = c.get_run(run_id), ce.get_run(expected.run_id)
    assert info.info.status == "FINISHED"
    assert set(info.data.metrics) == set(reference.data.metrics)
    for key in reference.data.metrics:  # every step once, as many as uninterrupted
        steps = [m.step for m in c.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
        assert len(steps) == len(ce.get_metric_history(expected.run_id, key)), key
    r = Run.get(Store.at(store), run_id)
    reference_run = Run.get(Store.at(tmp_path / "uninterrupted"), expected.run_id)
    assert set(r.list_files()) == set(reference_run.list_files())  # the same artifacts
    assert runfiles.ALONG_TABLE in r.list_files()
    with runfiles.scratch_dir() as tmp:
        along = r.download(runfiles.ALONG_TABLE, tmp).read_text()
        assert along == reference_run.download(runfiles.ALONG_TABLE, tmp / "ref").read_text()
    files = checkpoints.checkpoint_files(r)
    assert sorted(files) == [0, 1, 2]
    with runfiles.scratch_dir() as tmp:
        for revisions in files.values():
            (f,) = revisions
            checkpoints.fetch_checkpoint(r, f, tmp)  # loads


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("resume") / "mlruns"
    result = run(small_synthetic(store, *SMALL))
    return store, result.run_id


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("finished", "finished; there is nothing to resume"),
        ("another experiment", "'optim.lr=0.1' would change the experiment"),
        ("unknown", "no MLflow run"),
        ("running", "is running"),
        ("cut off before its config", "cut off before it stored its config (config.yaml)"),
    ],
)
def test_what_cannot_be_resumed_is_refused_in_one_line(
    case: str,
    says: str,
    finished: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, run_id = finished
    c = client(store)
    if case == "running":  # still owned by a live process: this one
        from pipeline.processes import process_id

        c.set_tag(run_id, OWNER_TAG, process_id())
        c.update_run(run_id, status="RUNNING")
    args = {"another experiment": ["optim.lr=0.1"], "unknown": []}.get(case, [])
    rid = "0" * 32 if case == "unknown" else run_id
    if case == "cut off before its config":  # a server went down as the run was created
        with Run.start(Store.at(store), "synthetic_forgetting") as r:
            rid = r.run_id
        c.update_run(rid, status="FAILED")
    try:
        assert main(["run", "--resume", rid, *args, f"paths.store={store}"]) == 2
    finally:
        c.update_run(run_id, status="FINISHED")
    err = capsys.readouterr().err
    assert err.startswith("error: resume: ") and says in err and err.count("\n") == 1, err


def test_runs_lists_the_dead_run_as_resumable(
    finished: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    store, run_id = finished
    c = client(store)
    c.set_tag(run_id, OWNER_TAG, "this-host-does-not-exist:1:1")
    c.update_run(run_id, status="KILLED")
    try:
        assert main(["runs", f"paths.store={store}"]) == 0
    finally:
        c.update_run(run_id, status="FINISHED")
    line = next(line for line in capsys.readouterr().out.splitlines() if run_id in line)
    assert "KILLED" in line and "2/2" in line and "RESUME=" in line


def truncate(store: Path, run_id: str, files: list[str]) -> None:
    """Cut the stored checkpoint artifacts ``files`` (names in ``checkpoints/``) to half their
    size, as a full disk or a crash leaves a file: they no longer load."""
    from urllib.parse import urlparse

    uri = client(store).get_run(run_id).info.artifact_uri
    folder = Path(urlparse(uri).path if uri.startswith("file:") else uri) / runfiles.CHECKPOINT_DIR
    for name in files:
        path = folder / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("cut", "says"),
    [
        (
            [1, 2],  # the newest ones: it carries on from an older one
            "checkpoint(s) task02-synthetic2.ckpt, task01-synthetic1.ckpt do not load "
            "(truncated?); carrying on from task00-synthetic0.ckpt: the run restarts at task 2 "
            "of 3 (synthetic1)",
        ),
        (
            [0, 1, 2],  # all of them: from the first task, in the same run
            "checkpoint(s) task02-synthetic2.ckpt, task01-synthetic1.ckpt, "
            "task00-synthetic0.ckpt do not load (truncated?); no checkpoint loads: the run "
            "restarts at task 1 of 3 (synthetic0)",
        ),
    ],
)
def test_unreadable_checkpoints_are_named_and_the_run_restarts_where_one_loads(
    cut: list[int], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resume whose newest checkpoints are truncated says so in one warning line, with the
    task it restarts from, and ends as the uninterrupted run did, every metric step once."""
    store = tmp_path / "mlruns"
    expected = run(small_synthetic(store, TASKS, *SMALL))
    c = client(store)
    c.update_run(expected.run_id, status="KILLED")  # as if cut off after its last task
    names = [f"task{i:02d}-synthetic{i}.ckpt" for i in cut]
    truncate(store, expected.run_id, names)
    capsys.readouterr()
    assert main(["run", "--resume", expected.run_id, f"paths.store={store}"]) == 0
    err = capsys.readouterr().err
    assert err == f"warning: run {expected.run_id}: {says}\n"
    got = runfiles.read_result(Store.at(store), expected.run_id)
    for split in ("val", "test"):
        np.testing.assert_array_equal(got.matrix[split], expected.matrix[split])
    assert c.get_run(expected.run_id).info.status == "FINISHED"
    for key in c.get_run(expected.run_id).data.metrics:  # the tasks trained again: logged once
        steps = [m.step for m in c.get_metric_history(expected.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    r = Run.get(Store.at(store), expected.run_id)
    with runfiles.scratch_dir() as tmp:
        for f in checkpoints.latest_checkpoints(r).values():
            checkpoints.fetch_checkpoint(r, f, tmp)  # written again: they load


def test_a_carried_optimizer_state_is_resumed_from_the_checkpoint(tmp_path: Path) -> None:
    """optim.carry_state=true: a run killed in its second task carries on from the first
    task's optimizer state, not a fresh one, and ends as an uninterrupted run does."""
    store, carry = tmp_path / "mlruns", "optim.carry_state=true"
    start = ["run", "synthetic_forgetting", carry, *SMALL, f"paths.reports={tmp_path}"]
    killed(store, "pipeline.module:ContinualModule.training_step", 9, "before", *start)
    run_id = the_run(store)
    assert main(["run", "--resume", run_id, "trainer.threads=1", f"paths.store={store}"]) == 0
    expected = run(small_synthetic(tmp_path / "uninterrupted", carry, *SMALL))
    got = runfiles.read_result(Store.at(store), run_id)
    np.testing.assert_array_equal(got.matrix["test"], expected.matrix["test"])
