"""Study storages under load: trials per minute with 1, 2 and 4 workers on the journal file and
on PostgreSQL, and the share of each trial spent in the storage.

Each configuration runs one study of synthetic trials through the real worker loop
(:func:`pipeline.sweep.workers.run_worker`: the storage lock, reaping, ask, the heartbeat,
tell), with the trial's work replaced by a fixed sleep (``--work``), so what differs between
storages and worker counts is the coordination alone. Workers are forked processes, as
``make sweep WORKERS=n`` starts processes. Every call into the Optuna storage and every hold of
the storage lock is timed in each worker.

PostgreSQL is a cluster of its own in a temporary folder (:mod:`pipeline.server.postgres`);
without the PostgreSQL binaries only the journal is measured.

It prints the table and writes it as ``docs/measured/storages.md`` (``--measured``;
``benchmarks/record.py``), which the docs include.

    make bench                                   # part of it
    .venv/bin/python benchmarks/storages.py [--trials 24] [--work 0.2] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import record
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from pipeline.config.paths import PathsConfig
from pipeline.sweep import study as study_module
from pipeline.sweep import workers as workers_module
from pipeline.sweep.config import compose_sweep
from pipeline.sweep.study import create_or_resume, load_study
from pipeline.sweep.workers import Outcome, run_worker

STORAGE_METHODS = [
    n for n, f in inspect.getmembers(BaseStorage, inspect.isfunction) if not n.startswith("_")
]


def timed_storage(storage: BaseStorage, spent: list[float]) -> BaseStorage:
    """``storage`` with every public call's time added to ``spent[0]`` (once: the pipeline
    keeps one storage per URL and process)."""
    if getattr(storage, "_timed", False):
        return storage
    storage._timed = True  # type: ignore[attr-defined]
    for name in STORAGE_METHODS:
        if hasattr(storage, name):
            method = getattr(storage, name)

            @functools.wraps(method)
            def call(*args: Any, _m: Callable[..., Any] = method, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return _m(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - start

            setattr(storage, name, call)
    return storage


def worker(name: str, paths: PathsConfig, index: int, n: int, work: float, out: Any) -> None:
    """One worker process: the real loop, a synthetic trial, timers on the storage and lock."""
    storage_s, lock_s, trial_s, under_lock_s = [0.0], [0.0], [0.0], [0.0]
    opened = study_module.open_storage
    locked = study_module.storage_lock

    def open_storage(url: str) -> BaseStorage:
        return timed_storage(opened(url), storage_s)

    @contextmanager
    def storage_lock(url: str, study: str) -> Any:
        start, before = time.perf_counter(), storage_s[0]
        try:
            with locked(url, study):
                yield
        finally:
            lock_s[0] += time.perf_counter() - start
            under_lock_s[0] += storage_s[0] - before

    def synthetic(study: Any, trial: Any, settings: Any, paths: Any, threads: int) -> Outcome:
        start = time.perf_counter()
        time.sleep(work)
        values = [trial.params["optim.lr"], trial.params["strategies.l2.lam"]]
        trial_s[0] += time.perf_counter() - start
        return Outcome(TrialState.COMPLETE, values, time.perf_counter() - start)

    study_module.open_storage = open_storage  # type: ignore[assignment]  # load_study's too
    workers_module.storage_lock = storage_lock  # type: ignore[assignment]
    workers_module.run_trial = synthetic  # type: ignore[assignment]
    started = time.perf_counter()
    ran = run_worker(name, paths, index, n, log=lambda m: None)
    coordination = storage_s[0] - under_lock_s[0] + lock_s[0]  # storage calls counted once
    out.put((ran, time.perf_counter() - started, storage_s[0], lock_s[0], trial_s[0], coordination))


def measure(paths: PathsConfig, name: str, trials: int, workers: int, work: float) -> dict:
    sweep = compose_sweep("default", [f"trials={trials}", "defaults_first=false", "seed=0"])
    overrides = [f"paths.store={paths.store}", f"paths.studies={paths.studies}"]
    overrides += [f"paths.reports={paths.reports}", "trainer.max_batches=1"]
    create_or_resume("synthetic_forgetting", ["l2"], sweep, overrides, name, log=lambda m: None)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(name, paths, i, workers, work, out))
        for i in range(workers)
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    stats = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - started
    done = load_study(name, paths.studies_uri()).get_trials(states=(TrialState.COMPLETE,))
    busy = sum(s[1] for s in stats)  # the workers' time from start to exit, summed
    return {
        "trials": len(done),
        "wall": wall,
        "per_min": 60 * len(done) / wall,
        "storage": sum(s[2] for s in stats) / busy,
        "lock": sum(s[3] for s in stats) / busy,
        "work": sum(s[4] for s in stats) / busy,
        "per_trial": sum(s[5] for s in stats) / len(done),
    }


@contextmanager
def postgres(why: list[str]) -> Any:
    """A cluster of its own: its ``optuna`` URL (``None`` without PostgreSQL binaries, and
    the reason appended to ``why``)."""
    from pipeline.server.common import SettingsError
    from pipeline.server.postgres import throwaway_cluster

    try:
        with throwaway_cluster() as url:
            yield f"{url}/optuna"
    except SettingsError as e:
        why.append(f"PostgreSQL not measured: {e}")
        print(why[-1])
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=24, help="trials per study")
    parser.add_argument("--work", type=float, default=0.2, help="seconds of work per trial")
    parser.add_argument("--workers", default="1,2,4")
    record.add_argument(parser)
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-storages-", dir="/tmp"))
    rows = []
    skipped: list[str] = []
    try:
        with postgres(skipped) as pg_url:
            storages: list[tuple[str, str]] = [("journal", str(root / "journal.log"))]
            if pg_url:
                storages.append(("postgresql", pg_url))
            for label, url in storages:
                for n in counts:
                    paths = PathsConfig(
                        store=str(root / "mlruns"), studies=url, reports=str(root / "reports")
                    )
                    r = measure(paths, f"{label}-{n}", args.trials, n, args.work)
                    rows.append((label, n, r))
                    print(f"{label:<11}{n:>3} workers: {r['per_min']:7.1f} trials/min", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{args.trials} synthetic trials per study, {args.work} s of work each "
        "(the rest of a trial's time is coordination):"
    )
    print(
        f"{'storage':<11}{'workers':>8}{'complete':>9}{'wall s':>8}{'trials/min':>11}"
        f"{'coordination ms/trial':>22}{'in storage':>11}{'in lock':>9}{'in work':>9}"
    )
    for label, n, r in rows:
        print(
            f"{label:<11}{n:>8}{r['trials']:>9}{r['wall']:>8.1f}{r['per_min']:>11.1f}"
            f"{r['per_trial'] * 1000:>22.0f}"
            f"{r['storage'] * 100:>10.0f}%{r['lock'] * 100:>8.0f}%{r['work'] * 100:>8.0f}%"
        )
    print(
        "coordination: storage calls and the study lock (waiting for it and holding it), per "
        "trial.\nshares: of the workers' time from start to exit; 'in lock' includes the storage "
        "calls made under it; the rest is start-up and waiting for the last trials"
    )
    head = ["storage", "workers", "complete", "wall s", "trials/min", "coordination ms/trial"]
    head += ["in storage", "in lock", "in work"]
    cells = [
        [
            label,
            n,
            r["trials"],
            f"{r['wall']:.1f}",
            f"{r['per_min']:.1f}",
            f"{r['per_trial'] * 1000:.0f}",
            f"{r['storage'] * 100:.0f}%",
            f"{r['lock'] * 100:.0f}%",
            f"{r['work'] * 100:.0f}%",
        ]
        for label, n, r in rows
    ]
    body = (
        f"{args.trials} synthetic trials per study, {args.work} s of work each.\n\n"
        + record.table(head, cells)
        + "".join(f"\n\n{line}" for line in skipped)
        + "\n"
    )
    print()
    record.write("storages", body, args.measured)


if __name__ == "__main__":
    main()
