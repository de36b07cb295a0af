"""Servers that restart or fill up: the team's MLflow tracking server killed with SIGKILL
mid-run and started again, its artifact store full, and PostgreSQL restarted under a 3-worker
sweep (the real servers, on loopback).

- A sequence tracked on the server rides out the restart (the MLflow client's retries) and ends
  with every metric step once and every checkpoint, as an uninterrupted run does.
- A sequence whose retry budget is shorter than the outage ends in one line that names the run
  to resume, and resumes once the server is back.
- A server whose artifact store is full answers with errors: the run ends FAILED in one line.
- The sweep's workers ride out the PostgreSQL restart (:mod:`pipeline.retry`): the study ends
  with exactly the trials asked for, none run twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.runs import run, small_synthetic
from helpers.servers import Team, team_server

from pipeline import checkpoints, runfiles, server
from pipeline.cli import main
from pipeline.server.postgres import stop_postgres
from pipeline.store import Store
from pipeline.tracking import Run

TASKS = "data.tasks=[" + ",".join(f"{{dataset: synthetic, seed: {i}}}" for i in range(3)) + "]"
# Long enough (about 1 s of training a task, and the evaluations) that the server dies while
# the runs train.
ARGS = [TASKS, "trainer.epochs=1", "data.synthetic.n_train=6000", "data.synthetic.n_test=200"]
REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    with team_server() as running:
        yield running


def until(what: str, ready: Callable[[], Any], timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := ready():
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def the_run(uri: str, experiment: str) -> str | None:
    """The experiment's run once it has stored its config (what a resume starts from)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    if (
        not runs
        or runfiles.CONFIG_FILE not in Run.get(Store.at(uri), runs[0].info.run_id).list_files()
    ):
        return None
    return str(runs[0].info.run_id)


def pipeline_run(uri: str, experiment: str, tmp: Path, **env: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "pipeline", "run", "synthetic_forgetting", *ARGS]
    argv += [
        "trainer.threads=1",
        "trainer.progress_bar=false",
        "tracking.figures=false",
        f"paths.reports={tmp}",
    ]
    argv += [f"tracking.experiment={experiment}"]
    environ = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO), **env)
    return subprocess.Popen(
        argv, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def same_record(store: Store, run_id: str, reference: Store, reference_id: str) -> None:
    """The run holds what the uninterrupted reference holds: each metric step once, the same
    values, every checkpoint."""
    c, ce = store.client(), reference.client()
    metrics, expected = c.get_run(run_id).data.metrics, ce.get_run(reference_id).data.metrics
    assert set(metrics) == set(expected)
    for key in expected:
        steps = [m.step for m in c.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)  # nothing logged twice
        assert len(steps) == len(ce.get_metric_history(reference_id, key)), key
        if key.startswith(("test/", "val/")):
            assert metrics[key] == expected[key], key
    assert sorted(checkpoints.checkpoint_files(Run.get(store, run_id))) == [0, 1, 2]


def test_a_sequence_rides_out_a_tracking_server_restart_or_resumes_after_a_longer_outage(
    team: Team, tmp_path: Path
) -> None:
    settings, info = team
    uri = info.tracking_uri
    # Two runs at once: one with MLflow's own 7 retries, doubling from 1 s (about 2 min in
    # all; from 2 s by default, whose later waits only lengthen the test), one that gives up
    # after about 2 s of them, as a server down for longer would make it.
    patient = pipeline_run(uri, "restart-patient", tmp_path, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    brief = pipeline_run(
        uri,
        "restart-brief",
        tmp_path,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="2",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
    )
    try:
        ids = until(
            "both runs started",
            lambda: all(r := [the_run(uri, e) for e in ("restart-patient", "restart-brief")]) and r,
        )
        os.killpg(server.status(settings.folder).mlflow_pid or 0, signal.SIGKILL)
        assert patient.poll() is None, "the run ended before the server was killed"
        _, err = brief.communicate(timeout=120)
        assert brief.returncode == 1, err[-3000:]
        (line,) = [x for x in err.splitlines() if x.strip()]
        assert "Traceback" not in err and "stopped answering" in line
        assert line.endswith(f"make run RESUME={ids[1]}"), line
        time.sleep(3)
        server.start(settings)  # MLflow again, on the same port and backend
        _, err = patient.communicate(timeout=300)
        assert patient.returncode == 0, err[-3000:]
    finally:
        for p in (patient, brief):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert main(["run", "--resume", ids[1], "trainer.threads=1", f"paths.store={uri}"]) == 0

    reference = run(small_synthetic(tmp_path / "reference", *ARGS))
    store, ref_store = Store.at(uri), Store.at(tmp_path / "reference")
    for run_id in ids:
        assert Run.get(store, run_id).status == "FINISHED"
        same_record(store, run_id, ref_store, reference.run_id)


def test_a_three_worker_sweep_rides_out_a_postgres_restart(team: Team, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from pipeline.sweep.study import PARENT_ATTR, load_study

    settings, info = team
    trials, name = 6, "restart-sweep"
    password = (settings.folder / "postgres.password").read_text().strip()
    # Runs tracked in a store of this machine: the trials are quick and meet the outage in
    # Optuna's storage (runs on the tracking server would wait it out in MLflow's retries).
    store = tmp_path / "mlruns"
    env = dict(os.environ, MLFLOW_TRACKING_URI=str(store), OPTUNA_STORAGE=info.storage_url)
    env |= {"PGPASSWORD": password, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "pipeline", "sweep", "synthetic_forgetting", "--strategy", "l2"]
    argv += ["--trials", str(trials), "--workers", "3", "--study", name]
    argv += ["trainer.epochs=1", "trainer.max_batches=8", "data.synthetic.n_train=200"]
    argv += ["data.synthetic.n_test=100", "trainer.threads=1", f"paths.reports={tmp_path}"]
    os.environ["PGPASSWORD"] = password
    launcher = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:

        def one_complete() -> bool:
            try:
                study = load_study(name, info.storage_url)
            except Exception:  # not created yet
                return False
            return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

        until("a trial complete", one_complete, 300)
        stop_postgres(settings.folder)  # `pg_ctl stop -m fast`: every connection is cut
        time.sleep(10)  # longer than a trial: every worker meets the outage
        server.start(settings)  # PostgreSQL again (MLflow kept running)
        out = launcher.communicate(timeout=400)[0].decode()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 0, out[-3000:]
    assert "unreachable" in out  # the workers said they were waiting
    study = load_study(name, info.storage_url)
    done = study.get_trials(deepcopy=False)
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    assert len(complete) == trials, [(t.number, t.state.name) for t in done]
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == trials  # nothing ran twice
    parent = Run.get(Store.at(store), study.user_attrs[PARENT_ATTR])
    assert parent.status == "FINISHED"


def test_a_full_artifact_store_on_the_server_fails_the_run_in_one_line(
    team: Team, tmp_path: Path
) -> None:
    settings, info = team
    artifacts = settings.folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    # A 1.2 MB disk under the server's artifacts (MLflow serves whatever the folder holds):
    # room for the run's config and for no checkpoint.
    mount = ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(artifacts)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a tmpfs (a small disk to fill) needs root")
    try:
        p = pipeline_run(
            info.tracking_uri,
            "full-artifacts",
            tmp_path,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="2",
            MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        )
        _, err = p.communicate(timeout=300)
    finally:
        subprocess.run(["umount", "-l", str(artifacts)], check=False)
    assert p.returncode == 1, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err and "answered every retry with an error" in line, line
    assert "full disk" in line and "ended FAILED" in line
    run_id = line.rsplit("RESUME=", 1)[1]
    assert Run.get(Store.at(info.tracking_uri), run_id).status == "FAILED"
