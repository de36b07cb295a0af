"""One run on 1 and on N processes (Lightning DDP), measured in turn
(``docs/measured/multi-device.md``).

Runs ``python -m pipeline run <experiment> trainer.devices=<n>`` for each count of
``--devices`` (default 1 and 2), one after the other, each into a fresh store, and reads back
what each measured: every task's test accuracy right after training it, the first task's at the
end, the training time of each task, the whole process's wall time and the peak resident
memory of its largest process (``ru_maxrss`` of the child as ``wait4`` reports it: the maximum
over the process and its descendants, Lightning's second rank among them). On a CPU machine
Lightning gives each of n processes an equal share of the cores.

    .venv/bin/python benchmarks/multi_device.py --root data [--devices 1,2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import record
from overhead import run_pipeline
from suite import minutes

from pipeline import runfiles
from pipeline.experiment import compose
from pipeline.metrics import percent
from pipeline.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="seed_forgetting", help="the experiment run")
    parser.add_argument("--root", default="data", help="the datasets (make data)")
    parser.add_argument("--devices", default="1,2", help="process counts, run in turn")
    record.add_argument(parser)
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    rows: list[list[str]] = []
    displays: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pipeline-ddp-") as scratch:
        for n in counts:
            where = [f"paths.data={args.root}", f"paths.store={Path(scratch) / f'mlruns-{n}'}"]
            overrides = [f"trainer.devices={n}", "trainer.progress_bar=false", *where]
            wall, peak, run_id = run_pipeline(args.experiment, overrides)
            store = Store.of(compose(args.experiment, where).paths)
            result = runfiles.read_result(store, run_id)
            test = result.matrix["test"]
            displays = result.displays
            rows.append(
                [
                    str(n),
                    *[f"{percent(test[i][i]):.1f}" for i in range(len(result.tasks))],
                    f"{percent(test[-1][0]):.1f}",
                    ", ".join(f"{s:.1f} s" for s in result.train_seconds),
                    minutes(wall),
                    f"{peak:.2f} GiB",
                ]
            )
            print(rows[-1], flush=True)
    header = [
        "processes",
        *displays,
        f"{displays[0]} afterwards",
        "training per task",
        "whole process",
        "peak memory (largest process)",
    ]
    body = "\n".join(
        [
            f"`{args.experiment}` on 1 and more processes, run in turn (test accuracy in %: each "
            "task right after training it, the first task after the last):",
            "",
            record.table(header, rows),
            "",
        ]
    )
    print(body)
    record.write("multi-device", body, args.measured)


if __name__ == "__main__":
    main()
