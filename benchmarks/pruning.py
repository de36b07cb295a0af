"""What pruning saves in the single-objective sweep: the same study run twice, once with the
median pruner and once without, same sampler seed; prints wall time, trials pruned, tasks
trained (a pruned trial stops after a task: the compute it saved, whatever the machine's load)
and the best validation accuracy each found.

    .venv/bin/python benchmarks/pruning.py                       # quick_forgetting, ewc, 1 epoch
    .venv/bin/python benchmarks/pruning.py --trials 20 --epochs 5 --strategy lwf

Both studies live in a temporary store (nothing is added to mlruns/). The table is printed and
written as ``docs/measured/pruning.md`` (``--measured``; ``benchmarks/record.py``), which the
docs include.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import record
from optuna.trial import TrialState

from pipeline.sweep import sweep


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="quick_forgetting")
    parser.add_argument("--strategy", default="ewc")
    parser.add_argument("--root", default="data")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    record.add_argument(parser)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-pruning-"))
    overrides = [
        f"paths.data={Path(args.root).resolve()}",
        f"paths.store={root / 'mlruns'}",
        f"paths.reports={root / 'reports'}",
        f"trainer.epochs={args.epochs}",
        f"trainer.threads={args.threads}",
    ]
    results = {}
    for pruner in ("median", "none"):
        started = time.perf_counter()
        study = sweep(
            args.experiment,
            [args.strategy],
            "accuracy",
            [f"trials={args.trials}", f"pruner={pruner}"],
            overrides,
            study=f"pruning-{pruner}",
            log=lambda m, p=pruner: print(f"  [{p}] {m}", flush=True),
        )
        seconds = time.perf_counter() - started
        trials = study.get_trials()
        n_tasks = len(study.user_attrs["pipeline.settings"]["tasks"])
        tasks = sum(
            len(t.intermediate_values) if t.state == TrialState.PRUNED else n_tasks for t in trials
        )
        results[pruner] = (
            seconds,
            sum(t.state == TrialState.PRUNED for t in trials),
            tasks,
            study.best_value,
        )
    print(f"\n{args.experiment}, {args.strategy}, {args.trials} trials, {args.epochs} epoch(s)")
    header = f"{'pruner':<8}{'wall (s)':>10}{'pruned':>8}{'tasks trained':>15}"
    print(header + f"{'best val acc (%)':>18}")
    for pruner, (seconds, pruned, tasks, best) in results.items():
        print(f"{pruner:<8}{seconds:>10.0f}{pruned:>8}{tasks:>15}{best:>18.1f}")
    saved = 1 - results["median"][2] / results["none"][2]
    print(f"pruning saved {saved * 100:.0f}% of the tasks trained (wall time: see above)")
    rows = [
        [pruner, f"{seconds:.0f}", pruned, tasks, f"{best:.1f}"]
        for pruner, (seconds, pruned, tasks, best) in results.items()
    ]
    head = ["pruner", "wall s", "trials pruned", "tasks trained", "best val acc (%)"]
    body = (
        f"`{args.experiment}`, {args.strategy}, {args.trials} trials, {args.epochs} epoch(s) per "
        f"task, {args.threads} threads, the same sampler seed; the study with the median pruner, "
        "then the one without:\n\n"
        + record.table(head, rows)
        + f"\n\nPruning saved {saved * 100:.0f}% of the tasks trained.\n"
    )
    print()
    record.write("pruning", body, args.measured)


if __name__ == "__main__":
    main()
