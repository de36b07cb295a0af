"""The approximate unlearning (``make erase UNLEARN=approx``): its study against the exact one,
its audit as the gate (a model that still fits its canaries is rejected, the original kept,
then exact unlearning instead), its acceptance labelled approximate, and a later exact erasure
of an approximate run rewinding past what it erased approximately."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers.runs import CANARIES, run, small_synthetic
from helpers.stores import client

from pipeline import checkpoints, runfiles
from pipeline.approximate import REJECTED_TAG, chosen, study_name
from pipeline.cli import main
from pipeline.config.paths import PathsConfig
from pipeline.store import Store
from pipeline.sweep.storage import open_storage
from pipeline.tracking import Run, scratch_dir
from pipeline.unlearning import APPROX_FROM_TAG, MODE_TAG, TO_TAG


def erase(store: Path, *argv: str) -> int:
    return main(["erase", *argv, f"paths.store={store}"])


def test_a_model_that_fails_its_audit_is_rejected_then_unlearned_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "mlruns"
    run_id = run(small_synthetic(store, *CANARIES)).run_id
    where = f"paths.store={store}"
    tune = ["unlearn-tune", run_id, "--task", "synthetic1", "--size", "20", "--trials", "3"]
    assert main([*tune, where]) == 0
    paths = PathsConfig(store=str(store))
    study = optuna.load_study(
        study_name=study_name(run_id), storage=open_storage(paths.studies_uri())
    )
    assert len(study.trials) == 3
    assert main([*tune, where]) == 0  # resumed: three trials done already
    assert len(study.trials) == 3
    assert chosen(run_id, paths) == (chosen(run_id, paths)[0], True)
    source = Run.get(Store.at(store), run_id)
    assert sorted(checkpoints.checkpoint_files(source)) == [0, 1]  # the study replaced nothing
    capsys.readouterr()

    # 1% of the retraining leaves the canaries remembered: rejected, the original untouched
    assert (
        erase(store, run_id, "--canaries", "--mode", "approx", "--budget", "0.01", "--no-fallback")
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failed its audit (auc" in err
    assert sorted(checkpoints.checkpoint_files(source)) == [0, 1] and TO_TAG not in source.tags
    c = client(store)
    (rejected,) = c.search_runs(
        [source.experiment_id], filter_string=f"tags.`{MODE_TAG}` = 'approximate'"
    )
    assert REJECTED_TAG in rejected.data.tags
    assert sorted(checkpoints.checkpoint_files(Run.get(Store.at(store), rejected.info.run_id))) == [
        0
    ]

    # with the fallback, the exact unlearning replaces it (a new run, not a rejected one), and
    # the registered model follows
    assert main(["register", run_id, "--name", "canaries", where]) == 0
    assert erase(store, run_id, "--canaries", "--mode", "approx", "--budget", "0.01") == 0
    out = capsys.readouterr().out
    assert "unlearning exactly instead" in out and "passed" in out
    record = runfiles.read_erasures(source)[-1]
    assert record["mode"] == "exact"
    assert sorted(checkpoints.checkpoint_files(source)) == [0]
    exact = Run.get(Store.at(store), source.tags[TO_TAG])
    assert exact.tags[MODE_TAG] == "exact" and REJECTED_TAG not in exact.tags
    assert sorted(checkpoints.checkpoint_files(exact)) == [0, 1]
    champion = c.get_model_version_by_alias("canaries", "champion")
    assert champion.run_id == exact.run_id


def test_an_accepted_approximate_unlearning_is_labelled_and_a_later_exact_one_rewinds_past_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "mlruns"
    settings = (*CANARIES[:3], "audit.references=2")
    run_id = run(small_synthetic(store, *settings)).run_id
    # random samples carry little membership signal: the fine-tuned model passes
    assert erase(store, run_id, "--task", "synthetic1", "--ids", "1,2,3", "--mode", "approx") == 0
    out = capsys.readouterr().out
    assert "passed" in out
    source = Run.get(Store.at(store), run_id)
    record = runfiles.read_erasures(source)[-1]
    assert record["mode"] == "approximate" and set(record["settings"]) == {"lr", "alpha", "budget"}
    assert record["tuned"] is False
    approx = Run.get(Store.at(store), source.tags[TO_TAG])
    assert approx.tags[MODE_TAG] == "approximate" and approx.tags[APPROX_FROM_TAG] == "1"
    assert sorted(checkpoints.checkpoint_files(source)) == [0]
    assert sorted(checkpoints.checkpoint_files(approx)) == [0, 1]
    # the same ids again, exactly, and a sample of the first task: retrains everything
    request = tmp_path / "ids.txt"
    request.write_text("synthetic0,4\nsynthetic1,1\nsynthetic1,2\nsynthetic1,3\n")
    assert erase(store, approx.run_id, "--ids-file", str(request), "--no-audit") == 0
    exact = Run.get(Store.at(store), approx.tags[TO_TAG])
    # retrained from the start without all four (test_unlearning proves such a run equals
    # one from scratch)
    record = runfiles.read_erasures(exact)[-1]
    assert record["mode"] == "exact" and record["retrained_from_task"] == "synthetic0"
    assert record["ids"] == {"synthetic0": [4], "synthetic1": [1, 2, 3]}
    assert exact.read_json(runfiles.MATRIX_FILE)  # it finished its whole sequence
    with scratch_dir() as tmp:
        files = checkpoints.latest_checkpoints(exact)
        cfg = checkpoints.fetch_checkpoint(exact, files[max(files)], tmp).cfg
    assert cfg.data.erased == {"synthetic0": [4], "synthetic1": [1, 2, 3]}


def test_an_approximate_request_without_a_budget_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "mlruns"
    run_id = run(small_synthetic(store, "trainer.epochs=1", "trainer.max_batches=2")).run_id
    for budget in ("0", "1.5", "-1"):
        assert (
            erase(
                store,
                run_id,
                "--task",
                "synthetic1",
                "--ids",
                "1",
                "--mode",
                "approx",
                "--budget",
                budget,
            )
            == 2
        )
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--budget" in err
    assert len(client(store).search_runs([Run.get(Store.at(store), run_id).experiment_id])) == 1
