"""The pipeline's fixed costs against a bare PyTorch script, measured in one run.

- Whole process: ``python -m pipeline run <experiment>`` (Lightning, MLflow store, checkpoints,
  figures) against ``benchmarks/bare_sequence.py`` (the same data, network, optimizer and
  evaluations in plain PyTorch), run in turn ``--repeats`` times; the medians of their wall
  times and peak resident memory (``ru_maxrss`` of each child process).
- Start-up: seconds from ``import torch`` finishing to the first training step
  (``benchmarks/first_step.py``), cold (a new process) and warm (a second sequence in the same
  process, as a sweep worker runs its trials), and the wall time of ``python -m pipeline
  --help`` and of a config error.
- The floor under both: a process that only imports torch, Lightning and MLflow's SQL store
  (what any Lightning program tracked in an MLflow store loads before its first step), its
  seconds after ``import torch`` and its peak memory.

Where the start-up and the exit go, step by step: ``benchmarks/timeline.py``.

It prints every repeat and the medians, and writes them as ``docs/measured/overhead.md``
(``--measured``; ``benchmarks/record.py``), which the docs include.

    make bench                                   # part of it
    .venv/bin/python benchmarks/overhead.py --root data --epochs 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

from pipeline.experiment import compose

HERE = Path(__file__).resolve().parent
#: The floor: the imports a Lightning program tracked in MLflow's SQL store cannot skip.
FLOOR = (
    "import time; t = time.perf_counter(); import torch; t = time.perf_counter() - t; "
    "s = time.perf_counter(); import lightning.pytorch, mlflow; "
    "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore; "
    "print(f'{t:.2f} {time.perf_counter() - s:.2f}')"
)


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GiB) and stdout of one child process; exits on its failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # not proc.wait(): wait4 gives the child's usage
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here; keeps Popen from waiting again
    if code:
        sys.exit(f"{' '.join(cmd)} failed ({code}):\n{out[-2000:]}")
    return wall, usage.ru_maxrss / 2**20, out  # ru_maxrss: KiB on Linux


def run_pipeline(experiment: str, overrides: list[str]) -> tuple[float, float, str]:
    """``python -m pipeline run <experiment> <overrides>`` as :func:`measure` runs it: wall
    seconds, peak RSS (GiB) and the id of the MLflow run it printed; exits when it prints none."""
    cmd = [sys.executable, "-m", "pipeline", "run", experiment, *overrides]
    print(f"$ {' '.join(cmd)}", flush=True)
    wall, peak, out = measure(cmd, dict(os.environ))
    found = record.RUN_ID.findall(out)
    if not found:
        sys.exit(f"no MLflow run id in the output of {' '.join(cmd)}:\n{out[-2000:]}")
    return wall, peak, found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="lenet_forgetting")
    parser.add_argument("--root", default="data")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    record.add_argument(parser)
    args = parser.parse_args()
    root = str(Path(args.root).resolve())
    cfg = compose(args.experiment, [f"paths.data={root}"])
    store = tempfile.mkdtemp(prefix="bench-mlruns-")
    scratch = tempfile.mkdtemp(prefix="bench-first-step-")  # first_step.py's files: not the docs'
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = [
        f"paths.data={root}",
        f"paths.store={store}",
        f"trainer.epochs={args.epochs}",
        f"trainer.threads={args.threads}",
        "trainer.progress_bar=false",
    ]
    pipeline = [sys.executable, "-m", "pipeline", "run", args.experiment, *common]
    bare = [
        sys.executable,
        str(HERE / "bare_sequence.py"),
        f"--root={root}",
        f"--epochs={args.epochs}",
        f"--threads={args.threads}",
        f"--channels={','.join(map(str, cfg.model.channels))}",
        f"--kernel={cfg.model.kernel_size}",
        f"--hidden={cfg.model.hidden[0]}",
        f"--lr={cfg.optim.lr}",
        f"--batch={cfg.data.batch_size}",
    ]
    walls: dict[str, list[float]] = {"bare": [], "pipeline": []}
    peaks: dict[str, list[float]] = {"bare": [], "pipeline": []}
    starts: dict[str, list[float]] = {"cold": [], "warm": []}
    floors: dict[str, list[float]] = {"seconds": [], "peak": []}
    for r in range(args.repeats):
        for name, cmd in (("bare", bare), ("pipeline", pipeline)):
            wall, peak, _ = measure(cmd, env)
            walls[name].append(wall)
            peaks[name].append(peak)
            print(f"repeat {r + 1} {name:>8}: {wall:6.1f} s, peak {peak:.2f} GiB", flush=True)
        for kind, flag in (("cold", []), ("warm", ["--warm"])):
            step = [sys.executable, str(HERE / "first_step.py"), "--measured", scratch, *flag]
            _, _, out = measure([*step, args.experiment, *common], env)
            starts[kind].append(float(re.findall(r"first training step ([\d.]+) s", out)[-1]))
        _, peak, out = measure([sys.executable, "-c", FLOOR], env)
        floors["seconds"].append(float(out.split()[-1]))
        floors["peak"].append(peak)
    helps = [measure([sys.executable, "-m", "pipeline", "--help"], env)[0] for _ in range(3)]
    error = [sys.executable, "-m", "pipeline", "run", args.experiment, "trainer.epochz=1"]
    errors = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(error, capture_output=True, env=env, check=False)
        errors.append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in walls.items()}
    mem = {k: statistics.median(v) for k, v in peaks.items()}
    print(
        f"\n{args.experiment}, {args.epochs} epoch(s) per task, {args.threads} threads, "
        f"median of {args.repeats}:"
    )
    print(
        f"  whole process   bare {med['bare']:6.1f} s   pipeline {med['pipeline']:6.1f} s   "
        f"ratio {med['pipeline'] / med['bare']:.2f}x"
    )
    print(f"  peak memory     bare {mem['bare']:6.2f} GiB  pipeline {mem['pipeline']:6.2f} GiB")
    print(
        f"  first training step {statistics.median(starts['cold']):.2f} s after import torch; "
        f"in a second sequence of one process {statistics.median(starts['warm']):.2f} s"
    )
    print(
        f"  floor: torch, Lightning and MLflow's SQL store imported "
        f"{statistics.median(floors['seconds']):.2f} s after import torch, "
        f"peak {statistics.median(floors['peak']):.2f} GiB"
    )
    print(
        f"  --help {statistics.median(helps):.2f} s, "
        f"a config error {statistics.median(errors):.2f} s"
    )
    print()
    record.write(
        "overhead", markdown(args, walls, peaks, starts, floors, helps, errors), args.measured
    )


def markdown(
    args: argparse.Namespace,
    walls: dict[str, list[float]],
    peaks: dict[str, list[float]],
    starts: dict[str, list[float]],
    floors: dict[str, list[float]],
    helps: list[float],
    errors: list[float],
) -> str:
    """The result as the docs include it: medians, and the range of the repeats."""
    ratio = statistics.median(walls["pipeline"]) / statistics.median(walls["bare"])
    mem = statistics.median(peaks["pipeline"]) / statistics.median(peaks["bare"])
    whole = record.table(
        ["whole process", "bare PyTorch script", "pipeline", "pipeline / bare"],
        [
            [
                "wall time",
                record.spread(walls["bare"], "s"),
                record.spread(walls["pipeline"], "s"),
                f"{ratio:.2f}x",
            ],
            [
                "peak memory",
                record.spread(peaks["bare"], "GiB", 2),
                record.spread(peaks["pipeline"], "GiB", 2),
                f"{mem:.2f}x",
            ],
        ],
    )
    floor = "the floor: a process that imports torch, Lightning and MLflow's SQL store"
    start = record.table(
        ["start-up", "time", "peak memory"],
        [
            [
                "first training step, after `import torch` in a new process",
                record.spread(starts["cold"], "s", 2),
                "",
            ],
            [
                "first training step of a second sequence in the same process",
                record.spread(starts["warm"], "s", 2),
                "",
            ],
            [
                f"{floor}: its imports after `import torch`",
                record.spread(floors["seconds"], "s", 2),
                record.spread(floors["peak"], "GiB", 2),
            ],
            ["`python -m pipeline --help`", record.spread(helps, "s", 2), ""],
            ["a config error", record.spread(errors, "s", 2), ""],
        ],
    )
    return (
        f"`{args.experiment}`, {args.epochs} epoch(s) per task, {args.threads} threads; the bare "
        f"script and the pipeline in turn, {args.repeats} repeat(s): medians (range).\n\n"
        f"{whole}\n\n{start}\n"
    )


if __name__ == "__main__":
    main()
