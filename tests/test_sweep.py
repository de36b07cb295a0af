"""Sweeps: studies, trials as MLflow child runs, the never-peek protocol, resuming after a
crash, parallel workers, failing and pruned trials, and choosing from the front."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers.stores import client as client_for
from optuna.trial import TrialState

from pipeline.best import best as choose_and_test
from pipeline.best import choose, format_best, knee, parse_rule
from pipeline.cli import main
from pipeline.config import compose as conf
from pipeline.config.paths import REPO_ROOT, PathsConfig
from pipeline.data.datamodule import ContinualDataModule
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.processes import process_id
from pipeline.sweep import sweep
from pipeline.sweep.config import compose_sweep
from pipeline.sweep.liveness import Liveness
from pipeline.sweep.report import closing_hint
from pipeline.sweep.space import search_space
from pipeline.sweep.study import PARENT_ATTR, create_or_resume, load_study
from pipeline.sweep.trials import counted
from pipeline.sweep.workers import run_worker

# Each trial: two synthetic tasks, 2 batches of one epoch (about a second).
SHRINK = [
    "trainer.epochs=1",
    "trainer.max_batches=2",
    "trainer.threads=1",
    "data.synthetic.n_train=200",
    "data.synthetic.n_test=100",
    "trainer.validate_every_epoch=false",
]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private store and reports folder, and a copy of conf/ (make best writes into
    conf/experiment/)."""
    shutil.copytree(conf.CONF_DIR, tmp_path / "conf")
    monkeypatch.setattr(conf, "CONF_DIR", tmp_path / "conf")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    return tmp_path


def overrides(root: Path, *extra: str) -> list[str]:
    return [f"paths.store={root / 'mlruns'}", f"paths.reports={root / 'reports'}", *SHRINK, *extra]


def paths(root: Path) -> PathsConfig:
    """The paths the overrides above give (a worker's or `make best`'s)."""
    return PathsConfig(store=str(root / "mlruns"), reports=str(root / "reports"))


def journal(root: Path) -> str:
    return str(root / "mlruns" / "optuna" / "journal.log")


def children(root: Path, parent: str) -> list:
    client = client_for(root / "mlruns")
    exp = client.get_experiment_by_name("synthetic_forgetting")
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")


def test_three_trials_give_a_parent_run_three_children_and_a_front(here: Path) -> None:
    study = sweep("synthetic_forgetting", ["ewc"], "default", ["trials=3"], overrides(here))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].user_attrs["default"]  # the defaults ran first, to compare the front with
    assert trials[0].params["optim.lr"] == pytest.approx(3e-3)
    assert set(trials[0].params) == {
        "optim.lr",
        "strategies.ewc.lam",
        "strategies.ewc.fisher_samples",
    }
    client = client_for(here / "mlruns")
    parent = client.get_run(study.user_attrs[PARENT_ATTR])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["protocol"] == "validation"
    assert parent.data.params["objectives"] == "plasticity (maximize), retention (maximize)"
    assert parent.data.metrics["trials/complete"] == 3
    kids = children(here, parent.info.run_id)
    assert sorted(int(r.data.tags["sweep.trial"]) for r in kids) == [0, 1, 2]
    front = {t.number for t in study.best_trials}
    assert front
    for r in kids:
        n = int(r.data.tags["sweep.trial"])
        assert r.data.tags["optuna.state"] == "COMPLETE"
        assert r.data.tags["pareto"] == str(n in front).lower()
        assert "val/synthetic0" in r.data.metrics
        assert not [k for k in r.data.metrics if k.startswith("test/")]  # never evaluated
        # one unit: the study's scores are the run's metrics, in percent
        attrs = trials[n].user_attrs
        assert attrs["plasticity"] == r.data.metrics["val/plasticity"] > 1
        assert trials[n].values == [attrs["plasticity"], attrs["retention"]]
        assert r.data.params["strategies.ewc.lam"] == str(trials[n].params["strategies.ewc.lam"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.png", "history_plasticity.png", "summary.json", "trials.csv"} <= (
        artifacts
    )
    assert (here / "reports" / "sweep-synthetic_forgetting-ewc" / "pareto_front.png").is_file()
    # Running it again resumes: nothing left to do, nothing duplicated.
    again = sweep("synthetic_forgetting", ["ewc"], "default", ["trials=3"], overrides(here))
    assert len(again.get_trials()) == 3


def test_no_test_split_is_read_during_a_sweep(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    original = ContinualDataModule.loader

    def spy(self, task, split, batch_size=None):  # type: ignore[no-untyped-def]
        read.append(split)
        return original(self, task, split, batch_size)

    monkeypatch.setattr(ContinualDataModule, "loader", spy)
    sweep("synthetic_forgetting", ["l2"], "default", ["trials=2"], overrides(here))
    assert read and "val" in read
    assert "test" not in read
    # Positive control: make best's final evaluation is where the test split is read.
    choose_and_test("synthetic_forgetting-l2", paths(here), "knee", with_default=False)
    assert "test" in read
    monkeypatch.undo()


def test_best_writes_a_config_that_reruns_the_trial(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = here / "conf"
    sweep("synthetic_forgetting", ["si"], "default", ["trials=3"], overrides(here))
    out = choose_and_test("synthetic_forgetting-si", paths(here), "knee")
    path = Path(out["config"])
    assert path == conf / "experiment" / "best" / "synthetic_forgetting-si.yaml"
    # where it lands in the repository, git ignores it: no command writes a tracked file
    mirror = REPO_ROOT / path.relative_to(here)
    ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", str(mirror)])
    assert ignored.returncode == 0, f"{mirror.relative_to(REPO_ROOT)} is not git-ignored"
    cfg = compose("best/synthetic_forgetting-si")
    study = load_study("synthetic_forgetting-si", journal(here))
    chosen = study.trials[out["trial"]]
    assert cfg.optim.lr == pytest.approx(chosen.params["optim.lr"])
    assert cfg.strategies["si"].c == pytest.approx(chosen.params["strategies.si.c"])
    assert cfg.strategy == ["si"] and cfg.trainer.max_batches == 2
    assert set(out["test"]) == {"chosen", "default"}
    chosen_run = client_for(here / "mlruns").get_run(out["test"]["chosen"]["mlflow_run_id"])
    assert out["test"]["chosen"]["avg_acc"] == chosen_run.data.metrics["test/avg_acc"] > 1
    text = format_best(out)
    assert "defaults" in text and "test retention" in text and "val plasticity" in text
    # the chosen test run's model, in the Model Registry under the study's name
    champion = client_for(here / "mlruns").get_model_version_by_alias(
        "synthetic_forgetting-si", "champion"
    )
    assert champion.run_id == chosen_run.info.run_id
    assert champion.tags["pipeline.study"] == "synthetic_forgetting-si"
    assert "model: models:/synthetic_forgetting-si@champion (version 1)" in text
    runs = children(here, study.user_attrs[PARENT_ATTR])
    kinds = sorted(r.data.tags.get("kind", "") for r in runs)
    assert kinds.count("trial") == 3 and "best-chosen" in kinds and "best-default" in kinds
    capsys.readouterr()
    where = [f"paths.store={here / 'mlruns'}", f"paths.reports={here / 'reports'}"]
    assert main(["best", "synthetic_forgetting-si", "--no-eval", *where]) == 0
    assert "rerun it: make run EXP=best/synthetic_forgetting-si" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Fixed parameter:UserWarning")
def test_a_diverging_trial_is_recorded_and_the_study_goes_on(here: Path) -> None:
    ovr = overrides(here, "optim.name=sgd", "trainer.max_batches=30", "data.batch_size=4")
    cfg = compose_sweep("default", ["trials=2", "defaults_first=false"])
    study, _, _ = create_or_resume(
        "synthetic_forgetting", ["l2"], cfg, ovr, "diverge", log=lambda m: None
    )
    # SGD at lr 10 with a pull of 10 to task 0's weights: each step multiplies the distance to
    # the anchor by 1 - 2 * 10 * 10 = -199, and float32 overflows within 17 steps of task 1.
    study.enqueue_trial({"optim.lr": 10.0, "strategies.l2.lam": 10.0})
    run_worker("diverge", paths(here), log=lambda m: None)
    trials = load_study("diverge", journal(here)).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "DivergenceError" in trials[0].user_attrs["fail_reason"]
    assert counted(trials) == 2  # a failure of its own counts: it is not retried
    client = client_for(here / "mlruns")
    (failed,) = [
        r
        for r in children(here, study.user_attrs[PARENT_ATTR])
        if r.data.tags["sweep.trial"] == "0"
    ]
    assert failed.info.status == "FAILED" and failed.data.tags["optuna.state"] == "FAIL"
    assert "DivergenceError" in client.get_run(failed.info.run_id).data.tags["error"]


def test_single_objective_prunes_a_poor_trial_after_the_first_task(here: Path) -> None:
    cfg = compose_sweep("accuracy", ["trials=2", "defaults_first=false", "pruner_startup_trials=1"])
    study, _, _ = create_or_resume(
        "synthetic_forgetting",
        ["l2"],
        cfg,
        overrides(here, "trainer.max_batches=4"),
        "prune",
        log=lambda m: None,
    )
    study.enqueue_trial({"optim.lr": 3e-3, "strategies.l2.lam": 0.01})
    study.enqueue_trial({"optim.lr": 1e-4, "strategies.l2.lam": 0.01})  # learns nothing yet
    run_worker("prune", paths(here), log=lambda m: None)
    t0, t1 = load_study("prune", journal(here)).get_trials()
    assert t0.state == TrialState.COMPLETE
    assert t1.state == TrialState.PRUNED and list(t1.intermediate_values) == [0]
    assert "pruner" in t1.user_attrs["prune_reason"]
    (run,) = [
        r
        for r in children(here, study.user_attrs[PARENT_ATTR])
        if r.data.tags["sweep.trial"] == "1"
    ]
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"


def _sweep_in_child(root: str) -> None:
    """A sweep in a forked process (no fresh imports: the test stays fast) whose trials stall
    after their first task, so that the kill surely lands inside a trial."""
    import pipeline.runner

    real = pipeline.runner.run_sequence

    def stalling(*args, on_task=None, **kwargs):  # type: ignore[no-untyped-def]
        def stall(index, rows):  # type: ignore[no-untyped-def]
            if on_task is not None:
                on_task(index, rows)
            (Path(root) / "stalled").touch()
            time.sleep(600)

        return real(*args, on_task=stall, **kwargs)

    pipeline.runner.run_sequence = stalling
    sweep(
        "synthetic_forgetting",
        ["l2"],
        "default",
        ["trials=2"],
        overrides(Path(root)),
        log=lambda m: None,
    )


def test_a_sweep_killed_mid_trial_resumes_without_duplicates(here: Path) -> None:
    proc = multiprocessing.get_context("fork").Process(target=_sweep_in_child, args=(str(here),))
    proc.start()
    deadline = time.time() + 120
    victim = None
    while time.time() < deadline and victim is None and proc.is_alive():
        time.sleep(0.2)
        try:
            study = load_study("synthetic_forgetting-l2", journal(here))
        except ConfigError:
            continue
        running = study.get_trials(states=(TrialState.RUNNING,))
        # Kill once the trial has finished its first task (its MLflow run exists too).
        if running and (here / "stalled").exists():
            victim = running[0]
    assert victim is not None, "no trial started within 120 s"
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    study = load_study("synthetic_forgetting-l2", journal(here))
    assert study.trials[victim.number].state == TrialState.RUNNING, "killed after the trial"
    lines: list[str] = []
    sweep(
        "synthetic_forgetting",
        ["l2"],
        "default",
        ["trials=2"],
        overrides(here),
        log=lines.append,
    )
    assert any(line.startswith(f"trial {victim.number}: crashed") for line in lines), lines
    trials = load_study("synthetic_forgetting-l2", journal(here)).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    crashed = trials[victim.number]
    assert crashed.state == TrialState.FAIL and crashed.user_attrs["crashed"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    client = client_for(here / "mlruns")
    parent = study.user_attrs[PARENT_ATTR]
    runs = {r.data.tags["sweep.trial"]: r for r in children(here, parent)}
    assert runs[str(victim.number)].info.status == "FAILED"
    assert all(runs[str(t.number)].info.status == "FINISHED" for t in complete)
    assert client.get_run(parent).info.status == "FINISHED"


def test_two_workers_share_a_study_without_lost_or_duplicated_trials(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real path of `make sweep WORKERS=2`: two `python -m pipeline sweep-worker` processes.
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", str(repo))
    monkeypatch.setenv("PIPELINE_CONF_DIR", str(conf.CONF_DIR))
    lines: list[str] = []
    study = sweep(
        "synthetic_forgetting",
        ["l2"],
        "default",
        ["trials=4"],
        overrides(here),
        workers=2,
        log=lines.append,
    )
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    runs = children(here, study.user_attrs[PARENT_ATTR])
    assert sorted(int(r.data.tags["sweep.trial"]) for r in runs) == [0, 1, 2, 3]
    assert len({t.user_attrs["worker"] for t in trials}) >= 1


def test_worker_liveness() -> None:
    def frozen(worker: str, beat: float | None, number: int = 0) -> optuna.trial.FrozenTrial:
        attrs = {"worker": worker} | ({"heartbeat": beat} if beat is not None else {})
        t = optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.0], user_attrs=attrs)
        t._trial_id = number
        return t

    import socket

    clock = [0.0]
    live = Liveness(60, clock=lambda: clock[0])
    assert live.alive(frozen(process_id(), None))  # this very process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not live.alive(frozen(f"{socket.gethostname()}:{dead.pid}:", None))
    # killed, its parent (the sweep) not yet waiting for it: a zombie is a dead worker too
    zombie = subprocess.Popen(["sleep", "60"])
    zombie.kill()
    for _ in range(100):
        stat = Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] == "Z":
            break
        time.sleep(0.05)
    owner = f"{socket.gethostname()}:{zombie.pid}:{stat[19]}"  # its very pid and start time
    assert not live.alive(frozen(owner, None))
    zombie.wait()
    # Another host: only a heartbeat that stops changing for 60 s of our own clock is death,
    # whatever that host's clock says (here: an hour behind ours).
    assert live.alive(frozen("elsewhere:1:1", -3600.0, 1))
    clock[0] = 59
    assert live.alive(frozen("elsewhere:1:1", -3600.0, 1))
    clock[0] = 61
    assert not live.alive(frozen("elsewhere:1:1", -3600.0, 1))
    assert live.alive(frozen("elsewhere:1:1", -3580.0, 1))  # it beat again: alive
    clock[0] = 61 + 59
    assert live.alive(frozen("elsewhere:1:1", -3580.0, 1))
    # died between being asked for and its first beat: dead after the same grace
    assert live.alive(frozen("elsewhere:2:1", None, 2))
    clock[0] = 61 + 59 + 61
    assert not live.alive(frozen("elsewhere:2:1", None, 2))


def test_knee_and_rules() -> None:
    def t(p: float, r: float, **attrs: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(state=TrialState.COMPLETE, values=[p, r], user_attrs=attrs)

    front = [t(99, 20), t(97, 80), t(90, 85), t(70, 90)]
    assert knee(front, ["maximize", "maximize"]) is front[1]
    assert knee(front[:1], ["maximize", "maximize"]) is front[0]
    # Two points: the one nearer the ideal point (99, 85).
    assert knee([front[0], front[2]], ["maximize", "maximize"]) is front[2]
    assert str(parse_rule("max:plasticity, forgetting<=5")) == "max:plasticity,forgetting<=5"
    for bad in ("kne", "max:speed", "max:plasticity,forgetting<5", "max:plasticity,x<=1"):
        with pytest.raises(ConfigError, match="RULE"):
            parse_rule(bad)
    study = optuna.create_study(directions=["maximize", "maximize"])
    for p, r, f in ((99, 20, 79), (97, 80, 17), (90, 85, 5)):  # in percent, as trials record
        study.add_trial(t(p, r, plasticity=p, retention=r, forgetting=f))
    assert choose(study, parse_rule("max:plasticity,forgetting<=10")).values == [90, 85]
    assert choose(study, parse_rule("max:plasticity")).values == [99, 20]
    with pytest.raises(ConfigError, match="no complete trial"):
        choose(study, parse_rule("max:plasticity,forgetting<=1"))
    with pytest.raises(ConfigError, match=r"RULE=best: .* has 2 objectives"):
        choose(study, parse_rule("best"))  # a front has no single best trial


def test_bad_input_is_one_line_and_exit_2(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a mistake in a case must not run a sweep into the repository's reports/
    at = [f"paths.store={here / 'mlruns'}", f"paths.reports={here / 'reports'}"]
    ewc = ["sweep", "synthetic_forgetting", "--strategy", "ewc", *at]
    cases = [
        [*ewc, "--sweep", "nope"],
        [*ewc, "--set", "trials=0"],
        [*ewc, "--trials", "0"],
        [*ewc, "--set", "objective=x"],
        ["sweep", "synthetic_forgetting", "--strategy", "nope", *at],
        [*ewc, "bogus.key=1"],
        [*ewc, f"paths.studies={here}"],  # a directory is no journal file
        ["best", "no-such-study", *at],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, (argv, err)
    assert not (here / "mlruns" / "optuna").exists()  # no study was created


def test_space_and_resume_rules(here: Path) -> None:
    cfg = compose_sweep("default")
    space = search_space(["ewc"], cfg)
    assert space["optim.lr"].log and space["strategies.ewc.lam"].log
    cfg.space["strategies.si.c"] = {"type": "float", "low": 1.0, "high": 2.0}
    with pytest.raises(ConfigError, match="not a parameter of the swept"):
        search_space(["ewc"], cfg)
    cfg.space = {"strategies.ewc.fisher_samples": None}
    assert "strategies.ewc.fisher_samples" not in search_space(["ewc"], cfg)
    base = compose_sweep("default", ["trials=1"])
    create_or_resume("synthetic_forgetting", ["ewc"], base, overrides(here), "s", log=print)
    other = compose_sweep("default", ["trials=1", "stability=forgetting"])
    with pytest.raises(ConfigError, match="other settings"):
        create_or_resume("synthetic_forgetting", ["ewc"], other, overrides(here), "s", log=print)
    more = compose_sweep("default", ["trials=5"])  # more trials is a resume, not a conflict
    study, settings, _ = create_or_resume(
        "synthetic_forgetting", ["ewc"], more, overrides(here), "s", log=print
    )
    assert settings.config.trials == 5
    assert json.loads(json.dumps(study.user_attrs["pipeline.settings"]))["sweep"]["trials"] == 5
    # A study of an older version recorded fractions: refused, not mixed with percent.
    older = {k: v for k, v in study.user_attrs["pipeline.settings"].items() if k != "unit"}
    study.set_user_attr("pipeline.settings", older)
    with pytest.raises(ConfigError, match=r"scores as fractions .* STUDY=<name>"):
        create_or_resume("synthetic_forgetting", ["ewc"], more, overrides(here), "s", log=print)


def test_an_interrupt_inside_lightning_abandons_the_trial_for_a_retry(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning turns Ctrl-C into SystemExit(1) and SIGTERM into SIGTERMException: the trial is
    a crash to retry, not a failure of its own, and the worker stops."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import pipeline.runner

    def terminated(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise SIGTERMException()

    cfg = compose_sweep("default", ["trials=2"])
    create_or_resume("synthetic_forgetting", ["l2"], cfg, overrides(here), "sig", log=print)
    monkeypatch.setattr(pipeline.runner, "run_sequence", terminated)
    with pytest.raises(SystemExit):
        run_worker("sig", paths(here), log=lambda m: None)
    trials = load_study("sig", journal(here)).get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["crashed"]
    assert trials[0].user_attrs["fail_reason"].startswith("terminated")
    assert trials[1].state == TrialState.WAITING and trials[1].user_attrs["retry_of"] == 0
    assert counted(trials) == 0


def _start_at_once(root: str, barrier: Any) -> None:
    """`make sweep` in a forked process, started together with another one."""
    barrier.wait()
    sweep(
        "synthetic_forgetting",
        ["l2"],
        "default",
        ["trials=2", "defaults_first=false", "sampler=random"],
        overrides(Path(root)),
        study="twin",
        log=lambda m: None,
    )


def test_two_sweeps_started_at_once_share_one_study_and_draw_different_points(
    here: Path,
) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_start_at_once, args=(str(here), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0]
    study = load_study("twin", journal(here))
    trials = study.get_trials()
    reasons = [t.user_attrs.get("fail_reason") for t in trials]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, reasons  # not one more
    assert trials[0].params != trials[1].params  # the samplers' seeds differ
    client = client_for(here / "mlruns")
    exp = client.get_experiment_by_name("synthetic_forgetting")
    parents = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def _terminated_in_child(root: str) -> None:
    """A sweep whose trial stalls after its first task; SIGTERM unwinds it as the CLI does."""
    from pipeline.exiting import _terminate

    signal.signal(signal.SIGTERM, _terminate)
    _sweep_in_child(root)


def test_sigterm_ends_a_sweep_at_once_with_its_parent_run_killed(here: Path) -> None:
    proc = multiprocessing.get_context("fork").Process(
        target=_terminated_in_child, args=(str(here),)
    )
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and proc.is_alive() and not (here / "stalled").exists():
        time.sleep(0.2)
    assert (here / "stalled").exists(), "no trial started within 120 s"
    assert proc.pid is not None
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(60)
    took = time.monotonic() - started
    assert proc.exitcode == 143
    print(f"SIGTERM to exit: {took:.2f} s")
    assert took < 10, f"SIGTERM took {took:.1f} s"  # the bound allows a busy CI
    study = load_study("synthetic_forgetting-l2", journal(here))
    (first, *_) = study.get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"].startswith(
        "interrupted"
    )
    parent = client_for(here / "mlruns").get_run(study.user_attrs[PARENT_ATTR])
    assert parent.info.status == "KILLED"


def test_the_closing_hint_names_the_tools_of_this_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Team mode needs no `make ui` (the server shows the runs) and reaches a PostgreSQL
    study with STORAGE= unless OPTUNA_STORAGE already names it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    assert closing_hint("s", []).endswith("browse: make dashboard, make ui")
    pg = "postgresql://pipeline:secret@db:5433/optuna"
    team = closing_hint("s", ["paths.store=http://srv:5000", f"paths.studies={pg}", "seed=1"])
    assert "make ui" not in team and "the runs at http://srv:5000" in team
    assert "make dashboard STORAGE=postgresql://pipeline:***@db:5433/optuna" in team
    monkeypatch.setenv("OPTUNA_STORAGE", pg)
    assert "STORAGE=" not in closing_hint("s", ["paths.store=http://srv:5000"])
