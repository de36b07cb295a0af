"""Our numbers beside the published ones: one outcome per cell (mean and sd over the seeds) and
its verdict, and the table as Markdown. Pure: the runs are made and the report written by
:mod:`pipeline.reproduce`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from pipeline.reproduce.spec import Cell, Table


class Verdict(StrEnum):
    """What became of a cell."""

    WITHIN = "within"
    MISSES = "misses"
    NOT_RUN = "not run"


@dataclass
class Outcome:
    """One cell's runs.

    Attributes:
        cell: the published cell.
        values: ours, one per seed, in points (%).
        not_run: why the cell did not run (a strategy not implemented, refused in its
            scenario); empty when it ran.
        run_ids: the child runs, one per seed.
        tuned: how a study on validation chose the hyperparameters (empty: the published).
    """

    cell: Cell
    values: list[float] = field(default_factory=list)
    not_run: str = ""
    run_ids: list[str] = field(default_factory=list)
    tuned: str = ""

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def sd(self) -> float:
        """The sample standard deviation over the seeds (0 with one seed)."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    def allowed(self, table: Table) -> float:
        """How far ours may be from the published mean: the tolerance (the cell's or the
        table's), or the published spread where that is larger."""
        return max(table.tolerance_of(self.cell), self.cell.published.sd)

    def verdict(self, table: Table) -> Verdict:
        """Within the tolerance (on the table's :attr:`~Table.rule`), a miss, or not run."""
        if self.not_run or not self.values:
            return Verdict.NOT_RUN
        gap = self.mean - self.cell.published.mean
        short = -gap if table.rule == "at_least" else abs(gap)
        return Verdict.WITHIN if short <= self.allowed(table) else Verdict.MISSES


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.1f} ± {sd:.1f}" if sd else f"{mean:.1f}"


def markdown(table: Table, outcomes: Sequence[Outcome], seeds: Sequence[int]) -> list[str]:
    """The table, published beside ours, with a verdict and a reason per cell, and a count."""
    side = "below" if table.rule == "at_least" else "from"
    lines = [
        f"{table.source}; the protocol: `conf/experiment/{table.experiment}.yaml`; "
        f"{table.metric} on the test split after the last task, in %; ours: mean ± sd over "
        f"seeds {', '.join(map(str, seeds))}; within: at most {table.tolerance:g} points "
        f"{side} the published mean (a cell's own tolerance where the why column gives one), "
        "or its published sd where larger.",
        "",
        "| scenario | method | published | ours | gap | verdict | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        p = o.cell.published
        verdict = o.verdict(table)
        ran = verdict is not Verdict.NOT_RUN
        ours = _pm(o.mean, o.sd) if ran else "-"
        gap = f"{o.mean - p.mean:+.1f}" if ran else "-"
        own = f"tolerance {o.cell.tolerance:g} points" if o.cell.tolerance is not None else ""
        why = "; ".join(x for x in (o.not_run, own, o.tuned, o.cell.note) if x)
        lines.append(
            f"| {o.cell.scenario} | {o.cell.method} | {_pm(p.mean, p.sd)} | {ours} | {gap} "
            f"| {verdict.value} | {why} |"
        )
    within, run = count(outcomes, table)
    lines += ["", f"{within} of {len(outcomes)} cells within the tolerance ({run} ran)."]
    return lines


def count(outcomes: Sequence[Outcome], table: Table) -> tuple[int, int]:
    """Cells within the tolerance, and cells that ran."""
    verdicts = [o.verdict(table) for o in outcomes]
    return verdicts.count(Verdict.WITHIN), len(verdicts) - verdicts.count(Verdict.NOT_RUN)
