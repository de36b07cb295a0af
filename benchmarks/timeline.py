"""Where a pipeline run's fixed costs go: its imports, phases and exit, timed, with memory.

Three parts, each printing seconds and resident memory (VmRSS, its file-backed part RssFile,
and the peak VmHWM, in MiB):

1. the imports, one library at a time, in the order Lightning and MLflow pull them in;
2. one ``python -m pipeline run <args>`` in this process, its phases wrapped with timers
   (opening the store, loading the tasks, the untrained network's evaluation, each task's
   fit and evaluation, the results);
3. the exit: a child process that imports torch (then torch, Lightning and MLflow) and ends
   normally, timed from its last statement to its end as its parent sees it: the
   interpreter's teardown of the modules, which ``python -m pipeline`` skips
   (:func:`pipeline.processes.exit_now`).

    .venv/bin/python benchmarks/timeline.py lenet_forgetting trainer.epochs=1 \\
        paths.store=/tmp/scratch trainer.progress_bar=false
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

START = time.perf_counter()
#: The imports of part 1, in the order they are pulled in.
IMPORTS = [
    "torch",
    "torch._dynamo",
    "torchvision",
    "torchmetrics",
    "lightning.pytorch",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "pipeline.runner",
]
#: What part 3 times: a process that imports these and ends.
EXITS = ["torch", "torch, lightning.pytorch, mlflow"]


def memory() -> str:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) // 1024
    return f"rss {fields['VmRSS']:5d} (file {fields['RssFile']:4d}) peak {fields['VmHWM']:5d} MiB"


def mark(what: str, since: list[float]) -> None:
    now = time.perf_counter()
    print(f"{now - START:7.2f} s  +{now - since[0]:6.2f} s  {memory()}  {what}", flush=True)
    since[0] = now


def wrap(owner: Any, name: str, since: list[float]) -> None:
    """Replace ``owner.name`` by the same function, marked when it returns."""
    real: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        mark(f"(before {name})", since)
        out = real(*args, **kwargs)
        mark(name, since)
        return out

    setattr(owner, name, timed)


def exit_seconds(modules: str) -> float:
    """Seconds from a child's last statement to its end, as the parent sees it."""
    code = f"import time, sys; import {modules}; print(time.time(), flush=True)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.time() - float(out.stdout.split()[-1])


def main() -> None:
    since = [START]
    print("1. imports")
    for name in IMPORTS:
        importlib.import_module(name)
        mark(f"import {name}", since)

    import lightning.pytorch as pl

    from pipeline import cli, runfiles, runner

    print("\n2. the run")
    for name in ("_store", "_print_result"):
        wrap(cli, name, since)
    for name in ("prepare", "evaluate", "record_task"):
        wrap(runner, name, since)
    wrap(runfiles, "write_results", since)
    wrap(pl.Trainer, "fit", since)
    code = cli.main(["run", *sys.argv[1:]])
    mark(f"main returned {code}", since)

    print("\n3. the exit (a child process, median of 3)")
    for modules in EXITS:
        seconds = sorted(exit_seconds(modules) for _ in range(3))[1]
        print(f"  import {modules}: {seconds:.2f} s from the last statement to the end")


if __name__ == "__main__":
    main()
