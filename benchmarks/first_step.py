"""Start-up of a pipeline run: seconds from ``import torch`` finishing to the first training step.

Runs ``python -m pipeline run <args>`` in this process with the module's ``training_step``
replaced by one that prints the times and exits at once (nothing is trained; the MLflow run it
opened is left RUNNING in the scratch store the caller passes). ``benchmarks/overhead.py``
calls it; by hand:

    .venv/bin/python benchmarks/first_step.py seed_forgetting paths.store=/tmp/scratch
"""

from __future__ import annotations

import os
import sys
import time

START = time.perf_counter()
import torch  # noqa: E402  (timed: the start-up is counted from here on)

TORCH = time.perf_counter()

import pipeline.module  # noqa: E402
from pipeline.cli import main  # noqa: E402


def first_step(*_: object) -> None:
    now = time.perf_counter()
    print(f"import torch {TORCH - START:.2f} s; first training step {now - TORCH:.2f} s after it")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    assert torch.__version__  # imported for its time, above
    pipeline.module.ContinualModule.training_step = first_step  # type: ignore[method-assign,assignment]
    sys.argv = ["pipeline", "run", *sys.argv[1:]]
    sys.exit(main())
