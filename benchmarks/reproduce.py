"""A published table reproduced (``make reproduce``), written where the docs include it.

Runs :func:`pipeline.reproduce.reproduce` on a table of ``conf/table/`` (every cell under the
table's protocol, over ``--seeds``) into the project's MLflow store (``mlruns/``, or
``--set paths.store=...``), prints the table of published numbers beside ours, and writes it to
``docs/measured/reproduce-<table>.md`` (``--measured``) with the command, date, machine and
commit on top. ``--resume <parent run>`` carries on one that was cut off (or adds seeds);
``--jobs 2`` runs two at a time; ``--cells a,b`` only those cells (``--name`` then names
the file). Van de Ven and
Tolias's Split MNIST table takes about 2 minutes per run on one of this machine's cores.

    .venv/bin/python benchmarks/reproduce.py vandeven2019-split-mnist [--seeds 5] [--root data]
"""

from __future__ import annotations

import argparse

import record

from pipeline.exiting import unwind_on_sigterm
from pipeline.reproduce import reproduce


def main() -> None:
    unwind_on_sigterm()  # SIGTERM ends the runs KILLED (resumable), the workers' too
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="a table of conf/table/")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--root", default="data", help="the datasets (make data)")
    parser.add_argument("--resume", default="", help="the parent run of one cut off")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one process each")
    parser.add_argument("--cells", default="", help="only these cells (keys, comma-separated)")
    parser.add_argument("--name", default="", help="the measured file (reproduce-<table>)")
    parser.add_argument("--set", action="append", default=[], help="override of every run")
    record.add_argument(parser)
    args = parser.parse_args()
    done = reproduce(
        args.table,
        list(range(args.seeds)),
        [f"paths.data={args.root}", *args.set],
        resume=args.resume or None,
        jobs=args.jobs,
        cells=[c for c in args.cells.split(",") if c],
    )
    body = done.report.read_text().split("\n", 2)[2]  # without its own title
    print(body)
    record.write(args.name or f"reproduce-{args.table}", body, args.measured)


if __name__ == "__main__":
    main()
