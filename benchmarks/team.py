"""Team mode measured: the founding run on a tracking server, and a sweep on a PostgreSQL study
that loses a worker (``docs/measured/team-mode.md``).

Starts ``make server``'s engines (:func:`pipeline.server.start`: a PostgreSQL cluster and an
MLflow tracking server) in a scratch folder on free loopback ports, then, pointed at them by
``MLFLOW_TRACKING_URI`` and ``OPTUNA_STORAGE`` as a team's machines are:

1. ``make forget`` (``python -m pipeline run seed_forgetting --landscape``): its time, its
   matrix line, and the run as the server holds it (status, checkpoints, landscape files);
2. ``make sweep STRATEGY=ewc TRIALS=12 WORKERS=3`` on ``quick_forgetting`` shortened to one
   epoch of 150 batches a task, with the worker of a running trial killed by SIGKILL once
   ``--kill-after`` trials are complete (the pid in the trial's ``worker`` attribute, as an
   operator would find it): what the sweep printed about the crash and at its end, and what
   the study and the MLflow parent run hold afterwards.

Stops both servers at the end, whatever happened; the folder is removed.

    .venv/bin/python benchmarks/team.py --root data
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import record
from suite import minutes

from pipeline.server import Settings, start, stop
from pipeline.server.common import free_ports

SWEEP = ["quick_forgetting", "--strategy", "ewc", "--trials", "12", "--workers", "3"]
SHORT = ["trainer.epochs=1", "trainer.max_batches=150", "trainer.progress_bar=false"]
STUDY = "team-ewc"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``cmd``: its wall time and its output; exits with its code when it fails."""
    print(f"$ {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", flush=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)} (exit {done.returncode})")
    return took, done.stdout + done.stderr


def kill_a_worker(storage: str, after: int, stop_when: threading.Event) -> list[str]:
    """Once ``after`` trials are complete, SIGKILL the worker of a running trial; what was
    killed (one line), or nothing when the sweep ended first."""
    import optuna
    from optuna.trial import TrialState

    killed: list[str] = []
    while not stop_when.wait(0.5):
        try:
            study = optuna.load_study(study_name=STUDY, storage=storage)
        except (KeyError, ValueError):  # not created yet
            continue
        trials = study.get_trials(deepcopy=False)
        if sum(t.state == TrialState.COMPLETE for t in trials) < after:
            continue
        for t in trials:
            worker = str(t.user_attrs.get("worker", ""))
            if t.state == TrialState.RUNNING and worker.count(":") == 2:
                os.kill(int(worker.split(":")[1]), signal.SIGKILL)
                killed.append(f"trial {t.number}: worker {worker} killed (SIGKILL)")
                return killed
    return killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="the datasets (make data)")
    parser.add_argument("--kill-after", type=int, default=6, help="complete trials, then kill")
    record.add_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pipeline-team-") as scratch:
        folder = Path(scratch) / "server"
        port, pg_port = free_ports(2)  # distinct, below the ephemeral range
        settings = Settings(folder=folder, port=port, pg_port=pg_port)
        started = time.perf_counter()
        info = start(settings)
        up = time.perf_counter() - started
        try:
            assert info.password_file is not None
            env = {
                **os.environ,
                "MLFLOW_TRACKING_URI": info.tracking_uri,
                "OPTUNA_STORAGE": info.storage_url,
                "PGPASSWORD": info.password_file.read_text().strip(),
            }
            python = [sys.executable, "-m", "pipeline"]
            data = [f"paths.data={args.root}", f"paths.reports={Path(scratch) / 'reports'}"]
            forget = [*python, "run", "seed_forgetting", "--landscape", *data, SHORT[-1]]
            forget_s, forget_out = timed(forget, env)
            forget_out += "\n" + server_run(info.tracking_uri, forget_out)
            finished = threading.Event()
            killer: list[str] = []
            watcher = threading.Thread(
                target=lambda: killer.extend(
                    kill_a_worker(info.storage_url, args.kill_after, finished)
                )
            )
            os.environ["PGPASSWORD"] = env["PGPASSWORD"]  # the watcher's own connection
            watcher.start()
            try:
                sweep_s, sweep_out = timed(
                    [*python, "sweep", *SWEEP, "--study", STUDY, *data, *SHORT], env
                )
            finally:
                finished.set()
                watcher.join()
            held = study_state(info.storage_url)
        finally:
            stop(folder)
    body = report(up, (forget_s, forget_out), (sweep_s, sweep_out), killer, held)
    print(body)
    record.write("team-mode", body, args.measured)


def server_run(tracking_uri: str, printed: str) -> str:
    """The run as the server holds it: its status and its artifacts (one line)."""
    from mlflow import MlflowClient

    found = record.RUN_ID.findall(printed)
    if not found:
        return "server: (no run id printed)"
    client = MlflowClient(tracking_uri)
    run = client.get_run(found[-1])
    files = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    return (
        f"server: run {run.info.run_id[:8]} {run.info.status}, artifacts at "
        f"{run.info.artifact_uri} ({', '.join(files)})"
    )


def study_state(storage: str) -> str:
    """What the study holds: trials per state, distinct parameter sets of the complete ones."""
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    distinct = len({tuple(sorted(t.params.items())) for t in complete})
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return f"{counts}; {distinct} distinct parameter sets among the complete trials"


def report(
    up: float, forget: tuple[float, str], sweep: tuple[float, str], killer: list[str], held: str
) -> str:
    forget_s, forget_out = forget
    sweep_s, sweep_out = sweep
    matrix = [
        line
        for line in forget_out.splitlines()
        if "% -> after" in line or line.startswith(("line: ", "server: "))
    ]
    lines = sweep_out.splitlines()
    done = [line for line in lines if "/12 done" in line]
    crashed = [line for line in lines if "crashed" in line or "queued again" in line]
    exits = [line for line in lines if "worker exit codes" in line]
    shown = [*done[:2], "...", *crashed, "...", *done[-1:], *exits]
    return "\n".join(
        [
            f"The servers (PostgreSQL, then MLflow) answered {minutes(up)} after the start.",
            "",
            f"`make forget` against the tracking server took {minutes(forget_s)} and printed:",
            "",
            "```",
            *(matrix or ["(no matrix line)"]),
            "```",
            "",
            f"`make sweep STRATEGY=ewc TRIALS=12 WORKERS=3` on the PostgreSQL study "
            f"(`{' '.join(SHORT[:2])}`) took {minutes(sweep_s)}; "
            f"{killer[0] if killer else 'no worker was killed: the sweep ended first'}. "
            "Among its lines:",
            "",
            "```",
            *shown,
            "```",
            "",
            f"The study then held: {held}.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
