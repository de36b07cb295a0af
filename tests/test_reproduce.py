"""Reproducing a published table (``make reproduce``): the real tables compose under their
protocols; a small table runs as a parent run with a child per cell and seed, reports ours
beside the published numbers with a verdict per cell, and resumes without running again."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.runs import small_synthetic
from helpers.stores import client

from pipeline.config import compose as conf
from pipeline.errors import ConfigError
from pipeline.keys import summary_key
from pipeline.reproduce import load_table, reproduce, tables
from pipeline.reproduce.spec import Cell, Published, Table, select
from pipeline.reproduce.verdict import Outcome, Verdict, markdown
from pipeline.store import Store

ROOT = Path(__file__).resolve().parents[1]
SHRINK = [
    "trainer.iterations=4",
    "data.synthetic.n_train=200",
    "data.synthetic.n_test=50",
    "data.batch_size=32",
    "trainer.progress_bar=false",
    "trainer.threads=1",
]


def test_every_table_composes_every_cell_under_its_protocol():
    from pipeline.reproduce import plan

    assert "vandeven2019-split-mnist" in tables()
    for name in tables():
        table = load_table(name)
        for outcome, configs in plan(table, [0, 1], []):
            if outcome.not_run:
                assert outcome.not_run.startswith("not implemented here: ") and not configs
                continue
            assert [c.seed for c in configs] == [0, 1]
            assert all(c.scenario == outcome.cell.scenario for c in configs)
    vdv = {o.cell.key: (o, c) for o, c in plan(load_table("vandeven2019-split-mnist"), [3], [])}
    assert len(vdv) == 20 and "class-dgr-distill" in vdv  # from "DGR+distill"
    for key in vdv:  # each is a metric's name on the parent run: what MLflow allows
        assert re.fullmatch(r"[a-z0-9-]+", key), key
    _, (cfg,) = vdv["class-ewc"]
    assert cfg.strategies["ewc"].lam == 1e8  # type: ignore[attr-defined]
    assert cfg.model.hidden == [400, 400] and cfg.trainer.iterations == 2000
    assert not cfg.data.normalise and cfg.data.class_order_seed == 3  # shuffled per seed
    assert cfg.tracking.run_name == "class-ewc-seed3"
    # continual-learning-baselines: targets to reach, each method under its own protocol
    split = load_table("clbaselines-split-mnist")
    permuted = load_table("clbaselines-permuted-mnist")
    assert split.rule == permuted.rule == "at_least"
    clb = {o.cell.key: c for t in (split, permuted) for o, c in plan(t, [0], [])}
    assert {
        "task-si",
        "task-rwalk",
        "class-lwf",
        "class-gdumb",
        "domain-gem",
        "domain-a-gem",
    } <= set(clb)
    (gem,) = clb["domain-gem"]
    assert len(gem.data.tasks) == 5 and gem.model.hidden == [100, 100]
    assert (gem.optim.name, gem.optim.lr, gem.optim.momentum, gem.data.batch_size) == (
        "sgd",
        0.1,
        0.0,
        10,
    )
    (lwf,) = clb["class-lwf"]
    assert lwf.model.activation == "tanh" and lwf.trainer.epochs == 21
    assert [c.tolerance for c in split.cells[:3]] == [1.0, 1.0, 1.0]


def test_verdict_is_within_the_tolerance_or_the_published_sd():
    table = Table(source="s", experiment="e", tolerance=2.0)
    cell = Cell(method="EWC", scenario="class", strategy=["ewc"], published=Published(20.0))
    assert Outcome(cell, [21.0, 23.0]).verdict(table) is Verdict.WITHIN  # mean 22.0
    assert Outcome(cell, [21.0, 23.2]).verdict(table) is Verdict.MISSES
    assert Outcome(cell, [16.0, 19.0]).verdict(table) is Verdict.MISSES  # 2.5 below
    wide = Cell(method="SI", scenario="task", strategy=["si"], published=Published(20.0, 3.0))
    assert Outcome(wide, [22.9]).verdict(table) is Verdict.WITHIN  # the published sd is larger
    assert Outcome(cell, not_run="not implemented here: dgr").verdict(table) is Verdict.NOT_RUN
    assert Outcome(cell, [1.0, 3.0]).sd == pytest.approx(np.sqrt(2))
    # a target to reach (continual-learning-baselines): any amount above, the tolerance below
    target = Table(source="s", experiment="e", tolerance=3.0, rule="at_least")
    assert Outcome(cell, [35.0]).verdict(target) is Verdict.WITHIN
    assert Outcome(cell, [17.0]).verdict(target) is Verdict.WITHIN
    assert Outcome(cell, [16.9]).verdict(target) is Verdict.MISSES
    own = Cell(method="SI", scenario="task", strategy=["si"], published=Published(97.0))
    own.tolerance = 1.0  # a cell's own tolerance wins over the table's
    assert Outcome(own, [96.0]).verdict(target) is Verdict.WITHIN
    assert Outcome(own, [95.9]).verdict(target) is Verdict.MISSES
    lines = "\n".join(markdown(target, [Outcome(own, [96.0])], [0]))
    assert "points below the published mean" in lines and "| tolerance 1 points |" in lines


@pytest.fixture
def tiny_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``conf/`` copied with one more table: three cells on the synthetic tasks (one of a
    strategy that does not exist)."""
    conf_dir = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf_dir)
    (conf_dir / "table" / "tiny.yaml").write_text(
        """\
description: a tiny table
source: nobody, never
experiment: synthetic_forgetting
tolerance: 2.0
cells:
  - {method: None, scenario: domain, strategy: [naive], published: {mean: 10.0}}
  - method: L2
    scenario: domain
    strategy: [l2]
    overrides: [strategies.l2.lam=0.5]
    published: {mean: 90.0, sd: 1.5}
    note: a written reason
  - {method: Dream, scenario: class, strategy: [dream], published: {mean: 50.0}}
"""
    )
    monkeypatch.setattr(conf, "CONF_DIR", conf_dir)
    return "tiny"


def test_a_table_runs_as_a_parent_with_a_child_per_cell_and_seed_and_resumes(
    tiny_table: str, tmp_path: Path
):
    store = tmp_path / "mlruns"
    small_synthetic(store)  # the store, from the template
    where = [f"paths.store={store}", f"paths.reports={tmp_path / 'reports'}", *SHRINK]
    done = reproduce(tiny_table, [0, 1], where, log=lambda _: None)
    mlflow = client(store)
    parent = mlflow.get_run(done.parent_run_id)
    assert parent.data.tags["kind"] == "reproduction" and parent.data.params["table"] == "tiny"
    experiment = parent.info.experiment_id
    children = mlflow.search_runs([experiment], f"tags.mlflow.parentRunId = '{done.parent_run_id}'")
    assert sorted(r.info.run_name for r in children) == [
        "domain-l2-seed0",
        "domain-l2-seed1",
        "domain-none-seed0",
        "domain-none-seed1",
    ]
    none, l2, dream = done.outcomes
    finals = {r.info.run_name: r.data.metrics[summary_key("test", "avg_acc")] for r in children}
    assert none.values == [finals["domain-none-seed0"], finals["domain-none-seed1"]]
    assert l2.values == [finals["domain-l2-seed0"], finals["domain-l2-seed1"]]
    assert dream.verdict(2.0) is Verdict.NOT_RUN and "dream" in dream.not_run
    report = done.report.read_text()
    assert "| domain | L2 | 90.0 ± 1.5 |" in report and "a written reason" in report
    assert "| class | Dream | 50.0 | - | - | not run | not implemented here: dream |" in report
    assert f"{done.within} of 3 cells within the tolerance (2 ran)." in report
    assert parent.data.metrics["reproduce/ran"] == 2.0
    # resumed: every child is read back, none runs again, the same numbers
    again = reproduce(tiny_table, [0, 1], where, resume=done.parent_run_id, log=lambda _: None)
    assert [o.values for o in again.outcomes] == [o.values for o in done.outcomes]
    assert len(mlflow.search_runs([experiment])) == len(children) + 1
    with pytest.raises(ConfigError, match="other settings"):
        reproduce(tiny_table, [0], where, resume=done.parent_run_id)
    # resumed with a seed more, two runs at a time: only seed 2 runs, each cell's in a worker
    # process, and a worker's run gives what a run in this process gives
    more = reproduce(tiny_table, [0, 1, 2], where, resume=done.parent_run_id, jobs=2, log=print)
    assert [o.values[:2] for o in more.outcomes[:2]] == [none.values, l2.values]
    assert len(mlflow.search_runs([experiment])) == len(children) + 1 + 2
    assert mlflow.get_run(done.parent_run_id).data.tags["seeds"] == "0,1,2"
    assert "over seeds 0, 1, 2;" in more.report.read_text()
    solo = reproduce(tiny_table, [2], where, log=lambda _: None)
    assert [o.values for o in solo.outcomes[:2]] == [o.values[2:] for o in more.outcomes[:2]]
    with pytest.raises(ConfigError, match=r"seeds '0,1,2' \(now '0,1' leaves out \[2\]\)"):
        reproduce(tiny_table, [0, 1], where, resume=done.parent_run_id)
    # a cell whose method settings changed since runs again when resumed; the others are read
    table = conf.CONF_DIR / "table" / "tiny.yaml"
    table.write_text(table.read_text().replace("lam=0.5", "lam=0.25"))
    lines: list[str] = []
    redone = reproduce(tiny_table, [0, 1, 2], where, resume=done.parent_run_id, log=lines.append)
    assert redone.outcomes[0].run_ids == more.outcomes[0].run_ids  # None: read back
    assert not set(redone.outcomes[1].run_ids) & set(more.outcomes[1].run_ids)  # L2: again
    assert any("(strategies.l2.lam 0.5, now 0.25); running it again" in line for line in lines)


def test_bad_tables_and_cells_are_refused_in_one_line(tiny_table: str, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"conf/table/nothing.yaml: no such table config"):
        load_table("nothing")
    path = conf.CONF_DIR / "table" / "bad.yaml"
    text = (conf.CONF_DIR / "table" / "tiny.yaml").read_text()
    for broken, message in [
        (text.replace("tolerance: 2.0", "tolerence: 2.0"), "unknown key 'tolerence'"),
        (text.replace("scenario: class", "scenario: classy"), "cell classy-dream: scenario"),
        (text.replace("synthetic_forgetting", "nope"), "no experiment 'nope'"),
        (text.replace("lam=0.5", "lam=-1"), "cell domain-l2: strategies.l2.lam"),
        (text.replace("tolerance: 2.0", "tolerance: 2.0\nrule: nearly"), "rule 'nearly' is not"),
        (
            text.replace("note: a written reason", "tolerance: -1"),
            "cell domain-l2: tolerance must be in",
        ),
        (
            text.replace("note: a written reason", "tune: {trials: 0}"),
            "cell domain-l2: tune.trials must be at least 1",
        ),
        (
            text.replace("note: a written reason", "tune: {sweep: nope}"),
            r"cell domain-l2: tune.sweep: no conf/sweep/nope.yaml",
        ),
    ]:
        path.write_text(broken)
        with pytest.raises(ConfigError, match=message) as e:
            if "lam" in message:
                reproduce("bad", [0], [f"paths.store={tmp_path / 'none'}"])
            load_table("bad")
        assert "\n" not in str(e.value)
    assert not (tmp_path / "none").exists()  # refused before any run


def test_cells_select_a_part_of_the_table_in_its_order():
    table = load_table("vandeven2019-split-mnist")
    part = select(table, ["domain-ewc", "class-lwf"])
    assert [c.key for c in part.cells] == ["class-lwf", "domain-ewc"]
    assert select(table, []) is table and len(table.cells) == 20  # the table is not changed
    with pytest.raises(ConfigError, match=r"has no cell domain-ewk \(its cells: class-none,"):
        select(table, ["domain-ewc", "domain-ewk"])


def test_a_part_run_first_is_resumed_by_the_whole_table(tiny_table: str, tmp_path: Path):
    store = tmp_path / "mlruns"
    small_synthetic(store)
    where = [f"paths.store={store}", f"paths.reports={tmp_path / 'reports'}", *SHRINK]
    part = reproduce(tiny_table, [0], where, cells=["domain-none"], log=lambda _: None)
    assert [len(o.values) for o in part.outcomes] == [1]
    assert part.report.read_text().count("Only these cells of the table ran: domain-none.") == 1
    whole = reproduce(tiny_table, [0], where, resume=part.parent_run_id, log=lambda _: None)
    assert whole.outcomes[0].run_ids == part.outcomes[0].run_ids  # read back, not run again
    assert [len(o.values) for o in whole.outcomes] == [1, 1, 0]
    assert "Only these cells" not in whole.report.read_text()


def test_a_tuned_cell_takes_the_best_trial_of_a_study_on_validation(
    tiny_table: str, tmp_path: Path
):
    """``tune:``: a study on the validation split (trial 0: the published values) chooses the
    cell's hyperparameters before its runs, the report says so, and a resumed reproduction
    finds the study finished and runs nothing again."""
    from pipeline import runfiles
    from pipeline.sweep.study import load_study
    from pipeline.tracking import Run

    table = conf.CONF_DIR / "table" / "tiny.yaml"
    table.write_text(
        table.read_text().replace("a written reason", "a written reason\n    tune: {trials: 3}")
    )
    store, studies = tmp_path / "mlruns", tmp_path / "studies.jsonl"
    small_synthetic(store)
    where = [f"paths.store={store}", f"paths.studies={studies}", *SHRINK]
    where.append(f"paths.reports={tmp_path / 'reports'}")
    done = reproduce(tiny_table, [0, 1], where, cells=["domain-l2"], log=lambda _: None)
    study = load_study("reproduce-tiny-domain-l2", str(studies))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and trials[0].params == {"strategies.l2.lam": 0.5}  # the published
    lam = study.best_trial.params["strategies.l2.lam"]
    (l2,) = done.outcomes
    assert l2.tuned.startswith(
        "tuned: an Optuna study on the validation split (3 trials, study "
        f"reproduce-tiny-domain-l2) chose strategies.l2.lam={lam}"
    )
    for run_id in l2.run_ids:  # every seed's run took the chosen value
        config = runfiles.read_config(Run.get(Store.at(store), run_id))
        assert config["strategies"]["l2"]["lam"] == lam
    assert "| tuned: an Optuna study" in done.report.read_text()
    again = reproduce(
        tiny_table, [0, 1], where, cells=["domain-l2"], resume=done.parent_run_id, log=print
    )
    assert len(load_study("reproduce-tiny-domain-l2", str(studies)).trials) == 3
    assert again.outcomes[0].run_ids == l2.run_ids and again.outcomes[0].tuned == l2.tuned
    # a study of two objectives has no best trial to take
    table.write_text(table.read_text().replace("tune: {trials: 3}", "tune: {sweep: default}"))
    with pytest.raises(ConfigError, match=r"cell domain-l2: tune.sweep: .* objective 'pareto'"):
        reproduce(tiny_table, [0], [f"paths.store={tmp_path / 'none'}"])


@pytest.mark.slow  # 70 s: two workers start, train and are stopped; `make test-slow` runs it
def test_sigterm_stops_the_workers_and_starts_no_queued_run(tiny_table: str, tmp_path: Path):
    """``JOBS=2`` stopped by SIGTERM while both workers train: the two runs end KILLED (the
    parent too, resumable), the workers end, and none of the queued runs starts (the process
    pool catches a task's SystemExit and would hand the worker the next run)."""
    import multiprocessing
    import os
    import signal
    import threading
    import time

    from pipeline.exiting import unwind_on_sigterm

    store = tmp_path / "mlruns"
    small_synthetic(store)
    slow = [o for o in SHRINK if not o.startswith("trainer.iterations")]
    where = [f"paths.store={store}", *slow, "trainer.iterations=1000000"]
    mlflow = client(store)
    sent: list[float] = []
    returned = threading.Event()

    def stop_when_both_train() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            runs = mlflow.search_runs([e.experiment_id for e in mlflow.search_experiments()])
            if sum(r.info.status == "RUNNING" and "-seed" in r.info.run_name for r in runs) >= 2:
                sent.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGTERM)
                break
            time.sleep(0.5)
        if not returned.wait(90):  # a worker took a queued run: fail, do not hang
            for worker in multiprocessing.active_children():
                worker.kill()

    previous = signal.getsignal(signal.SIGTERM)
    unwind_on_sigterm()
    try:
        threading.Thread(target=stop_when_both_train, daemon=True).start()
        with pytest.raises(SystemExit) as stopped:
            reproduce(tiny_table, [0, 1], where, jobs=2, log=lambda _: None)
    finally:
        returned.set()
        signal.signal(signal.SIGTERM, previous)
    assert sent and stopped.value.code == 143
    assert time.monotonic() - sent[0] < 60  # not after a queued run's million steps
    assert multiprocessing.active_children() == []
    runs = mlflow.search_runs([e.experiment_id for e in mlflow.search_experiments()])
    children = [r for r in runs if "-seed" in r.info.run_name]
    assert len(children) == 2 and all(r.info.status == "KILLED" for r in children)
    (parent,) = [r for r in runs if r.info.run_name.startswith("reproduce-")]
    assert parent.info.status == "KILLED"


def test_a_stopped_pool_raises_nothing_in_its_own_thread() -> None:
    """Ctrl-C with runs queued: the pool, broken by its stopped workers, fails the futures it
    holds; Python 3.11's raised InvalidStateError in its manager thread on those the caller had
    cancelled (CPython gh-107219), a traceback on the terminal (5 stops in 13 here)."""
    import multiprocessing
    import threading
    import time
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.reproduce import stop_workers

    errors: list[BaseException | None] = []
    hook, threading.excepthook = threading.excepthook, lambda a: errors.append(a.exc_value)
    try:
        for _ in range(3):
            with ProcessPoolExecutor(2, multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(time.sleep, 60) for _ in range(10)]
                time.sleep(2)  # both workers sleep in a task; the rest wait
                stop_workers()
            assert all(f.done() for f in futures)
    finally:
        threading.excepthook = hook
    assert errors == []
