"""A run on a busy machine: its wall time alone and beside N CPU-bound processes, against its
fair share of the cores.

The run is ``python -m pipeline run <experiment> <overrides>`` (by default ``lenet_forgetting
trainer.epochs=1 trainer.max_batches=120``) into a scratch store, created by an untimed warm-up
run first (so that neither MLflow's schema migration nor the experiment's creation is timed).
Each repeat times it alone, then beside ``--burners`` processes that each spin one Python
thread (started before the run, killed after it). Medians over ``--repeats``.

Fair share: with T threads in the run, N burners and C usable cores (``os.sched_getaffinity``),
each runnable thread gets C / (N + T) of a core, so the run should take its time alone times
max(1, (N + T) / C); the ratio is the contended time over that (1.00x: a fair share; above it
the run loses time to its own threads' waiting, as it did when they spun: 3.1x alone against
2x fair on 2 cores beside 2 burners). T is the run's torch thread count: ``--threads`` or a
``trainer.threads`` override, else what torch picks in a pipeline process here.

The run's environment is this script's as it was started: OMP_WAIT_POLICY as the user set it,
else the pipeline's default (PASSIVE, pipeline/__init__.py). ``--active`` also measures
OMP_WAIT_POLICY=ACTIVE (threads spin while they wait: the old behaviour at its worst; unset,
libgomp spins a shorter while) for the record.

The result is printed, written to ``--out`` (JSON: every time and the medians) and as
``docs/measured/contention.md`` (``--measured``), the table the docs include; both carry the
command, date, machine and commit (``benchmarks/record.py``).

    make bench                                   # part of it
    .venv/bin/python benchmarks/contention.py --root data [--burners 2] [--repeats 3] [--active]
"""

from __future__ import annotations

import os

# Before anything imports the pipeline (the helpers below do), which sets OMP_WAIT_POLICY in
# this process's environment: the runs get the environment the user gave, so that a run's own
# start decides the policy, as it does for a user.
USER_ENV = dict(os.environ)

import argparse  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import record  # noqa: E402
from overhead import measure  # noqa: E402

#: A burner: one Python thread, busy until killed.
BURNER = "while True: pass"
#: torch's thread count in a pipeline process (``trainer.threads=0``: torch's default).
THREADS_PROBE = "import pipeline, torch; print(torch.get_num_threads())"


def timed_run(cmd: list[str], env: dict[str, str], burners: int) -> float:
    """Wall seconds of one run of ``cmd`` beside ``burners`` busy processes."""
    procs = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(burners)]
    try:
        wall, _, _ = measure(cmd, env)
    finally:  # measure exits on a failed run: the burners must not outlive it
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    return wall


def markdown(report: dict[str, Any]) -> str:
    """The report's Markdown (the docs include it; record.py puts the header on top)."""
    lines = [
        f"`{report['experiment']} {' '.join(report['overrides'])}` alone and beside "
        f"{report['burners']} CPU-bound processes, {report['threads']} torch threads, "
        f"median of {report['repeats']}.",
        "",
    ]
    rows = []
    for r in report["results"]:
        rows.append(
            [
                r["policy"],
                record.spread(r["alone_all_s"], "s"),
                record.spread(r["contended_all_s"], "s"),
                f"{r['contended_s'] / r['alone_s']:.2f}x",
                f"{r['fair_share_s']:.1f} s",
                f"{r['ratio']:.2f}x",
            ]
        )
    head = ["OMP_WAIT_POLICY", "alone", "beside burners", "slowdown", "fair share", "ratio"]
    lines.append(record.table(head, rows))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="lenet_forgetting")
    parser.add_argument("--root", default="data")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=["trainer.epochs=1", "trainer.max_batches=120"],
        help="overrides of the run (default: trainer.epochs=1 trainer.max_batches=120)",
    )
    parser.add_argument("--burners", type=int, default=2, help="CPU-bound processes beside it")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="trainer.threads (0: torch's default, as users run)"
    )
    parser.add_argument(
        "--active", action="store_true", help="also measure with OMP_WAIT_POLICY=ACTIVE"
    )
    parser.add_argument("--out", default="reports/contention.json", help="the JSON report")
    record.add_argument(parser)
    args = parser.parse_args()
    root = str(Path(args.root).resolve())
    store = tempfile.mkdtemp(prefix="bench-mlruns-")
    env = {**USER_ENV, "PYTHONUNBUFFERED": "1"}
    overrides = list(args.overrides)
    if args.threads:
        overrides.append(f"trainer.threads={args.threads}")
    common = [f"paths.data={root}", f"paths.store={store}", "trainer.progress_bar=false"]
    run = [sys.executable, "-m", "pipeline", "run", args.experiment, *overrides, *common]

    # The default first: the policy a user gets; "default" names what the run records.
    policy = USER_ENV.get("OMP_WAIT_POLICY")
    modes = {f"{policy} (user's)" if policy is not None else "PASSIVE (default)": env}
    if args.active:
        modes["ACTIVE"] = {**env, "OMP_WAIT_POLICY": "ACTIVE"}

    cores = len(os.sched_getaffinity(0))
    load = record.LOAD_AT_START
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("trainer.threads=")]
    threads = int(given[-1]) if given and int(given[-1]) else 0
    if not threads:  # torch's default in a pipeline process, as the run will see it
        threads = int(measure([sys.executable, "-c", THREADS_PROBE], env)[2].split()[-1])
    slowdown = max(1.0, (args.burners + threads) / cores)
    print(
        f"{shlex.join(run[1:])}\n{threads} threads, {cores} usable cores, {args.burners} burners: "
        f"fair share {slowdown:.2f}x the time alone; load at start {load[0]:.2f}",
        flush=True,
    )
    if load[0] > 0.5:  # "alone" would share the cores with whatever else runs
        print(f"warning: the machine is busy (load {load[0]:.2f}): the times are noisy", flush=True)
    # Untimed: creates the store (schema migration) and the experiment, and reads the data once.
    measure([*run, "trainer.max_batches=1"], env)

    times: dict[str, dict[str, list[float]]] = {m: {"alone": [], "contended": []} for m in modes}
    for r in range(args.repeats):
        for mode, mode_env in modes.items():
            for kind, n in (("alone", 0), ("contended", args.burners)):
                wall = timed_run(run, mode_env, n)
                times[mode][kind].append(wall)
                print(f"repeat {r + 1} {mode:>18} {kind:>9}: {wall:6.1f} s", flush=True)

    results = []
    print(f"\n{args.experiment} {' '.join(overrides)}, median of {args.repeats}:")
    for mode, t in times.items():
        alone, contended = statistics.median(t["alone"]), statistics.median(t["contended"])
        fair = alone * slowdown
        results.append(
            {
                "policy": mode,
                "alone_s": alone,
                "contended_s": contended,
                "fair_share_s": fair,
                "ratio": contended / fair,
                "alone_all_s": t["alone"],
                "contended_all_s": t["contended"],
            }
        )
        print(
            f"  OMP_WAIT_POLICY={mode:<18} alone {alone:6.1f} s   beside {args.burners} burners "
            f"{contended:6.1f} s ({contended / alone:.2f}x)   fair share {fair:6.1f} s   "
            f"ratio {contended / fair:.2f}x"
        )

    report = {
        "experiment": args.experiment,
        "overrides": overrides,
        "run": shlex.join(run),
        "burners": args.burners,
        "threads": threads,
        "repeats": args.repeats,
        "fair_share_slowdown": slowdown,
        "results": results,
    }
    print()
    record.write_json(args.out, report)
    record.write("contention", markdown(report), args.measured)


if __name__ == "__main__":
    main()
