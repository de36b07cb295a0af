"""`make compare` on synthetic tasks: parent run, child runs, table, report files."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.compare import compare, format_markdown, table
from pipeline.config import ConfigError
from pipeline.tracking import client_for

FAST = [
    "trainer.progress_bar=false",
    "trainer.threads=1",
    "trainer.epochs=1",
    "data.synthetic.n_train=300",
    "data.synthetic.n_test=100",
]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    store = root / "mlruns"
    c = compare(
        "synthetic_forgetting",
        ["naive", "joint"],
        [0, 1],
        [*FAST, f"tracking.store={store}"],
        out_dir=root / "report",
        log=lambda _: None,
    )
    return c, store, root / "report"


def test_parent_and_one_child_per_strategy_and_seed(comparison):
    c, store, _ = comparison
    client = client_for(store)
    exp = client.get_experiment_by_name("synthetic_forgetting")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == c.parent_run_id]
    assert sorted(r.info.run_name for r in children) == [
        "joint-seed0",
        "joint-seed1",
        "naive-seed0",
        "naive-seed1",
    ]
    parent = client.get_run(c.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["seeds"] == "0,1"
    files = {a.path for a in client.list_artifacts(c.parent_run_id)}
    assert {
        "report.md",
        "table.txt",
        "accuracy_along_sequence.png",
        "accuracy_vs_data_kept.png",
    } <= files


def test_table_has_mean_std_ledger_and_time_vs_joint(comparison):
    c, _, report = comparison
    rows = table(c)
    header, naive, joint = rows
    assert header[1:3] == ["final Synthetic-0", "final Synthetic-1"]
    assert naive[0] == "naive" and joint[0] == "joint"
    assert "±" in naive[1]
    assert joint[header.index("time vs joint")] == "1.00x"
    assert naive[header.index("raw kept (samples)")] == "0"
    assert joint[header.index("raw kept (samples)")] == "540"  # 270 train samples x 2 tasks
    assert float(joint[header.index("intransigence")]) == pytest.approx(0.0)
    naive_final0 = np.mean([r.matrix["test"][-1, 0] for r in c.row("naive").results]) * 100
    assert naive[1].startswith(f"{naive_final0:.1f}")
    text = (report / "report.md").read_text()
    assert format_markdown(rows) in text and (report / "accuracy_vs_data_kept.png").stat().st_size


def test_unknown_strategy_fails_before_running(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        compare(
            "synthetic_forgetting",
            ["naive", "nope"],
            [0],
            [*FAST, f"tracking.store={tmp_path / 's'}"],
            out_dir=tmp_path / "r",
        )
    assert not (tmp_path / "s").exists()


def test_refusing_strategy_is_skipped_with_reason(tmp_path):
    c = compare(
        "synthetic_forgetting",
        ["naive", "joint"],
        [0],
        [*FAST, "retention=none", f"tracking.store={tmp_path / 's'}"],
        out_dir=tmp_path / "r",
        log=lambda _: None,
    )
    assert [r.strategy for r in c.rows] == ["naive"]
    assert "retention=none" in c.skipped["joint"]
    assert "joint" in Path(tmp_path / "r" / "report.md").read_text()
