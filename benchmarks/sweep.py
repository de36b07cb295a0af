"""A sweep and its choice, measured on the founding sequence (``docs/measured/sweep-<strategy>.md``
and the figure ``docs/img/sweep-<strategy>-pareto.png`` that docs/sweeps.md shows).

Runs ``make sweep EXP=<experiment> STRATEGY=<strategy> TRIALS=<n> WORKERS=<w>`` and then
``make best STUDY=<experiment>-<strategy>`` (the commands behind them, ``python -m pipeline
sweep`` and ``best``) into a scratch store, study journal and reports folder, and writes: the
sweep's wall time and its trials per state; the Pareto front on validation (each trial's
hyperparameters and scores) beside the defaults (trial 0), and whether the front dominates
them; what ``make best`` printed (the chosen trial against the defaults, once on test) and the
config it wrote (``conf/experiment/best/<study>.yaml``, git-ignored: a study of the same name
chosen before is replaced there). The front's figure (Optuna's) is copied to ``--figures``.

    .venv/bin/python benchmarks/sweep.py --root data [--trials 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import record
from overhead import measure
from suite import minutes

from pipeline import runfiles


def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def front_table(summary: dict[str, Any]) -> str:
    """The front's trials, and the default trial when it is not on the front, one row each."""
    trials = list(summary["front"])
    default = summary["default"]
    if default and default["number"] not in {t["number"] for t in trials}:
        trials.append(default)
    params = sorted({p for t in trials for p in t["params"]})
    scores = sorted({s for t in trials for s in t["values"]})
    rows = [
        [
            f"{t['number']}{' (defaults)' if t['default'] else ''}",
            *[fmt(t["params"].get(p, "")) for p in params],
            *[f"{t['values'][s]:.1f}" for s in scores],
            "yes" if t in summary["front"] else "no",
        ]
        for t in sorted(trials, key=lambda t: t["number"])
    ]
    head = ["trial", *[f"`{p}`" for p in params], *[f"{s} (val, %)" for s in scores], "front"]
    return record.table(head, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="quick_forgetting", help="the sequence")
    parser.add_argument("--strategy", default="ewc", help="the strategy swept")
    parser.add_argument("--trials", type=int, default=30, help="trials of the study")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--root", default="data", help="the datasets (make data)")
    parser.add_argument("--figures", default=str(record.ROOT / "docs" / "img"), help="PNG to")
    record.add_argument(parser)
    args = parser.parse_args()
    study = f"{args.experiment}-{args.strategy}"
    python = [sys.executable, "-m", "pipeline"]
    with tempfile.TemporaryDirectory(prefix="pipeline-sweep-") as scratch:
        where = [
            f"paths.data={args.root}",
            f"paths.store={Path(scratch) / 'mlruns'}",
            f"paths.studies={Path(scratch) / 'studies'}",
            f"paths.reports={Path(scratch) / 'reports'}",
        ]
        env = dict(os.environ)
        sweep = [*python, "sweep", args.experiment, "--strategy", args.strategy]
        sweep += ["--trials", str(args.trials), "--workers", str(args.workers), *where]
        print(f"$ {' '.join(sweep)}", flush=True)
        started = time.perf_counter()
        measure(sweep, env)
        took = time.perf_counter() - started
        report = Path(scratch) / "reports" / f"sweep-{study}"
        summary = json.loads((report / runfiles.SWEEP_SUMMARY_FILE).read_text())
        figures = Path(args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        pareto = figures / f"sweep-{args.strategy}-pareto.png"
        shutil.copy(report / runfiles.PARETO_FIGURE, pareto)
        best = [*python, "best", study, *where]
        print(f"$ {' '.join(best)}", flush=True)
        _, _, printed = measure(best, env)
    chosen = [line for line in printed.splitlines() if line.strip()]
    written = [line.removeprefix("config: ") for line in chosen if line.startswith("config: ")]
    config = Path(written[-1]).read_text().strip() if written else "(no config line)"
    states = ", ".join(f"{n} {s.lower()}" for s, n in summary["states"].items() if n)
    dominated = "dominates" if summary["front_dominates_default"] else "does not dominate"
    body = "\n".join(
        [
            f"`make sweep EXP={args.experiment} STRATEGY={args.strategy} TRIALS={args.trials} "
            f"WORKERS={args.workers}`: {minutes(took)} of wall time; trials: {states}. The front "
            f"on validation ({len(summary['front'])} trials) {dominated} the defaults:",
            "",
            front_table(summary),
            "",
            f"`make best STUDY={study}` then printed:",
            "",
            "```",
            *chosen,
            "```",
            "",
            "The config it wrote:",
            "",
            "```yaml",
            config,
            "```",
            "",
        ]
    )
    print(body)
    record.write(f"sweep-{args.strategy}", body, args.measured)


if __name__ == "__main__":
    main()
