"""The MLflow store shared between processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pipeline.exiting import _terminate
from pipeline.shield import shielded
from pipeline.store import Store


def _open_store(store: str, barrier: Any, results: Any) -> None:
    barrier.wait()  # all at once, as two `make run`s started together after a clone
    try:
        results.put(Store.at(store).experiment_id("race"))
    except Exception as e:  # reported to the parent
        results.put(f"{type(e).__name__}: {e}"[:300])


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """MLflow migrates a new SQLite store on first use without a lock: unguarded, four processes
    that open one new store together break each other's migrations (every time on 2 cores)."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(2):
        store = str(tmp_path / f"mlruns{attempt}")
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_store, args=(store, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        assert len(set(got)) == 1, got  # one experiment id, no error
        assert Store.at(store).client().get_experiment(got[0]).name == "race"


def test_sigterm_during_a_store_write_exits_after_the_write() -> None:
    """Raised inside SQLAlchemy's commit, the exit left SQLite locked and the run RUNNING."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    steps = []
    try:
        with pytest.raises(SystemExit) as stop, shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("write finished")  # the handler ran above and deferred the exit
        assert stop.value.code == 143 and steps == ["write finished"]
        with pytest.raises(SystemExit):  # no write in progress: at once
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("not reached")
        assert steps == ["write finished"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_every_client_write_finishes_before_sigterm_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "mlruns"
    client = Store.at(store).client()
    run_id = client.create_run(Store.at(store).experiment_id("x")).info.run_id
    write = client._tracking_client.set_tag

    def signal_then_write(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # lands inside the write
        return write(*args, **kwargs)

    monkeypatch.setattr(client._tracking_client, "set_tag", signal_then_write)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(SystemExit):
            client.set_tag(run_id, "written", "yes")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert Store.at(store).client().get_run(run_id).data.tags["written"] == "yes"


def test_columns_added_by_two_processes_at_once_keep_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sweep workers' first trials add the columns tag at the same moment: SQLite refuses
    the second insert (UNIQUE). The loser reads the winner's columns and adds its own."""
    import json

    from mlflow.exceptions import MlflowException

    from pipeline.server.ui_app import COLUMNS_TAG
    from pipeline.shield import ShieldedClient

    store = Store.at(tmp_path / "mlruns")
    exp = store.experiment_id("x")
    real = ShieldedClient.set_experiment_tag
    lost = []

    def racing(self: ShieldedClient, experiment_id: str, key: str, value: str) -> None:
        if key == COLUMNS_TAG and not lost:  # the other process wins the race
            lost.append(value)
            real(self, experiment_id, key, json.dumps(["metrics.`test/theirs`"]))
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed")
        real(self, experiment_id, key, value)

    monkeypatch.setattr(ShieldedClient, "set_experiment_tag", racing)
    store.show_columns(exp, ["metrics.`test/ours`"])
    tags = store.client().get_experiment(exp).tags
    both = ["metrics.`test/theirs`", "metrics.`test/ours`"]
    assert lost and json.loads(tags[COLUMNS_TAG]) == both


def test_the_runs_table_columns_are_a_hidden_tag_and_the_old_raw_one_goes(tmp_path: Path) -> None:
    """MLflow's list of experiments shows every tag not named ``mlflow.*``: the columns' JSON
    (named ``pipeline.columns`` until 2026-12) showed there raw."""
    import json

    from pipeline.server.ui_app import COLUMNS_TAG, LEGACY_COLUMNS_TAG

    store = Store.at(tmp_path / "mlruns")
    exp = store.experiment_id("x")
    client = store.client()
    client.set_experiment_tag(exp, LEGACY_COLUMNS_TAG, '["metrics.`acc/a/test`"]')
    store.show_columns(exp, ["metrics.`test/a`"])
    store.show_columns(exp, ["metrics.`test/a`", "metrics.`test/b`"])
    tags = client.get_experiment(exp).tags
    assert COLUMNS_TAG.startswith("mlflow.") and LEGACY_COLUMNS_TAG not in tags
    assert json.loads(tags[COLUMNS_TAG]) == ["metrics.`test/a`", "metrics.`test/b`"]
    assert not [k for k in tags if not k.startswith("mlflow.")]  # nothing a list shows raw
