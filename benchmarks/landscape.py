"""Forgetting in weight space, measured on the founding sequence (``docs/measured/landscape.md``
and the figures ``docs/img/landscape-*.png`` that docs/landscapes.md shows).

Trains ``--experiment`` (default ``quick_forgetting``, seed 0) once with naive fine-tuning and
once with each strategy of ``--strategies`` (default GPM, LwF and EWC, each with its defaults),
into a scratch store, then draws with :func:`pipeline.landscape.draw`:

- the line from naive's theta_A to its theta_B: both tasks' loss and accuracy at theta_A, at
  theta_B, and at the point of the line where the worse of the two accuracies is highest;
- the plane through naive's theta_A and theta_B and each strategy's theta_S (its weights after
  the second task): both losses and accuracies at theta_S, and where theta_S lies on the plane
  (along the line, and off it: Euclidean distances in weight space);
- how long the line and a plane took to evaluate.

It writes the table and copies the figures (``--figures``, default ``docs/img``).

    .venv/bin/python benchmarks/landscape.py --root data
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import record
from overhead import run_pipeline

from pipeline.experiment import compose
from pipeline.landscape import Options, draw
from pipeline.landscape.evaluation import QUANTITIES
from pipeline.store import Store

ALPHA = "\N{GREEK SMALL LETTER ALPHA}"
LINE = f"θ({ALPHA}) = (1 \N{MINUS SIGN} {ALPHA}) θ_A + {ALPHA} θ_B"


def train(experiment: str, strategy: str, where: list[str]) -> str:
    """One run of ``experiment`` with ``strategy`` (seed 0): its run id."""
    return run_pipeline(experiment, [f"strategy=[{strategy}]", *where])[2]


def point(values: dict[str, float]) -> list[str]:
    """Loss (accuracy %) of both tasks at one point."""
    return [f"{values[f'loss_{t}']:.3g} ({100 * values[f'acc_{t}']:.1f})" for t in "ab"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="quick_forgetting", help="the sequence")
    parser.add_argument("--strategies", default="gpm,lwf,ewc", help="the theta_S of the planes")
    parser.add_argument("--root", default="data", help="the datasets (make data)")
    parser.add_argument("--figures", default=str(record.ROOT / "docs" / "img"), help="PNGs to")
    record.add_argument(parser)
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="pipeline-landscape-") as scratch:
        where = [f"paths.data={args.root}", f"paths.store={Path(scratch) / 'mlruns'}"]
        where += ["trainer.progress_bar=false", "seed=0"]
        store = Store.of(compose(args.experiment, where).paths)
        naive = train(args.experiment, "naive", where)
        others = {s: train(args.experiment, s, where) for s in strategies}
        out = Path(scratch) / "figures"
        data = Path(args.root)
        line = draw(store, naive, out_dir=out, data_dir=data)
        curve = json.loads((out / "line.json").read_text())
        planes = {}
        for s, run in others.items():
            drawn = draw(store, naive, run, out_dir=out, data_dir=data, line=False, plane_name=s)
            planes[s] = (drawn.seconds["plane"], json.loads((out / f"{s}.json").read_text()))
        figures = Path(args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "line.png", figures / "landscape-line.png")
        for s in strategies:
            shutil.copy(out / f"{s}.png", figures / f"landscape-plane-{s}.png")
    body = "\n".join([*line_table(curve, line.summary["line"]), "", *plane_table(planes)])
    grid, side = f"{len(curve['alphas'])} points", Options().grid
    times = [f"{s:.1f} s" for s, _ in planes.values()]
    body += (
        f"\n\nEvaluation ({curve['workers']}, {curve['samples'][0]:,} {curve['split']} samples "
        f"per task, {curve['parameters']:,} parameters): the line, {grid}, in "
        f"{line.seconds['line']:.1f} s; each plane, {side}x{side} points, in "
        f"{', '.join(times)}.\n"
    )
    print(body)
    record.write("landscape", body, args.measured)


def line_table(curve: dict[str, Any], ends: dict[str, dict[str, float]]) -> list[str]:
    """Both tasks at theta_A, theta_B and the line's best point (the worse accuracy highest)."""
    worse = np.minimum(curve["acc_a"], curve["acc_b"])
    best = int(np.argmax(worse))
    at = point({q: curve[q][best] for q in QUANTITIES})
    a, b = curve["tasks"]
    rows = [
        ["θ_A: naive after the first task", "0", *point(ends["A"])],
        ["the line's best point: the worse accuracy highest", f"{curve['alphas'][best]:.2f}", *at],
        ["θ_B: naive after the second task", "1", *point(ends["B"])],
    ]
    lead = (
        f"The line {LINE} of naive fine-tuning (θ_A and θ_B {curve['distance_AB']:.1f} apart in "
        "weight space), test loss (accuracy %):"
    )
    return [lead, "", record.table(["point", ALPHA, a, b], rows)]


def plane_table(planes: dict[str, tuple[float, dict[str, Any]]]) -> list[str]:
    """Each strategy's theta_S on the plane through naive's theta_A and theta_B."""
    rows = []
    tasks: list[str] = []
    for s, (_, plane) in planes.items():
        tasks = plane["tasks"]
        u, v = plane["points"]["S"]
        rows.append([s, *point(plane["at_points"]["S"]), f"{u:.1f}", f"{v:.1f}"])
    a, b = tasks
    head = ["θ_S of", a, b, "along the line", "off the line"]
    lead = (
        "Each strategy's weights after the second task (θ_S): test loss (accuracy %), and where "
        "they lie on the plane through naive's θ_A and θ_B (Euclidean distances in weight space "
        "from θ_A, along the line towards θ_B and off it):"
    )
    return [lead, "", record.table(head, rows)]


if __name__ == "__main__":
    main()
