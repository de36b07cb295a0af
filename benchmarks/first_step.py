"""Start-up of a pipeline run: seconds from ``import torch`` finishing to the first training step.

Runs ``python -m pipeline run <args>`` in this process with the module's ``training_step``
replaced by one that prints the times and exits at once (nothing is trained; the MLflow run it
opened is left RUNNING in the scratch store the caller passes). It prints three figures:

- ``imports``: the pipeline's modules, Lightning and MLflow imported (the floor: every
  Lightning program with MLflow tracking pays it before anything runs);
- ``first training step``: the cold start of a ``pipeline run`` process, as above;
- with ``--warm``: the same, for a second sequence in a process that has already run one (a
  small synthetic sequence first, into the same store): what each trial after the first costs
  a sweep worker, which runs its trials one after another in one process.

It writes them as ``docs/measured/first_step.md`` (``--warm``: ``first_step-warm.md``;
``--measured DIR``: elsewhere; ``benchmarks/record.py``). ``benchmarks/overhead.py`` calls it
(its files into a scratch folder); by hand, from the repository root:

    .venv/bin/python benchmarks/first_step.py lenet_forgetting paths.store=/tmp/scratch
    .venv/bin/python benchmarks/first_step.py --warm lenet_forgetting paths.store=/tmp/scratch
"""

from __future__ import annotations

import os
import sys
import time

import record

START = time.perf_counter()
import torch  # noqa: E402  (timed: the start-up is counted from here on)

TORCH = time.perf_counter()

import pipeline.module  # noqa: E402
import pipeline.runner  # noqa: E402  (Lightning, and MLflow through the tracking module)
from pipeline.cli import main  # noqa: E402

IMPORTS = time.perf_counter()
#: The warm-up sequence of ``--warm``: a few steps of two synthetic tasks (no dataset files).
WARM_UP = ["synthetic_forgetting", "trainer.epochs=1", "trainer.max_batches=2"]


def first_step(since: float, what: str, name: str, measured: str) -> None:
    """Make the next training step print the seconds since ``since``, write them as
    ``<measured>/<name>.md`` and end the process."""

    def step(*_: object) -> None:
        now = time.perf_counter()
        print(
            f"import torch {TORCH - START:.2f} s; imports {IMPORTS - TORCH:.2f} s after it; "
            f"first training step {now - since:.2f} s after {what}"
        )
        rows = [
            ["`import torch`", f"{TORCH - START:.2f}"],
            ["the pipeline's modules, Lightning and MLflow, after it", f"{IMPORTS - TORCH:.2f}"],
            [f"the first training step, after {what}", f"{now - since:.2f}"],
        ]
        record.write(name, record.table(["what", "seconds"], rows), measured)
        sys.stdout.flush()
        os._exit(0)

    pipeline.module.ContinualModule.training_step = step  # type: ignore[method-assign,assignment]


def run(args: list[str]) -> int:
    sys.argv = ["pipeline", "run", *args]
    return main()


if __name__ == "__main__":
    assert torch.__version__  # imported for its time, above
    argv, warm, measured = sys.argv[1:], False, str(record.MEASURED)
    while argv[:1] in (["--warm"], ["--measured"]):
        if argv[0] == "--warm":
            warm, argv = True, argv[1:]
        else:
            measured, argv = argv[1], argv[2:]
    if warm:
        store = [a for a in argv if a.startswith("paths.store=")]
        if run([*WARM_UP, *store, "trainer.progress_bar=false"]):
            sys.exit("the warm-up sequence failed")
        first_step(time.perf_counter(), "the second sequence started", "first_step-warm", measured)
    else:
        first_step(TORCH, "import torch", "first_step", measured)
    sys.exit(run(argv))
