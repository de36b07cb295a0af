"""Exact unlearning (``make erase``): the run rewound to the checkpoint before the erased samples
and trained again without them ends with the weights and the accuracy matrices of a run
trained from scratch without them, for one request, for requests one after another, for a
request over two tasks and for an unlearning killed mid-way; and the original keeps no
checkpoint that depended on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import CANARIES, TINY, run, small_synthetic
from helpers.stores import client

from pipeline import checkpoints, runfiles
from pipeline.audit import Audit, Scores, verdict
from pipeline.cli import main
from pipeline.config.paths import PathsConfig
from pipeline.ids_help import read_ids
from pipeline.results import SequenceResult
from pipeline.store import Store
from pipeline.tracking import Run, scratch_dir
from pipeline.unlearning import FROM_TAG, TO_TAG, Request, unlearn

TASKS = "data.tasks=[" + ",".join(f"{{dataset: synthetic, seed: {i}}}" for i in range(3)) + "]"
SETTING = (
    TASKS,
    "strategy=[replay]",
    "strategies.replay.size=40",
    *TINY,
    "audit.after_erase=false",
)


def weights(store: Path, run_id: str) -> list[dict[str, torch.Tensor]]:
    """Every task's checkpoint weights, in task order."""
    r = Run.get(Store.at(store), run_id)
    with scratch_dir() as tmp:
        return [
            checkpoints.read_checkpoint(r.download(f.path, tmp))["state_dict"]
            for f in checkpoints.latest_checkpoints(r).values()
        ]


def assert_same_run(store: Path, run_id: str, reference: SequenceResult, ref_store: Path) -> None:
    """Weights after every task within 1e-6 of the reference, the matrices identical."""
    got, expected = weights(store, run_id), weights(ref_store, reference.run_id)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k].double() - b[k].double()).abs().max().item() <= 1e-6, k
    result = runfiles.read_result(Store.at(store), run_id)
    for split in ("val", "test"):
        np.testing.assert_array_equal(result.matrix[split], reference.matrix[split])


def from_scratch(
    tmp_path: Path, name: str, erased: dict[str, list[int]]
) -> tuple[Path, SequenceResult]:
    store = tmp_path / name / "mlruns"
    items = ", ".join(f"{t}: {ids}" for t, ids in erased.items())
    return store, run(small_synthetic(store, *SETTING, f"data.erased={{{items}}}"))


def buffered(store: Path, run_id: str, task_index: int, after: int) -> list[int]:
    """Ids of task ``task_index`` that the buffer holds after task ``after``."""
    r = Run.get(Store.at(store), run_id)
    f = checkpoints.latest_checkpoints(r)[after]
    with scratch_dir() as tmp:
        module = checkpoints.fetch_checkpoint(r, f, tmp).module
    buf = module.strategies[0].buffer
    return sorted(buf.ids[buf.valid & (buf.tasks == task_index)].tolist())


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("unlearning") / "mlruns"
    return store, run(small_synthetic(store, *SETTING)).run_id


def test_requests_one_after_another_equal_runs_from_scratch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "mlruns"
    run_id = run(small_synthetic(store, *SETTING)).run_id
    # samples of task 1 that the buffer keeps afterwards, and one it does not
    first = [*buffered(store, run_id, 1, 2)[:3], 7]
    trained_on_them = weights(store, run_id)[-1]
    where = f"paths.store={store}"
    ids = ",".join(map(str, first))
    assert main(["erase", run_id, "--task", "synthetic1", "--ids", ids, where]) == 0
    out = capsys.readouterr().out
    assert "from task synthetic1 (1 of 3 task(s) carried over)" in out
    c = client(store)
    (new,) = c.search_runs(
        [c.get_run(run_id).info.experiment_id], filter_string=f"tags.`{FROM_TAG}` = '{run_id}'"
    )
    unlearned = new.info.run_id
    assert c.get_run(run_id).data.tags[TO_TAG] == unlearned
    ref_store, reference = from_scratch(tmp_path, "first", {"synthetic1": first})
    assert_same_run(store, unlearned, reference, ref_store)
    gap = max(
        (trained_on_them[k] - w).abs().max().item()
        for k, w in weights(store, unlearned)[-1].items()
    )
    assert gap > 1e-4  # the comparison has power: four samples fewer move the weights
    # the original keeps task 0's checkpoint only (it never saw the samples); both runs record
    source = Run.get(Store.at(store), run_id)
    assert sorted(checkpoints.checkpoint_files(source)) == [0]
    record = runfiles.read_erasures(source)[-1]
    assert record["ids"] == {"synthetic1": sorted(first)}
    assert record["unlearned_run"] == unlearned
    assert {Path(p).name for p in record["deleted"]} == {
        "task01-synthetic1.ckpt",
        "task02-synthetic2.ckpt",
    }
    assert runfiles.read_erasures(Run.get(Store.at(store), unlearned)) == [record]
    assert main(["erase", run_id, "--task", "synthetic1", "--ids", "3", where]) == 2
    assert f"was unlearned into run {unlearned}" in capsys.readouterr().err

    # a second request, over two tasks, on the unlearned run: rewinds to the start
    second = {"synthetic0": buffered(store, unlearned, 0, 1)[:2], "synthetic2": [5, 6]}
    done = unlearn(Store.at(store), unlearned, Request(second), PathsConfig(store=str(store)))
    assert done.rewind == 0
    ref_store, reference = from_scratch(tmp_path, "second", {**second, "synthetic1": first})
    assert_same_run(store, done.run_id, reference, ref_store)
    assert checkpoints.checkpoint_files(Run.get(Store.at(store), unlearned)) == {}


def test_a_killed_unlearning_is_carried_on_by_the_same_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "mlruns"
    run_id = run(small_synthetic(store, *SETTING)).run_id
    request = Request({"synthetic1": [1, 2, 3]})
    from pipeline import runner

    trained = runner.train_task
    calls = []

    def killed(loop: runner.Loop, task: object) -> runner.Trained:
        calls.append(task)
        if len(calls) == 2:  # in the second task it trains (synthetic2)
            raise KeyboardInterrupt
        return trained(loop, task)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "train_task", killed)
    with pytest.raises(KeyboardInterrupt):
        unlearn(Store.at(store), run_id, request, PathsConfig(store=str(store)))
    monkeypatch.undo()
    source = Run.get(Store.at(store), run_id)
    assert sorted(checkpoints.checkpoint_files(source)) == [0, 1, 2]  # nothing deleted yet
    done = unlearn(Store.at(store), run_id, request, PathsConfig(store=str(store)))
    assert done.resumed
    assert client(store).get_run(done.run_id).info.status == "FINISHED"
    ref_store, reference = from_scratch(tmp_path, "ref", request.tasks)
    assert_same_run(store, done.run_id, reference, ref_store)
    assert sorted(checkpoints.checkpoint_files(source)) == [0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--task", "synthetic1", "--ids", "999999"], "does not train on every sample named"),
        (["--task", "nope", "--ids", "1"], "task 'nope' is not in run"),
        (["--ids-file", "{ids}"], "would leave task 'synthetic0' with no training sample"),
        (["--ids", "1"], "--task is required"),
        (["--ids-file", "/no/such/file"], "--ids-file: cannot read"),
    ],
)
def test_bad_requests_change_nothing(
    tmp_path: Path,
    original: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    says: str,
) -> None:
    store, run_id = original
    every = tmp_path / "ids.txt"  # every training sample of task 0
    with scratch_dir() as tmp:
        r = Run.get(Store.at(store), run_id)
        f = checkpoints.latest_checkpoints(r)[0]
        cfg = checkpoints.fetch_checkpoint(r, f, tmp).cfg
    from pipeline.data.datamodule import ContinualDataModule

    data = ContinualDataModule(cfg.data)
    data.setup()
    every.write_text("".join(f"synthetic0,{i}\n" for i in data.tasks[0].train.ids.tolist()))
    before = client(store).search_runs([client(store).get_run(run_id).info.experiment_id])
    argv = [a.replace("{ids}", str(every)) for a in argv]
    assert main(["erase", run_id, *argv, f"paths.store={store}"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    after = client(store).search_runs([client(store).get_run(run_id).info.experiment_id])
    assert len(after) == len(before)


def test_what_cannot_be_unlearned_is_refused(tmp_path: Path) -> None:
    """No checkpoints, a run still running, an erasures.json that is no list: refused before
    any run is made (the last would otherwise stop the unlearning after its training)."""
    store = tmp_path / "mlruns"
    run_id = run(small_synthetic(store, *TINY, "tracking.log_checkpoints=false")).run_id
    paths = PathsConfig(store=str(store))
    with pytest.raises(Exception, match="has no checkpoints"):
        unlearn(Store.at(store), run_id, Request({"synthetic0": [1]}), paths)
    c = client(store)
    c.update_run(run_id, status="RUNNING")
    with pytest.raises(Exception, match="still running"):
        unlearn(Store.at(store), run_id, Request({"synthetic0": [1]}), paths)
    c.set_terminated(run_id)
    store2 = tmp_path / "second" / "mlruns"
    run_id = run(small_synthetic(store2, *TINY)).run_id
    runfiles.write_erasures(Run.get(Store.at(store2), run_id), {"not": "a list"})  # type: ignore[arg-type]
    with pytest.raises(Exception, match=r"erasures\.json is not a JSON list"):
        unlearn(
            Store.at(store2), run_id, Request({"synthetic0": [1]}), PathsConfig(store=str(store2))
        )
    assert len(client(store2).search_runs([client(store2).get_run(run_id).info.experiment_id])) == 1


def test_an_ids_file_names_tasks_or_takes_the_given_one() -> None:
    text = "# erasure request 42\n3\nsynthetic2, 5\n\n4  # late\n"
    assert read_ids(text, "synthetic0") == {"synthetic0": [3, 4], "synthetic2": [5]}
    with pytest.raises(Exception, match="names no task"):
        read_ids("3\n", "")
    with pytest.raises(Exception, match="line 2"):
        read_ids("1\nx,y\n", "t")


def test_the_audit_catches_canaries_the_original_remembers_and_passes_the_unlearned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "mlruns"
    run_id = run(small_synthetic(store, *CANARIES)).run_id
    assert main(["erase", run_id, "--canaries", f"paths.store={store}"]) == 0
    out = capsys.readouterr().out
    assert "passed: the unlearned model is within the retrained references' spread" in out
    new = Run.get(Store.at(store), Run.get(Store.at(store), run_id).tags[TO_TAG])
    found = new.read_json(runfiles.AUDIT_FILE)
    assert found["members"] == 30 and found["canaries"] == 30 and found["held_out"] == 30
    refs = [r["auc"] for r in found["references"]]
    assert len(refs) == 2
    assert found["original"]["auc"] > max(refs) + 0.2  # the test has power
    assert found["original"]["erased_loss"] < found["unlearned"]["erased_loss"] / 2
    # run again, it reuses the references and keeps the original's scores
    assert main(["audit", new.run_id, f"paths.store={store}"]) == 0
    again = new.read_json(runfiles.AUDIT_FILE)
    assert again["original"] == found["original"] and again["references"] == found["references"]
    c = client(store)
    every = c.search_runs([c.get_run(run_id).info.experiment_id])
    assert len(every) == 4  # original, unlearned, two references


def test_the_verdict_fails_a_model_outside_the_references_spread() -> None:
    refs = [Scores(f"r{i}", 0.1, 2.0, 0.1, 2.0, auc) for i, auc in enumerate((0.45, 0.52))]
    remembers = Scores("unlearned", 0.9, 0.2, 0.1, 2.0, 0.97)
    failed = verdict(Audit("r", 200, 200, 200, remembers, refs))
    assert not failed.passed and len(failed.failures) == 2
    forgot = Scores("unlearned", 0.12, 2.0, 0.1, 2.0, 0.5)
    assert verdict(Audit("r", 200, 200, 200, forgot, refs)).passed


def test_an_audit_of_a_run_that_erased_nothing_is_one_line(
    original: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    store, run_id = original
    assert main(["audit", run_id, f"paths.store={store}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "erased no sample" in err
