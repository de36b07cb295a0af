"""Ids that work: a run is named by any unique prefix of 8+ characters of its id (what the
commands print), and sample ids are checked against the split a task trains on, each refusal
and each erasure that removes nothing saying why in one line."""

import re
from types import SimpleNamespace

import pytest
from helpers.runs import TINY, run, small_synthetic
from helpers.stores import checkpoint

from pipeline.cli import main
from pipeline.data.datamodule import ContinualDataModule
from pipeline.erasure import ErasureError, training_ids
from pipeline.runids import resolve_run_id


class FakeClient:
    """The two calls the resolver makes, over a fixed list of run ids."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.filters: list[str] = []

    def search_experiments(self, view_type: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(experiment_id="0")]

    def search_runs(self, experiments, filter_string, run_view_type, max_results):  # type: ignore[no-untyped-def]
        self.filters.append(filter_string)
        prefix = filter_string.split("'")[1].rstrip("%")
        found = [i for i in self.ids if i.startswith(prefix)]
        return [SimpleNamespace(info=SimpleNamespace(run_id=i)) for i in found]


IDS = ["4c41792a" + "0" * 24, "4c41792a" + "1" * 24, "4c41792b" + "2" * 24]


def test_a_unique_prefix_gives_the_full_id_and_a_full_id_is_looked_up_as_is():
    client = FakeClient(IDS)
    assert resolve_run_id(client, "4c41792b", "store") == IDS[2]
    assert resolve_run_id(client, "4C41792A0", "store") == IDS[0]  # as typed, any case
    assert resolve_run_id(client, IDS[1], "store") == IDS[1]
    assert resolve_run_id(client, "nope0000", "store") == "nope0000"  # no id: get_run says so
    assert client.filters == [
        "attributes.run_id LIKE '4c41792b%'",
        "attributes.run_id LIKE '4c41792a0%'",
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("4c41792a", "run id '4c41792a' is ambiguous: 2 runs start with it (4c41792a000"),
        ("4c41792", "run id '4c41792' is too short: give at least 8 of its characters"),
        ("deadbeef", "no MLflow run whose id starts with 'deadbeef' in the store store"),
    ],
)
def test_an_ambiguous_short_or_unknown_prefix_is_one_line(text: str, says: str):
    with pytest.raises(LookupError) as e:
        resolve_run_id(FakeClient(IDS), text, "store")
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """A replay run of two synthetic tasks (50 samples kept) and the ids its buffers hold."""
    store = tmp_path_factory.mktemp("ids") / "mlruns"
    cfg = small_synthetic(store, "strategy=[replay]", "strategies.replay.size=50", *TINY)
    result = run(cfg)
    held = set()
    for index in (0, 1):
        buf = checkpoint(store, result.run_id, index)[0].strategies[0].buffer
        held |= set(buf.ids[buf.valid & (buf.tasks == 0)].tolist())
    return store, cfg, result.run_id, held


def erase(capsys, store, *argv: str) -> tuple[int, str, str]:
    code = main(["erase", *argv, "--mode", "buffers", f"paths.store={store}"])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def test_erase_and_list_take_the_8_characters_printed(replay, capsys):
    store, _, run_id, held = replay
    code, out, _ = erase(capsys, store, run_id[:8], "--task", "synthetic0", "--list")
    assert code == 0 and out.startswith(f"run {run_id}, samples of task 'synthetic0'")
    listed = {int(i) for line in out.splitlines()[1:] for i in line.split(": ")[-1].split(", ")}
    assert listed == held
    victim = str(min(held))
    code, out, _ = erase(capsys, store, run_id[:8], "--task", "synthetic0", "--ids", victim)
    assert code == 0 and "removed 1 stored sample(s)" in out
    code, _, err = erase(capsys, store, run_id[:5], "--task", "synthetic0", "--ids", victim)
    assert code == 2 and err.startswith("error: run id") and "too short" in err


def test_ids_the_task_does_not_train_on_are_named_with_why(replay, capsys):
    store, cfg, run_id, _ = replay
    dm = ContinualDataModule(cfg.data)
    dm.setup()
    val = dm.tasks[0].val.ids[:2].tolist()
    ids = ",".join(map(str, [*val, 5000]))
    code, _, err = erase(capsys, store, run_id, "--task", "synthetic0", "--ids", ids)
    assert code == 2 and "\n" not in err
    assert err.startswith("error: --ids: task 'synthetic0' does not train on every sample named")
    assert f"{val[0]}, {val[1]} went to its validation split (data.val_fraction)" in err
    assert "5000 are past the end of its training file (ids 0..199)" in err


def test_ids_of_classes_a_task_leaves_out_are_named_as_such(tmp_path):
    cfg = small_synthetic(tmp_path / "mlruns", *TINY)
    cfg.data.tasks[0].classes = [0, 1]  # Split MNIST's mnist_01, on synthetic data
    dm = ContinualDataModule(cfg.data)
    dm.setup()
    kept = set(dm.tasks[0].train.ids.tolist()) | set(dm.tasks[0].val.ids.tolist())
    other = min(set(range(200)) - kept)
    with pytest.raises(ErasureError, match=f"{other} are samples of classes it leaves out "):
        training_ids(cfg, 0, [other], None)


def test_an_erasure_that_finds_nothing_stored_says_why(replay, tmp_path, capsys):
    store, cfg, run_id, held = replay
    dm = ContinualDataModule(cfg.data)
    dm.setup()
    absent = str(min(set(dm.tasks[0].train.ids.tolist()) - held))
    code, out, _ = erase(capsys, store, run_id, "--task", "synthetic0", "--ids", absent)
    assert code == 0
    assert re.fullmatch(
        f"removed nothing: none of these samples is held in run {run_id[:8]}'s buffers "
        rf"\(replay held \d+ of task 'synthetic0''s {len(dm.tasks[0].train)} training samples "
        r"at most; `erase --list` lists them\); the weights were still trained on them",
        out.splitlines()[-1],
    )
    naive = run(small_synthetic(tmp_path / "mlruns", *TINY))
    code, out, _ = erase(
        capsys, tmp_path / "mlruns", naive.run_id, "--task", "synthetic0", "--ids", absent
    )
    assert code == 0 and out.splitlines()[-1].startswith(
        f"removed nothing: strategy naive keeps no training samples in run {naive.run_id[:8]}'s"
    )
