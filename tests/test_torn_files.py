"""Torn files (issue 27): a study journal or an ``erasures.json`` cut at random offsets, as a
worker killed mid-write or a full disk leaves them, is repaired or read back in part with one
warning line, or refused in one error line; never a traceback."""

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers.stores import empty_store

from pipeline import checkpoints, runfiles
from pipeline.cli import main
from pipeline.config.paths import REPO_ROOT
from pipeline.erasure import ErasureError, erase
from pipeline.journal import TORN_SUFFIX, StorageError
from pipeline.store import DB_FILE, Store
from pipeline.sweep.storage import open_storage
from pipeline.tracking import Run

optuna.logging.set_verbosity(optuna.logging.WARNING)
SEED = 27


# -- the study journal ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def journal_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real journal of a study "s": trials complete, pruned, failed, one still running."""
    path = tmp_path_factory.mktemp("journal") / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr("note", "made by the test")
    for i, state in enumerate(["complete", "pruned", "complete", "fail", "complete", "running"]):
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        trial.set_user_attr("i", i)
        if state == "complete":
            study.tell(trial, x)
        elif state == "pruned":
            trial.report(x, 0)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state == "fail":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return path.read_bytes()


def contents(storage: optuna.storages.BaseStorage) -> list[Any]:
    """Every study of the storage with its trials: what a reader of it sees."""
    out = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(storage.get_study_id_from_name(s.study_name))
        rows = [(t.number, t.state, t.params, t.values, t.user_attrs) for t in trials]
        out.append((s.study_name, s.user_attrs, rows))
    return out


def plain(path: Path) -> optuna.storages.JournalStorage:
    """The journal read by Optuna's own backend, as optuna-dashboard reads it."""
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def cuts(data: bytes) -> list[int]:
    """Random offsets, line ends, and the last line: inside it, and all of it but its newline."""
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    rng = random.Random(SEED)
    extra = [ends[2], ends[-2], ends[-2] + 5, len(data) - 1, len(data)]
    return sorted({*rng.sample(range(1, len(data)), 10), *extra})


def test_a_journal_cut_anywhere_opens_with_every_whole_record_and_one_warning(
    journal_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for n, cut in enumerate(cuts(journal_bytes)):
        folder = tmp_path / f"cut{n}"
        folder.mkdir()
        path = folder / "journal.log"
        path.write_bytes(journal_bytes[:cut])
        good_end = journal_bytes.rfind(b"\n", 0, cut) + 1  # a record ends with its newline
        (tmp_path / "expected.log").write_bytes(journal_bytes[:good_end])
        expected = contents(plain(tmp_path / "expected.log"))

        storage = open_storage(str(path))  # never an exception

        err = capsys.readouterr().err
        assert contents(storage) == expected, cut
        assert path.read_bytes() == journal_bytes[:good_end]
        side = [p for p in folder.iterdir() if TORN_SUFFIX in p.name]
        if good_end == cut:
            assert err == "" and side == [], cut
            continue
        assert len(side) == 1 and side[0].read_bytes() == journal_bytes[good_end:cut]
        assert err.count("\n") == 1 and err.startswith(f"warning: study journal {path}: "), err
        assert f"cut {cut - good_end} bytes, saved in {side[0]}" in err
        if expected:  # the study goes on, and the journal stays readable by Optuna itself
            study = optuna.load_study(study_name="s", storage=storage)
            study.tell(study.ask(), 0.5)
            assert len(contents(plain(path))[0][2]) == len(expected[0][2]) + 1


def test_an_append_after_a_write_cut_short_cuts_it_first(
    journal_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker killed mid-write while the others go on: their next append is not written onto
    the torn line (which merged both, and failed every later read)."""
    path = tmp_path / "journal.log"
    path.write_bytes(journal_bytes)
    study = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    torn = journal_bytes.splitlines(keepends=True)[-1][:17]
    with open(path, "ab") as f:  # what the killed worker left
        f.write(torn)
    study.tell(study.ask(), 0.25)
    study.tell(study.ask(), 0.75)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: study journal ") and "17 bytes" in err
    trials = contents(plain(path))[0][2]
    assert [t[3] for t in trials[-2:]] == [[0.25], [0.75]] and len(trials) == 8


def test_a_damaged_line_before_whole_records_is_refused_in_one_line(
    journal_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = journal_bytes.splitlines(keepends=True)
    path = tmp_path / "journal.log"
    damaged = b"".join([*lines[:3], lines[3][:20] + b"\n", *lines[4:]])
    path.write_bytes(damaged)
    with pytest.raises(StorageError, match=re.escape(f"{path}: line 4 is not a whole record")):
        open_storage(str(path))
    assert path.read_bytes() == damaged  # nothing is cut: this is no write cut short

    store = tmp_path / "mlruns"
    store.mkdir()
    shutil.copyfile(empty_store(), store / DB_FILE)
    assert main(["best", "s", f"paths.studies={path}", f"paths.store={store}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: study journal {path}: line 4 ")

    # damage that appears while the journal is open (another program wrote it): one line too
    later = tmp_path / "later.log"
    later.write_bytes(journal_bytes)
    storage = open_storage(str(later))
    with open(later, "ab") as f:
        f.write(b"not json\n" + lines[-1])
    n = len(lines) + 1
    with pytest.raises(StorageError, match=re.escape(f"{later}: line {n} is not a whole")):
        optuna.load_study(study_name="s", storage=storage).get_trials()


def test_the_command_line_repairs_then_reports_one_line(
    journal_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.log"
    path.write_bytes(journal_bytes[:-30])
    store = tmp_path / "mlruns"
    store.mkdir()
    shutil.copyfile(empty_store(), store / DB_FILE)
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE")
    }
    argv = ["best", "s", "--no-eval", f"paths.studies={path}", f"paths.store={store}"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    # the journal is repaired; then `best` says what it says of any study it did not make
    assert lines[0].startswith(f"warning: study journal {path}: its last line was torn")
    assert lines[1:] == ["error: study 's' was not created by `make sweep`"]

    # make dashboard: repaired before optuna-dashboard (Optuna's plain reader) is started on it
    path.write_bytes(journal_bytes[:-30])
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda exe, args: started.append(args))
    with socket.socket() as s:  # a free port: the command checks it before it starts
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["dashboard", "--port", str(port), f"paths.studies={path}"]) == 0
    assert started and started[0][-1] == str(path)
    assert path.read_bytes() == journal_bytes[: journal_bytes.rfind(b"\n", 0, -30) + 1]


# -- erasures.json --------------------------------------------------------------------------------
RECORDS = [
    {
        "time": f"2025-01-0{i}T10:00:00+0000",
        "task": "synthetic0",
        "ids": [i, 7 * i, 100 + i],
        "removed": {"task00-synthetic0": i, "task01-synthetic1": 2 * i},
    }
    for i in range(1, 5)
]


def whole_before(cut: int) -> int:
    """How many records ``json.dumps(RECORDS, indent=2)[:cut]`` holds whole."""
    full = json.dumps(RECORDS, indent=2)
    ends = []
    for k in range(1, len(RECORDS) + 1):
        prefix = json.dumps(RECORDS[:k], indent=2)[:-2]  # without its "\n]"
        assert full.startswith(prefix)
        ends.append(len(prefix))
    return sum(1 for end in ends if end <= cut)


def test_whole_records_of_a_list_cut_at_every_offset() -> None:
    full = json.dumps(RECORDS, indent=2)
    for cut in range(len(full) + 1):
        found = runfiles.whole_records(full[:cut])
        assert found is not None, cut
        records, whole = found
        assert records == RECORDS[: whole_before(cut)], cut
        assert whole == (cut == len(full)), cut
    assert runfiles.whole_records('{"a": 1}') is None
    assert runfiles.whole_records("garbage") is None


@pytest.fixture
def erased_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, Run, Path]:
    """A run whose erasures.json holds RECORDS; the file in the store; an erasure of it that
    skips the checkpoints (what this test is about is its record)."""
    folder = tmp_path / "mlruns"
    folder.mkdir()
    shutil.copyfile(empty_store(), folder / DB_FILE)
    store = Store.at(folder)
    exp = store.experiment_id("torn")
    info = store.create_run(exp, "erased", {})
    run = Run(store, info.run_id, exp)
    runfiles.write_erasures(run, RECORDS)
    (file,) = folder.rglob(runfiles.ERASURES_FILE)
    monkeypatch.setattr("pipeline.erasure._task_of", lambda run, task: (None, 0))
    monkeypatch.setattr("pipeline.erasure.training_ids", lambda cfg, index, ids, data: 3)
    monkeypatch.setattr(checkpoints, "rewrite_checkpoints", lambda run, fn: {"task00": 1})
    return store, run, file


def test_a_torn_erasures_json_gives_its_whole_records_and_one_warning(
    erased_run: tuple[Store, Run, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store, run, file = erased_run
    full = file.read_bytes()
    rng = random.Random(SEED)
    for cut in sorted(rng.sample(range(len(full)), 10)):
        file.write_bytes(full[:cut])
        records = runfiles.read_erasures(run)
        err = capsys.readouterr().err
        k = whole_before(cut)
        assert records == RECORDS[:k], cut
        assert err.count("\n") == 1 and err.startswith(
            f"warning: run {run.run_id}: erasures.json is torn (a write cut short): "
            f"recovered {k} whole record(s), the rest"
        ), err
        kept = err.rstrip().rsplit(" ", 1)[-1]
        assert kept in run.list_files()
        with runfiles.scratch_dir() as tmp:
            assert run.download(kept, tmp).read_bytes() == full[:cut]  # byte for byte
        run.delete_file(kept)

    # an erasure after a torn one records the whole records and itself
    file.write_bytes(full[: len(full) // 2])
    record = erase(store, run.run_id, "synthetic0", [2])
    assert runfiles.read_erasures(run) == [*RECORDS[: whole_before(len(full) // 2)], record]
    assert capsys.readouterr().err.count("warning: ") == 1


def test_an_erasures_json_that_is_no_list_is_one_error_line(
    erased_run: tuple[Store, Run, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store, run, file = erased_run
    file.write_bytes(b'{"not": "a list"}')
    with pytest.raises(ErasureError, match=r"erasures\.json is not a JSON list of erasure records"):
        erase(store, run.run_id, "synthetic0", [2])
    where = f"paths.store={store.folder}"
    assert (
        main(
            ["erase", run.run_id, "--task", "synthetic0", "--ids", "2", "--mode", "buffers", where]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: run {run.run_id}: erasures.json ")
    assert file.read_bytes() == b'{"not": "a list"}'  # left as it was
