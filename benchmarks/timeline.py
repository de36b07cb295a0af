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
   (:func:`pipeline.exiting.exit_now`).

It prints each step as it ends and writes the three as tables, ``docs/measured/timeline.md``
(``--measured DIR`` before the run's arguments: elsewhere; ``benchmarks/record.py``), which the
docs include. From the repository root, into a store that exists (a new one adds MLflow's schema
migrations to the opening of the store):

    .venv/bin/python benchmarks/timeline.py lenet_forgetting trainer.epochs=1 \\
        trainer.threads=2 paths.store=/tmp/scratch trainer.progress_bar=false
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import record

START = time.perf_counter()
#: The imports of part 1, in the order they are pulled in, and what each is.
IMPORTS = {
    "torch": "libtorch and, in the CUDA build, the CUDA libraries, loaded even without a GPU",
    "torch._dynamo": "Lightning's wrappers and torchvision's ops import it",
    "torchvision": "",
    "torchmetrics": "Lightning imports it; it imports torchvision's model zoo, scipy, matplotlib",
    "lightning.pytorch": "Lightning itself",
    "mlflow": "its GenAI modules, pandas",
    "mlflow.store.tracking.sqlalchemy_store": "MLflow's SQL store: SQLAlchemy's models",
    "pipeline.runner": "the pipeline's modules",
}
#: What part 3 times: a process that imports these and ends.
EXITS = ["torch", "torch, lightning.pytorch, mlflow"]


#: Each mark: (part, what, seconds since the previous mark, rss, file, peak in MiB).
MARKS: list[tuple[int, str, float, int, int, int]] = []


def memory() -> dict[str, int]:
    """VmRSS, RssFile and VmHWM of this process, in MiB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) // 1024
    return fields


def mark(what: str, since: list[float], part: int) -> None:
    now, m = time.perf_counter(), memory()
    print(
        f"{now - START:7.2f} s  +{now - since[0]:6.2f} s  rss {m['VmRSS']:5d} "
        f"(file {m['RssFile']:4d}) peak {m['VmHWM']:5d} MiB  {what}",
        flush=True,
    )
    MARKS.append((part, what, now - since[0], m["VmRSS"], m["RssFile"], m["VmHWM"]))
    since[0] = now


def wrap(owner: Any, name: str, since: list[float]) -> None:
    """Replace ``owner.name`` by the same function, marked when it returns."""
    real: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        mark(f"(before {name})", since, 2)
        out = real(*args, **kwargs)
        mark(name, since, 2)
        return out

    setattr(owner, name, timed)


def exit_seconds(modules: str) -> float:
    """Seconds from a child's last statement to its end, as the parent sees it."""
    code = f"import time, sys; import {modules}; print(time.time(), flush=True)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.time() - float(out.stdout.split()[-1])


def markdown(args: list[str], exits: dict[str, float]) -> str:
    """The three parts as the docs include them."""
    head = ["step", "seconds", "resident MiB after it", "of it file pages", "peak MiB"]

    def rows(part: int) -> list[list[object]]:
        out: list[list[object]] = []
        for p, what, seconds, rss, file, peak in MARKS:
            if p == part:
                name = what.removeprefix("import ")
                note = IMPORTS.get(name, "") if part == 1 else ""
                label = f"`{what}`" + (f" ({note})" if note else "")
                out.append([label, f"{seconds:.2f}", f"{rss:,}", f"{file:,}", f"{peak:,}"])
        return out

    exit_rows = [[f"`import {m}`", f"{s:.2f}"] for m, s in exits.items()]
    return "\n\n".join(
        [
            "**The imports**, one library at a time, in the order Lightning and MLflow pull them "
            "in:",
            record.table(head, rows(1)),
            f"**The run**, `python -m pipeline run {' '.join(args)}` in the same process, its "
            "phases (a `(before ...)` row: the time from the previous mark to that call):",
            record.table(head, rows(2)),
            "**The exit**: a child process that imports these and ends, timed from its last "
            "statement to its end as its parent sees it (median of 3):",
            record.table(["child process", "seconds"], exit_rows),
        ]
    )


def main() -> None:
    argv, measured = sys.argv[1:], str(record.MEASURED)
    if argv[:1] == ["--measured"]:
        measured, argv = argv[1], argv[2:]
    since = [START]
    print("1. imports")
    for name in IMPORTS:
        importlib.import_module(name)
        mark(f"import {name}", since, 1)

    import lightning.pytorch as pl

    from pipeline import cli, commands, runfiles, runner

    print("\n2. the run")
    for name in ("_store", "_print_result"):
        wrap(commands, name, since)
    for name in ("prepare", "evaluate", "record_task"):
        wrap(runner, name, since)
    wrap(runfiles, "write_results", since)
    wrap(pl.Trainer, "fit", since)
    code = cli.main(["run", *argv])
    mark(f"main returned {code}", since, 2)

    print("\n3. the exit (a child process, median of 3)")
    exits = {}
    for modules in EXITS:
        exits[modules] = sorted(exit_seconds(modules) for _ in range(3))[1]
        print(f"  import {modules}: {exits[modules]:.2f} s from the last statement to the end")
    print()
    record.write("timeline", markdown(argv, exits), measured)


if __name__ == "__main__":
    main()
