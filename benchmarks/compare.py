"""A comparison the docs show, written where they include it (``docs/measured/<name>.md``).

Runs :func:`pipeline.compare.compare` as ``make compare`` does (every strategy over seeds
0..N-1 on an experiment, an MLflow parent run, the report in ``reports/``) and writes its
table in Markdown with the command, date, machine and commit on top:

- by default, the comparison's table (final accuracy per task, average accuracy, BWT,
  forgetting, plasticity, intransigence, what is kept, time);
- ``--per-seed``: the first strategy's runs, a row per seed (each task right after training it,
  each earlier task at the end, FWT) and their mean: the founding run's three seeds;
- ``--scenarios task,domain,class``: one comparison per scenario, their average accuracies side
  by side (the three-scenario tables of van de Ven and Tolias's kind).

    .venv/bin/python benchmarks/compare.py seed_forgetting --strategies naive --per-seed \
        --name founding-seeds --root data
    .venv/bin/python benchmarks/compare.py split_mnist --strategies naive,ewc,joint \
        --scenarios task,domain,class --name split-mnist-scenarios --root data
"""

from __future__ import annotations

import argparse

import record

from pipeline.compare import compare, strategy_list
from pipeline.compare.table import format_markdown, per_seed, scenarios_table, table
from pipeline.exiting import unwind_on_sigterm


def main() -> None:
    unwind_on_sigterm()  # SIGTERM ends the runs KILLED (a comparison resumes with make compare)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="a file of conf/experiment/")
    parser.add_argument(
        "--strategies", required=True, help="all or a,b,c+d (as make compare takes them)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--scenarios", default="", help="task,domain,class: one comparison each")
    parser.add_argument("--per-seed", action="store_true", help="a row per seed (one strategy)")
    parser.add_argument("--name", required=True, help="the file: docs/measured/<name>.md")
    parser.add_argument("--root", default="data", help="the datasets (make data)")
    parser.add_argument("--set", action="append", default=[], help="override of every run")
    record.add_argument(parser)
    args = parser.parse_args()
    strategies = strategy_list(args.strategies)
    seeds = list(range(args.seeds))
    overrides = [f"paths.data={args.root}", *args.set]
    scenarios = [s for s in args.scenarios.split(",") if s]
    runs = {s: [*overrides, f"scenario={s}"] for s in scenarios} or {"": overrides}
    done = {s: compare(args.experiment, strategies, seeds, o) for s, o in runs.items()}
    first = next(iter(done.values()))
    if scenarios:
        rows = scenarios_table(done)
    else:
        rows = per_seed(first) if args.per_seed else table(first)
    parents = ", ".join(f"`{c.parent_run_id[:8]}`" for c in done.values())
    what = f"`{args.experiment}` ({' -> '.join(first.displays)}), seeds {seeds}"
    body = (
        f"{what}; test accuracy in %, mean ± std over the seeds where a cell has one; MLflow "
        f"parent runs {parents}; reports in `reports/`.\n\n{format_markdown(rows)}\n"
    )
    print(body)
    record.write(args.name, body, args.measured)


if __name__ == "__main__":
    main()
