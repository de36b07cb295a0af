"""Fault injection for the resume tests: run the pipeline's command line with a SIGKILL planted
at the n-th call of one function, so a run dies exactly there (in training, between tasks, in
the evaluation, while a checkpoint uploads, in the final write).

    python tests/chaos.py <module>:<function or Class.method> <n> <before|after> <pipeline argv>

``--real N`` instead kills a real-data run (a 3-task sequence) at N random moments and resumes
it after each, then compares its matrix with an uninterrupted run's (docs/resuming.md reports it):

    .venv/bin/python tests/chaos.py --real 10 [--seed 0]
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from typing import Any

#: Where a run can die: (target, what it is), and how many calls of it a run that has ``left``
#: tasks to train makes until the end of its next task (``fresh``: no checkpoint yet, so the
#: untrained model is evaluated first; else the last task's missing metrics are written first),
#: at ``BATCHES`` training steps a task: each kill lets the run get at most one task further.
BATCHES = 300
POINTS: dict[tuple[str, str], Any] = {
    ("pipeline.module:ContinualModule.training_step", "training step"): (
        lambda left, fresh: BATCHES if left else 0
    ),
    ("pipeline.runner:evaluate", "evaluation"): lambda left, fresh: (1 + fresh) if left else 0,
    ("pipeline.checkpoints:save_checkpoint", "checkpoint"): lambda left, fresh: min(left, 1),
    ("pipeline.tracking:Run.log_file", "checkpoint upload"): lambda left, fresh: min(left, 1),
    ("pipeline.tracking:Run.log_records", "metrics write"): lambda left, fresh: 1 + (not fresh),
    ("pipeline.runfiles:write_results", "final write"): lambda left, fresh: int(left <= 1),
}


def plant(target: str, nth: int, when: str) -> None:
    """Make the ``nth`` call of ``target`` (``module:function`` or ``module:Class.method``)
    kill this process with SIGKILL, ``before`` or ``after`` the call runs."""
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *classes, name = path.split(".")
    for c in classes:
        owner = getattr(owner, c)
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def planted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(*args, **kwargs)
        if calls[0] == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, name, planted)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--real"]:
        return real(int(argv[1]), int(argv[3]) if argv[2:3] == ["--seed"] else 0)
    target, nth, when, *rest = argv
    plant(target, int(nth), when)
    from pipeline.cli import main as pipeline

    return pipeline(rest)


REAL = [
    "run",
    "permuted_mnist",
    "data.n_tasks=3",
    "trainer.epochs=1",
    f"trainer.max_batches={BATCHES}",
    "trainer.threads=2",
    "trainer.progress_bar=false",
    "tracking.figures=false",
]


def real(kills: int, seed: int) -> int:
    """Kill a real-data 3-task run ``kills`` times at random moments, resume it after each, and
    compare it with an uninterrupted run (both in a temporary store)."""
    import random
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    import numpy as np

    from pipeline import runfiles
    from pipeline.store import Store

    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    chaos, base = root / "chaos", root / "uninterrupted"
    python = [sys.executable, __file__]
    pick = random.Random(seed)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", *REAL, f"paths.store={base}"], check=True)
    print(f"uninterrupted run: {time.perf_counter() - started:.0f} s", flush=True)
    run_id, started = "", time.perf_counter()
    kinds: list[tuple[str, str]] = []
    for i in range(kills):
        done = _checkpoints(chaos, run_id) if run_id else 0
        fresh = done == 0
        # every kind of moment in turn (shuffled), each at a random one of its remaining calls
        kinds = kinds[1:] + kinds[:1] if i else pick.sample(list(POINTS), len(POINTS))
        (target, what), calls = next(
            (k, POINTS[k](3 - done, fresh)) for k in kinds if POINTS[k](3 - done, fresh) > 0
        )
        nth, when = pick.randint(1, calls), pick.choice(("before", "after"))
        argv = [*REAL, f"paths.store={chaos}"] if not run_id else _resume(run_id, chaos)
        ended = subprocess.run([*python, target, str(nth), when, *argv], capture_output=True)
        run_id = run_id or _only_run(chaos)
        outcome = "killed" if ended.returncode == -9 else f"exit {ended.returncode}"
        print(f"{i + 1:2}: {done} tasks done; {when} {what} #{nth} of {calls}: {outcome}")
        if ended.returncode == 0:
            break  # it finished before the planted call came
    if _status(chaos, run_id) != "FINISHED":
        subprocess.run([sys.executable, "-m", "pipeline", *_resume(run_id, chaos)], check=True)
    print(f"killed and resumed: {time.perf_counter() - started:.0f} s", flush=True)
    got = runfiles.read_result(Store.at(chaos), run_id)
    expected = runfiles.read_result(Store.at(base), _only_run(base))
    same = all(np.array_equal(got.matrix[s], expected.matrix[s]) for s in expected.matrix)
    dups = _duplicate_steps(chaos, run_id)
    print(f"final test matrix (%):\n{np.round(got.matrix['test'] * 100, 2)}")
    print(f"identical to the uninterrupted run: {same}; metric steps logged twice: {dups}")
    return 0 if same and not dups else 1


def _resume(run_id: str, store: Any) -> list[str]:
    return ["run", "--resume", run_id, "trainer.progress_bar=false", f"paths.store={store}"]


def _only_run(store: Any) -> str:
    from pipeline.store import Store

    c = Store.at(store).client()
    (r,) = c.search_runs([e.experiment_id for e in c.search_experiments()])
    return str(r.info.run_id)


def _checkpoints(store: Any, run_id: str) -> int:
    """Tasks with a checkpoint: where a resume starts."""
    from pipeline import checkpoints
    from pipeline.store import Store
    from pipeline.tracking import Run

    return len(checkpoints.checkpoint_files(Run.get(Store.at(store), run_id)))


def _status(store: Any, run_id: str) -> str:
    from pipeline.store import Store

    return str(Store.at(store).client().get_run(run_id).info.status)


def _duplicate_steps(store: Any, run_id: str) -> int:
    from pipeline.store import Store

    c = Store.at(store).client()
    twice = 0
    for key in c.get_run(run_id).data.metrics:
        steps = [m.step for m in c.get_metric_history(run_id, key)]
        twice += len(steps) - len(set(steps))
    return twice


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
