"""Training time per task of each strategy relative to naive fine-tuning, measured in one run.

Runs the founding sequence (MNIST -> Fashion-MNIST by default) once per strategy and repeat,
alternating strategies so that machine noise hits all alike, and compares the median training
seconds per task (the TrainTimer's: validation and the end-of-task hooks excluded; the hooks'
time, e.g. EWC's Fisher, is reported separately as the rest of the task's wall time).

    make bench                                  # naive and ewc, 1 epoch, 3 repeats
    .venv/bin/python benchmarks/strategy_cost.py --strategies naive,ewc,si,replay --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from pipeline.experiment import compose
from pipeline.runner import run_sequence
from pipeline.tracking import Run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="quick_forgetting")
    parser.add_argument("--root", default="data")
    parser.add_argument("--strategies", default="naive,ewc")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    names = args.strategies.split(",")
    if names[0] != "naive":
        names.insert(0, "naive")
    store = tempfile.mkdtemp(prefix="bench-mlruns-")
    train: dict[str, list[float]] = {n: [] for n in names}  # per repeat: seconds per task
    wall: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names:
            cfg = compose(
                args.experiment,
                [
                    f"strategy=[{name.replace('+', ',')}]",
                    f"paths.data={Path(args.root).resolve()}",
                    f"trainer.epochs={args.epochs}",
                    f"trainer.threads={args.threads}",
                    "trainer.validate_every_epoch=false",
                    "tracking.log_checkpoints=false",
                    f"paths.store={store}",
                    "trainer.progress_bar=false",
                ],
            )
            result = run_sequence(cfg, Run.of(cfg))
            n = len(result.records)
            train[name].append(sum(result.train_seconds) / n)
            wall[name].append(sum(rec.wall_seconds for rec in result.records) / n)
            print(f"repeat {r + 1} {name:>12}: {train[name][-1]:6.1f} s training per task")
    base = statistics.median(train["naive"])
    print(
        f"\n{args.experiment}, {args.epochs} epoch(s) per task, {args.threads} threads, "
        f"median of {args.repeats}:"
    )
    print(f"{'strategy':>12}  {'train s/task':>12}  {'vs naive':>8}  {'task wall s':>11}")
    for name in names:
        t = statistics.median(train[name])
        print(f"{name:>12}  {t:12.1f}  {t / base:7.2f}x  {statistics.median(wall[name]):11.1f}")


if __name__ == "__main__":
    main()
