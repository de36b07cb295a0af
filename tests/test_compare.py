"""`make compare` on synthetic tasks: parent run, child runs, table, report files."""

from pathlib import Path

import numpy as np
import pytest
from helpers.stores import client as client_for

from pipeline.compare import compare, configs_of
from pipeline.compare.table import (
    Comparison,
    Row,
    format_markdown,
    per_seed,
    scenarios_table,
    table,
)
from pipeline.errors import ConfigError
from pipeline.results import SequenceResult, TaskRecord
from pipeline.store import Store
from pipeline.tracking import Run

FAST = [
    "trainer.progress_bar=false",
    "tracking.figures=false",
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
        [*FAST, f"paths.store={store}"],
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
            [*FAST, f"paths.store={tmp_path / 's'}"],
            out_dir=tmp_path / "r",
        )
    assert not (tmp_path / "s").exists()


def test_strategy_override_goes_only_to_the_configs_that_have_the_strategy():
    configs, _ = configs_of(
        "synthetic_forgetting",
        ["naive", "replay", "ewc+replay"],
        [0, 1],
        [*FAST, "strategies.replay.size=1100", "strategies.ewc.lam=7"],
    )
    assert all(c.strategies["replay"].size == 1100 for c in configs["replay"])
    assert all("replay" not in c.strategies for c in configs["naive"])
    both = configs["ewc+replay"][0]
    assert both.strategies["replay"].size == 1100 and both.strategies["ewc"].lam == 7
    assert "ewc" not in configs["replay"][0].strategies


def test_strategy_override_of_no_compared_strategy_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"strategies\.replay\.size=1100") as e:
        compare(
            "synthetic_forgetting",
            ["naive"],
            [0],
            [*FAST, "strategies.replay.size=1100", f"paths.store={tmp_path / 's'}"],
            out_dir=tmp_path / "r",
        )
    assert "\n" not in str(e.value) and "not compared" in str(e.value)
    assert not (tmp_path / "s").exists()


def test_bad_value_of_a_compared_strategy_is_still_refused():
    with pytest.raises(ConfigError, match=r"strategies\.replay\.size"):
        configs_of("synthetic_forgetting", ["naive", "replay"], [0], ["strategies.replay.size=-3"])


def test_refusing_strategy_is_skipped_with_reason(tmp_path):
    c = compare(
        "synthetic_forgetting",
        ["naive", "joint"],
        [0],
        [*FAST, "retention=none", f"paths.store={tmp_path / 's'}"],
        out_dir=tmp_path / "r",
        log=lambda _: None,
    )
    assert [r.strategy for r in c.rows] == ["naive"]
    assert "retention=none" in c.skipped["joint"]
    assert "joint" in Path(tmp_path / "r" / "report.md").read_text()


def test_resume_reads_back_finished_runs_and_reruns_cut_off_ones(tmp_path):
    store = tmp_path / "mlruns"
    args = ("synthetic_forgetting", ["naive", "joint"], [0], [*FAST, f"paths.store={store}"])
    first = compare(*args, out_dir=tmp_path / "r1", log=lambda _: None)
    # A crash (SIGKILL) during joint's run leaves it and the parent RUNNING.
    client = client_for(store)
    joint_before = first.row("joint").results[0].run_id
    client.update_run(joint_before, status="RUNNING")
    client.update_run(first.parent_run_id, status="RUNNING")

    lines: list[str] = []
    again = compare(*args, out_dir=tmp_path / "r2", log=lines.append, resume=first.parent_run_id)

    naive_before, naive_after = first.row("naive").results[0], again.row("naive").results[0]
    assert naive_after.run_id == naive_before.run_id  # read back, not trained again
    assert any("naive, seed 0: finished before" in line for line in lines)
    for s in naive_before.matrix:
        np.testing.assert_allclose(naive_after.matrix[s], naive_before.matrix[s])
        assert naive_after.summary[s] == pytest.approx(naive_before.summary[s])
    assert naive_after.records == naive_before.records
    assert table(again)[1][:-1] == table(first)[1][:-1]  # all but the time relative to joint
    joint_after = again.row("joint").results[0].run_id
    assert joint_after != joint_before
    assert client.get_run(joint_before).info.status == "KILLED"
    assert client.get_run(joint_after).info.status == "FINISHED"
    assert again.parent_run_id == first.parent_run_id
    assert client.get_run(first.parent_run_id).info.status == "FINISHED"
    assert (tmp_path / "r2" / "report.md").exists()


def test_resume_refuses_another_comparison_before_running(tmp_path):
    store = tmp_path / "mlruns"
    fast = [*FAST, f"paths.store={store}"]
    c = compare("synthetic_forgetting", ["naive"], [0], fast, tmp_path / "r", lambda _: None)
    before = len(client_for(store).search_runs([c.rows[0].results[0].experiment_id]))
    with pytest.raises(ConfigError, match=r"seeds '0' \(now '0,1'\)"):
        compare("synthetic_forgetting", ["naive"], [0, 1], fast, resume=c.parent_run_id)
    with pytest.raises(ConfigError, match="not a comparison"):
        compare("synthetic_forgetting", ["naive"], [0], fast, resume=c.rows[0].results[0].run_id)
    with pytest.raises(ConfigError, match="no MLflow run whose id starts with 'feedface'"):
        compare("synthetic_forgetting", ["naive"], [0], fast, resume="feedface")
    assert len(client_for(store).search_runs([c.rows[0].results[0].experiment_id])) == before


def test_resume_reruns_a_finished_run_whose_result_is_gone(tmp_path):
    store = tmp_path / "mlruns"
    args = ("synthetic_forgetting", ["naive"], [0], [*FAST, f"paths.store={store}"])
    first = compare(*args, out_dir=tmp_path / "r1", log=lambda _: None)
    before = first.rows[0].results[0].run_id
    Run.get(Store.at(store), before).delete_file("accuracy_matrix.json")
    lines: list[str] = []
    again = compare(*args, out_dir=tmp_path / "r2", log=lines.append, resume=first.parent_run_id)
    assert any("no readable result" in line and "running it again" in line for line in lines)
    assert again.rows[0].results[0].run_id != before


def test_resume_reruns_a_finished_run_whose_method_settings_changed(tmp_path, monkeypatch):
    """A default changed since the comparison was cut off (here L2's ``lam``): resumed, its
    runs train again with it, and the log says which setting differs; the others are read."""
    import dataclasses

    from pipeline.strategies.l2 import L2Params

    store = tmp_path / "mlruns"
    args = ("synthetic_forgetting", ["naive", "l2"], [0], [*FAST, f"paths.store={store}"])
    first = compare(*args, out_dir=tmp_path / "r1", log=lambda _: None)
    lam = next(f for f in dataclasses.fields(L2Params) if f.name == "lam")
    monkeypatch.setattr(lam, "default", 0.25)
    lines: list[str] = []
    again = compare(*args, out_dir=tmp_path / "r2", log=lines.append, resume=first.parent_run_id)
    assert again.row("naive").results[0].run_id == first.row("naive").results[0].run_id
    assert again.row("l2").results[0].run_id != first.row("l2").results[0].run_id
    assert any("(strategies.l2.lam 0.1, now 0.25); running it again" in line for line in lines)


def test_a_key_added_at_its_default_is_no_changed_setting(tmp_path):
    """``changed_settings``: a key the old run did not log (added since) counts only when its
    value now is not its default; a logged value counts when it differs."""
    from helpers.runs import small_synthetic

    from pipeline.compare import changed_settings
    from pipeline.experiment import compose

    small_synthetic(tmp_path / "mlruns")
    store = Store.at(tmp_path / "mlruns")
    mlflow = client_for(tmp_path / "mlruns")
    experiment = mlflow.create_experiment("settings")

    def run_with(params: dict[str, str]) -> str:
        run_id = mlflow.create_run(experiment).info.run_id
        for key, value in params.items():
            mlflow.log_param(run_id, key, value)
        return run_id

    default = compose("synthetic_forgetting", ["strategy=[l2]"])
    other = compose("synthetic_forgetting", ["strategy=[l2]", "strategies.l2.lam=0.5"])
    assert changed_settings(store, run_with({"strategies.l2.lam": "0.1"}), default) == ""
    assert changed_settings(store, run_with({}), default) == ""  # added since, at its default
    assert changed_settings(store, run_with({}), other) == "strategies.l2.lam unset, now 0.5"
    logged = run_with({"strategies.l2.lam": "0.1"})
    assert changed_settings(store, logged, other) == "strategies.l2.lam 0.1, now 0.5"


def _result(run_id: str, test: list[list[float]], fwt: float, kept: int) -> SequenceResult:
    r = SequenceResult(run_id, "0", ["a", "b"], ["A", "B"], {"test": np.array(test)}, {})
    r.summary = {"test": {"avg_acc": float(np.mean(test[-1])), "fwt": fwt}}
    r.records = [TaskRecord(1.0, 10, 1.0, {"raw_samples": kept, "raw_bytes": 0, "state_bytes": 0})]
    return r


def test_per_seed_rows_are_each_task_when_trained_and_at_the_end_with_their_mean():
    rows = [
        Row(
            "naive",
            [
                _result("0", [[0.99, 0.1], [0.3, 0.9]], 0.02, 0),
                _result("1", [[0.97, 0.1], [0.4, 0.8]], -0.01, 0),
            ],
        )
    ]
    c = Comparison("x", ["a", "b"], ["A", "B"], "domain", [0, 1], rows, {})
    assert per_seed(c) == [
        ["seed", "A", "B", "A at the end", "FWT"],
        ["0", "99.0", "90.0", "30.0", "+2.0"],
        ["1", "97.0", "80.0", "40.0", "-1.0"],
        ["mean", "98.0", "85.0", "35.0", "+0.5"],
    ]


def test_scenarios_side_by_side_with_what_each_strategy_keeps():
    def one(scenario: str, acc: float) -> Comparison:
        rows = [
            Row("naive", [_result("n", [[1, 0], [0, acc]], 0, 0)]),
            Row("replay", [_result("r", [[1, 0], [acc, acc]], 0, 500)]),
        ]
        return Comparison("x", ["a", "b"], ["A", "B"], scenario, [0], rows, {})

    got = scenarios_table({"task": one("task", 1.0), "class": one("class", 0.5)})
    assert got == [
        ["strategy", "task-IL", "class-IL", "raw samples kept"],
        ["naive", "50.0 ± 0.0", "25.0 ± 0.0", "0"],
        ["replay", "100.0 ± 0.0", "50.0 ± 0.0", "500"],
    ]
