"""`make server`: PostgreSQL and MLflow started for real, into a scratch folder, on free ports,
and the pipeline working against them as a team would: a sequence tracked on the server (read
back, drawn, erased), a sweep of three worker processes on a PostgreSQL study with one of them
killed, and bad URIs, a server that is down and a refused password refused in one line.

One team server for the module (MLflow takes about 20 s to come up on 2 cores) and one more
MLflow, with basic auth, on the same cluster. The last test stops the team server.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.servers import (
    ADMIN_PASSWORD,
    Team,
    database,
    free_port,
    mlflow_server,
    postgres_cluster,
    spawn_fake_mlflow,
    team_server,
)

from pipeline import server
from pipeline.server.common import port_free, process_group
from pipeline.server.postgres import connects


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    with team_server() as running:
        yield running


def _password(settings: server.Settings) -> str:
    return (settings.folder / "postgres.password").read_text().strip()


def test_default_workers_suit_the_machine() -> None:
    assert [server.default_workers(n) for n in (1, 2, 4, 6, 8, 32)] == [1, 1, 2, 3, 4, 4]


def test_tracking_and_proxied_artifacts(team: Team, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    settings, info = team
    assert info.started and info.tracking_uri == f"http://127.0.0.1:{settings.port}"
    client = MlflowClient(info.tracking_uri)
    run = client.create_run(client.create_experiment("team-check"))
    (tmp_path / "note.txt").write_text("hello team")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    back = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back"))
    assert Path(back).read_text() == "hello team"
    stored = list((settings.folder / "artifacts").rglob("note.txt"))
    assert len(stored) == 1  # the server wrote it into --artifacts-destination
    assert client.get_run(run.info.run_id).info.run_id == run.info.run_id


def test_optuna_study_on_the_optuna_database(team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    settings, info = team
    monkeypatch.setenv("PGPASSWORD", _password(settings))  # as the printed export line says
    storage = optuna.storages.RDBStorage(info.storage_url)
    optuna.create_study(storage=storage, study_name="team-study", direction="maximize")
    assert optuna.load_study(study_name="team-study", storage=info.storage_url).direction == (
        optuna.study.StudyDirection.MAXIMIZE
    )


def test_secrets_stay_private(team: Team) -> None:
    settings, info = team
    password, folder = _password(settings), settings.folder
    assert stat.S_IMODE((folder / "postgres.password").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "pgdata").stat().st_mode) == 0o700
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to `postgres`
        assert (folder / "pgdata").owner() == "postgres"
    cmdline = Path(f"/proc/{info.mlflow_pid}/cmdline").read_text()
    assert password not in cmdline and "--workers\x001\x00" in cmdline
    assert password not in "\n".join(info.exports())
    assert "PGPASSWORD" in "".join(info.exports()) and str(folder) in "".join(info.exports())


def test_mlflow_runs_without_job_consumers(team: Team) -> None:
    _, info = team
    # The `mlflow server` CLI and one uvicorn worker; huey consumers would add 8 processes.
    assert len(process_group(info.mlflow_pid)) == 2


def test_second_start_reports_the_running_servers(
    team: Team, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, info = team
    t0 = time.monotonic()
    again = server.start(settings)
    assert time.monotonic() - t0 < 5
    assert not again.started
    assert (again.mlflow_pid, again.postgres_pid) == (info.mlflow_pid, info.postgres_pid)
    args = ["--folder", str(settings.folder), "--port", str(settings.port)]
    assert server.main(["start", *args, "--pg-port", str(settings.pg_port)]) == 0
    out = capsys.readouterr().out
    assert "already running" in out and f"export MLFLOW_TRACKING_URI={info.tracking_uri}" in out
    assert f"export OPTUNA_STORAGE={info.storage_url}" in out and _password(settings) not in out
    assert server.main(["status", "--folder", str(settings.folder)]) == 0
    now = server.status(settings.folder)
    assert (now.mlflow_pid, now.postgres_pid) == (info.mlflow_pid, info.postgres_pid)


def test_basic_auth_on_an_existing_database(
    team: Team, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make server DB=... AUTH=1``: no cluster of its own; a wrong password gets 401."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    settings, _ = team
    folder = settings.folder.parent / "auth"
    backend = f"postgresql://pipeline:{_password(settings)}@127.0.0.1:{settings.pg_port}/mlflow"
    with mlflow_server(backend, folder, auth=True) as uri:
        info = server.status(folder).info
        assert info and info.postgres_pid is None and info.password_file is None
        assert info.storage_url.endswith(f"@127.0.0.1:{settings.pg_port}/optuna")
        assert _password(settings) not in " ".join(info.exports()) + info.storage_url
        assert "MLFLOW_TRACKING_USERNAME=admin" in " ".join(info.exports())
        cmdline = Path(f"/proc/{info.mlflow_pid}/cmdline").read_text()
        assert _password(settings) not in cmdline and "basic-auth" in cmdline
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(search, timeout=10)
        assert refused.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        with pytest.raises(MlflowException, match=r"not authenticated|401"):
            MlflowClient(uri).search_experiments()
        from pipeline.cli import main  # part d: the pipeline says so in one line, exit 2

        capsys.readouterr()
        assert main(["run", "synthetic_forgetting", f"paths.store={uri}"]) == 2
        err = capsys.readouterr().err
        assert "refused the credentials" in err and err.count("\n") == 1
        assert "not-the-password" not in err
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        assert MlflowClient(uri).get_experiment_by_name("synthetic_forgetting") is None
        assert MlflowClient(uri).create_experiment("behind-auth")
        assert stat.S_IMODE((folder / "basic_auth.db").stat().st_mode) == 0o600
    assert server.status(folder).mlflow_pid is None


# -- the pipeline against the team server ------------------------------------------------------
TINY = [
    "trainer.epochs=1",
    "trainer.max_batches=3",
    "data.synthetic.n_train=200",
    "data.synthetic.n_test=60",
    "data.batch_size=32",
]


def test_a_sequence_on_the_server_reads_back_draws_and_erases(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part a: everything a run stores goes through the server's proxied artifact store."""
    from helpers.runs import run, small_synthetic
    from helpers.stores import checkpoint, client

    from pipeline import checkpoints, runfiles
    from pipeline.cli import main
    from pipeline.store import Store
    from pipeline.tracking import Run

    _, info = team
    uri = info.tracking_uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = small_synthetic(uri, "strategy=[replay]", "strategies.replay.size=40", *TINY)
    cfg.paths.reports = str(tmp_path / "reports")
    result = run(cfg)
    assert client(uri).get_run(result.run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    back = runfiles.read_result(Store.at(uri), result.run_id)
    for split in result.matrix:
        assert (back.matrix[split] == result.matrix[split]).all()
    assert back.records == result.records
    where = f"paths.store={uri}"
    out = tmp_path / "landscape"
    drawn = [
        "landscape",
        result.run_id,
        where,
        "--out",
        str(out),
        "--points",
        "5",
        "--samples",
        "20",
    ]
    assert main(drawn) == 0
    line = "landscape/line-points5-samples20"
    assert {f"{line}.png", f"{line}.json"} <= {
        a.path for a in client(uri).list_artifacts(result.run_id, "landscape")
    }
    buf = checkpoint(uri, result.run_id, 1).module.strategies[0].buffer
    victims = sorted(set(buf.ids[buf.valid & (buf.tasks == 0)].tolist()))[:3]
    ids = ",".join(map(str, victims))
    assert (
        main(
            [
                "erase",
                result.run_id,
                "--task",
                "synthetic0",
                "--ids",
                ids,
                "--mode",
                "buffers",
                where,
            ]
        )
        == 0
    )
    buf = checkpoint(uri, result.run_id, 1).module.strategies[0].buffer
    assert not set(buf.ids[buf.valid & (buf.tasks == 0)].tolist()) & set(victims)
    files = checkpoints.checkpoint_files(Run.get(Store.at(uri), result.run_id))
    assert [len(revisions) for revisions in files.values()] == [1, 1]  # old revisions removed
    assert files[1][0].revision == 1
    # exact unlearning on the server: a new run, the original's later checkpoint and its
    # landscape deleted through the proxied artifacts
    assert main(["erase", result.run_id, "--task", "synthetic1", "--ids", "1,2", where]) == 0
    source = Run.get(Store.at(uri), result.run_id)
    assert sorted(checkpoints.checkpoint_files(source)) == [0]
    assert not source.list_files("landscape")
    new = Run.get(Store.at(uri), source.tags["pipeline.unlearned_to"])
    assert sorted(checkpoints.checkpoint_files(new)) == [0, 1]


def test_three_workers_on_a_postgres_study_survive_a_killed_one(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts b and c: `make sweep WORKERS=3` on PostgreSQL, tracked on the server; one worker
    is killed with SIGKILL mid-trial; the study still ends with exactly N complete trials, none
    duplicated, one finished MLflow child run each."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from pipeline.sweep.study import PARENT_ATTR, load_study

    settings, info = team
    trials, name = 6, "team-sweep"
    env = dict(os.environ, MLFLOW_TRACKING_URI=info.tracking_uri, OPTUNA_STORAGE=info.storage_url)
    env |= {"PGPASSWORD": _password(settings), "PYTHONPATH": str(Path(__file__).parents[1])}
    argv = [sys.executable, "-m", "pipeline", "sweep", "synthetic_forgetting", "--strategy", "l2"]
    argv += ["--trials", str(trials), "--workers", "3", "--study", name, *TINY]
    argv += ["trainer.threads=1", "trainer.max_batches=8", f"paths.reports={tmp_path}"]
    monkeypatch.setenv("PGPASSWORD", _password(settings))
    launcher = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        victim = _kill_a_worker_mid_trial(name, info.storage_url, launcher)
        out = launcher.communicate(timeout=400)[0].decode()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 0, out[-3000:]
    study = load_study(name, info.storage_url)
    done = study.get_trials(deepcopy=False)
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    assert len(complete) == trials, [(t.number, t.state.name) for t in done]
    crashed = done[victim]
    assert crashed.state == TrialState.FAIL and crashed.user_attrs["crashed"]
    (retry,) = [t for t in done if t.user_attrs.get("retry_of") == victim]
    assert retry.state == TrialState.COMPLETE and retry.params == crashed.params
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == trials  # nothing ran twice
    client = MlflowClient(info.tracking_uri)
    exp = client.get_experiment_by_name("synthetic_forgetting")
    parent = study.user_attrs[PARENT_ATTR]
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    finished = sorted(int(r.data.tags["sweep.trial"]) for r in kids if r.info.status == "FINISHED")
    assert finished == sorted(t.number for t in complete)
    (killed,) = [r for r in kids if r.data.tags["sweep.trial"] == str(victim)]
    assert killed.info.status == "FAILED" and "crashed" in killed.data.tags["error"]
    assert client.get_run(parent).info.status == "FINISHED"


def _kill_a_worker_mid_trial(name: str, storage: str, launcher: subprocess.Popen[bytes]) -> int:
    """SIGKILL the worker of the first trial seen running; the trial's number."""
    import signal

    from optuna.trial import TrialState

    from pipeline.errors import ConfigError
    from pipeline.sweep.study import load_study

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.5)
        try:
            study = load_study(name, storage)
        except ConfigError:
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = str(t.user_attrs.get("worker", ""))
            if worker.count(":") == 2 and "mlflow_run_id" in t.user_attrs:
                os.kill(int(worker.split(":")[1]), signal.SIGKILL)
                return t.number
    raise AssertionError("no trial seen running within 240 s")


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("paths.store=gopher://x", "is not a folder, sqlite"),
        ("paths.store=http://127.0.0.1:{port}", "does not answer"),
        ("paths.studies=postgresql://pipeline@127.0.0.1:{port}/optuna", "study storage"),
    ],
)
def test_a_bad_uri_or_a_server_that_is_down_is_one_line_and_nothing_written(
    where: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Part d: refused before any run or study exists."""
    from pipeline.cli import main

    local = f"paths.store={tmp_path / 'mlruns'}"
    where = where.format(port=free_port())
    command = ["sweep", "synthetic_forgetting", "--strategy", "l2", local, where, *TINY]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("journal.log"))


def test_postgres_cluster_helper() -> None:
    import optuna

    with postgres_cluster() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        user, password = url.split("//", 1)[1].split("@", 1)[0].split(":")
        assert user == "pipeline" and connects(url, None)
        assert not connects(url.replace(password, "wrong"), None)  # scram, not trust
        storage = database(url, "optuna")
        optuna.create_study(storage=storage, study_name="helper")
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["helper"]
    assert port_free("127.0.0.1", port)  # stopped on exit


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "70000"], "out of range"),
        (["--pg-port", "0"], "out of range"),
        (["--host", "team-box"], "not an IP address"),
        (["--db", "mysql://u@h/mlflow"], "postgresql://"),
        (["--db", "postgresql://u@h"], "postgresql://"),
        (["--port", "many"], "invalid int value"),
        (["--workers", "0"], "workers must be at least 1"),
        (["--timeout", "0"], "timeout must be above 0"),
        (["--timeout", "-5"], "timeout must be above 0"),
        (["--auth"], "MLFLOW_AUTH_ADMIN_PASSWORD"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str],
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    try:
        code = server.main(["start", "--folder", str(tmp_path / "s"), *args])
    except SystemExit as e:  # argparse's own errors (a port that is no number)
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and says in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()  # nothing started, nothing created


def test_no_postgres_binaries_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_BINDIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(()))
    assert server.main(["start", "--folder", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.startswith("error: no PostgreSQL binaries")


@pytest.mark.parametrize("deaths", [1, 2])
def test_a_server_killed_while_starting_is_started_once_more(
    deaths: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server killed by a signal before it answers (CI once lost one so, with an empty log)
    is started once more; a second death is reported with the signal, and nothing is left."""
    from pipeline.server import tracking_server

    spawned: list[int] = []

    def spawn(s: server.Settings, folder: Path, backend: str, password: str | None) -> int:
        proc = spawn_fake_mlflow(s, folder)
        if len(spawned) < deaths:
            proc.kill()
        spawned.append(proc.pid)
        return proc.pid

    monkeypatch.setattr(tracking_server, "spawn_mlflow", spawn)
    settings = server.Settings(folder=tmp_path, port=free_port(), timeout=30)
    if deaths == 1:
        pid = tracking_server.start_mlflow(settings, "postgresql://x@127.0.0.1/mlflow")
        assert spawned == [spawned[0], pid] and process_group(pid) == [pid]
        assert tracking_server.stop_mlflow(tmp_path) == pid
    else:
        with pytest.raises(server.ServerError, match=r"MLflow was killed by SIGKILL on port"):
            tracking_server.start_mlflow(settings, "postgresql://x@127.0.0.1/mlflow")
        assert len(spawned) == 2
    assert not (tmp_path / "mlflow.pid").exists()
    assert not set(spawned) & set(tracking_server._CHILDREN)  # all reaped
    assert all(process_group(p) == [] for p in spawned)


def test_command_line_is_light() -> None:
    # `stop` and `status` must answer at once: no heavy import at module level.
    heavy = "{'mlflow', 'torch', 'lightning', 'psycopg'}"
    code = f"import pipeline.server, sys; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    bad = [sys.executable, "-m", "pipeline.server", "start", "--port", "70000"]
    done = subprocess.run(bad, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_stop_ends_everything(team: Team, capsys: pytest.CaptureFixture[str]) -> None:
    settings, info = team
    assert info.postgres_pid is not None
    stopped = server.stop(settings.folder)
    assert len(stopped) == 2 and str(info.mlflow_pid) in stopped[0]
    assert process_group(info.mlflow_pid) == []
    assert server.postgres_pid(settings.folder) is None
    assert not Path(f"/proc/{info.postgres_pid}/cmdline").exists() or (
        b"postgres" not in Path(f"/proc/{info.postgres_pid}/cmdline").read_bytes()
    )
    for port in (settings.port, settings.pg_port):
        assert port_free("127.0.0.1", port)
    assert server.main(["stop", "--folder", str(settings.folder)]) == 0
    assert "nothing was running" in capsys.readouterr().out
    # A stale pid file (its process gone) is cleaned up, and the server can start again.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (settings.folder / "mlflow.pid").write_text(f"{dead.pid}\n")
    (settings.folder / "postgres.pid").write_text(f"{dead.pid}\n")
    assert server.main(["status", "--folder", str(settings.folder)]) == 3
    assert not (settings.folder / "mlflow.pid").exists()
    assert not (settings.folder / "postgres.pid").exists()
    pid = server.start_postgres(settings)
    assert pid and server.stop_postgres(settings.folder) == pid
