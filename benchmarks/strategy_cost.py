"""Training and wall time per task of each strategy relative to naive fine-tuning, in one run.

Runs the founding sequence (MNIST -> Fashion-MNIST, the founding CNN by default) once per
strategy and repeat, alternating strategies so that machine noise hits all alike, and compares
the medians per task of:

- training seconds (the TrainTimer's: validation and the end-of-task hooks excluded);
- wall seconds (training, the end-of-task hooks, the evaluation of every task);
- the end-of-task work (EWC's Fisher, MAS's importance, GPM's bases...): the strategy's wall
  time beyond its training time, less naive's, as a fraction of one training epoch of naive.

It prints them and writes them as ``docs/measured/strategy_cost.md`` (``--measured``;
``benchmarks/record.py``), which the docs include.

    make bench                                  # naive, ewc, mas, gpm: 1 epoch, 3 repeats
    .venv/bin/python benchmarks/strategy_cost.py --strategies naive,ewc,si,replay --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import record

from pipeline.experiment import compose
from pipeline.runner import run_sequence
from pipeline.tracking import Run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="lenet_forgetting")
    parser.add_argument("--root", default="data")
    parser.add_argument("--strategies", default="naive,ewc,mas,gpm")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    record.add_argument(parser)
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
    base, base_wall = statistics.median(train["naive"]), statistics.median(wall["naive"])
    epoch = base / args.epochs
    print(
        f"\n{args.experiment}, {args.epochs} epoch(s) per task, {args.threads} threads, "
        f"median of {args.repeats}:"
    )
    print(
        f"{'strategy':>12}  {'train s/task':>12}  {'vs naive':>8}  {'wall s/task':>11}  "
        f"{'vs naive':>8}  {'end-of-task x epoch':>19}"
    )
    rows = []
    for name in names:
        t, w = statistics.median(train[name]), statistics.median(wall[name])
        extra = max(0.0, (w - t) - (base_wall - base)) / epoch
        print(
            f"{name:>12}  {t:12.1f}  {t / base:7.2f}x  {w:11.1f}  {w / base_wall:7.2f}x  "
            f"{extra:19.2f}"
        )
        rows.append(
            [
                name,
                f"{t:.1f}",
                f"{t / base:.2f}x",
                f"{w:.1f}",
                f"{w / base_wall:.2f}x",
                f"{extra:.2f}",
            ]
        )
    head = [
        "strategy",
        "train s/task",
        "vs naive",
        "wall s/task",
        "vs naive",
        "end-of-task x epoch",
    ]
    body = (
        f"`{args.experiment}`, {args.epochs} epoch(s) per task, {args.threads} threads, the "
        f"strategies in turn, median of {args.repeats}:\n\n" + record.table(head, rows) + "\n"
    )
    print()
    record.write("strategy_cost", body, args.measured)


if __name__ == "__main__":
    main()
