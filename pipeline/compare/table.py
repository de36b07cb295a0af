"""A comparison's table: one row per strategy, mean and std over the seeds of each column.
Pure: the runs are read and the report written by :mod:`pipeline.compare`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import metrics
from pipeline.results import SequenceResult
from pipeline.runfiles import ALONG_SEQUENCE_FIGURE, VS_KEPT_FIGURE
from pipeline.strategies import REGISTRY, Role


def role_of(spec: str) -> Role:
    """The role of a compared strategy (``a+b`` combinations are methods)."""
    cls = REGISTRY.get(spec)
    return cls.role if cls is not None else Role.METHOD


def keeps_raw_data(spec: str) -> bool:
    """Whether any part of a compared strategy (``a+b``) keeps raw samples."""
    return any(REGISTRY[n].keeps_raw_data for n in spec.split("+"))


@dataclass
class Row:
    """One strategy's results over the seeds (mean and std of each column)."""

    strategy: str
    results: list[SequenceResult] = field(default_factory=list)

    def values(self, key: str) -> np.ndarray:
        """Per-seed values of a column (see :data:`COLUMNS`)."""
        return np.array([COLUMNS[key][1](r) for r in self.results], dtype=float)


def _final(j: int) -> Callable[[SequenceResult], float]:
    return lambda r: float(r.matrix["test"][-1, j])


def _train_total(r: SequenceResult) -> float:
    return float(sum(r.train_seconds))


#: column key -> (header, how to read it from a result); accuracies are fractions.
COLUMNS: dict[str, tuple[str, Callable[[SequenceResult], float]]] = {
    "avg_acc": ("avg acc", lambda r: r.summary["test"]["avg_acc"]),
    "bwt": ("BWT", lambda r: r.summary["test"].get("bwt", float("nan"))),
    "forgetting": ("forgetting", lambda r: r.summary["test"].get("forgetting", float("nan"))),
    "plasticity": ("plasticity", lambda r: r.summary["test"]["plasticity"]),
    "raw_samples": ("raw kept", lambda r: float(r.records[-1].retention["raw_samples"])),
    "raw_mb": ("raw MB", lambda r: r.records[-1].retention["raw_bytes"] / 2**20),
    "state_mb": ("state MB", lambda r: r.records[-1].retention["state_bytes"] / 2**20),
    "train_s": ("train s", _train_total),
}


@dataclass
class Comparison:
    """A finished comparison: one row per strategy, plus what was skipped and why."""

    experiment: str
    tasks: list[str]
    displays: list[str]
    scenario: str
    seeds: list[int]
    rows: list[Row]
    skipped: dict[str, str]
    parent_run_id: str = ""
    report_dir: Path = Path()

    def row(self, strategy: str) -> Row | None:
        return next((r for r in self.rows if r.strategy == strategy), None)

    def with_role(self, role: Role) -> Row | None:
        """The first row of a strategy of ``role`` (the baseline, the reference)."""
        return next((r for r in self.rows if role_of(r.strategy) is role), None)

    def intransigence(self, row: Row) -> float:
        """Mean intransigence against the reference's diagonal (NaN without a reference)."""
        reference = self.with_role(Role.REFERENCE)
        if reference is None:
            return float("nan")
        ref = np.mean([np.diag(r.matrix["test"]) for r in reference.results], axis=0)
        vals = [np.mean(metrics.intransigence(r.matrix["test"], list(ref))) for r in row.results]
        return float(np.mean(vals))

    def time_vs_reference(self, row: Row) -> float:
        """Training time relative to the reference's (NaN without a reference)."""
        reference = self.with_role(Role.REFERENCE)
        if reference is None:
            return float("nan")
        return float(row.values("train_s").mean() / reference.values("train_s").mean())


def _pm(values: np.ndarray, scale: float = 100.0, digits: int = 1) -> str:
    if np.all(np.isnan(values)):
        return "n/a"
    mean, std = float(np.mean(values)) * scale, float(np.std(values)) * scale
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(c: Comparison) -> list[list[str]]:
    """The comparison table as rows of cells (header first)."""
    reference = c.with_role(Role.REFERENCE)
    with_reference = [reference.strategy] if reference else ["reference"]
    header = [
        "strategy",
        *[f"final {d}" for d in c.displays],
        "avg acc",
        "BWT",
        "forgetting",
        "plasticity",
        "intransigence",
        "raw kept (samples)",
        "raw MB",
        "state MB",
        f"time vs {' '.join(with_reference)}",
    ]
    out = [header]
    for row in c.rows:
        cells = [row.strategy]
        cells += [_pm(np.array([_final(j)(r) for r in row.results])) for j in range(len(c.tasks))]
        cells += [_pm(row.values(k)) for k in ("avg_acc", "bwt", "forgetting", "plasticity")]
        cells.append(f"{c.intransigence(row) * 100:.1f}" if reference else "n/a")
        cells.append(f"{row.values('raw_samples').mean():,.0f}")
        cells += [f"{row.values(k).mean():.2f}" for k in ("raw_mb", "state_mb")]
        ratio = c.time_vs_reference(row)
        cells.append("n/a" if np.isnan(ratio) else f"{ratio:.2f}x")
        out.append(cells)
    return out


def per_seed(c: Comparison) -> list[list[str]]:
    """The first strategy's runs, a row per seed and a mean row: each task's test accuracy
    right after training it, each earlier task's at the end, and FWT (the founding run's
    table: MNIST, Fashion-MNIST, MNIST afterwards)."""
    n = len(c.tasks)
    header = ["seed", *c.displays, *[f"{d} at the end" for d in c.displays[:-1]], "FWT"]
    rows = []
    for r in c.rows[0].results:  # in the order of c.seeds
        m = r.matrix["test"]
        fwt = r.summary["test"].get("fwt", float("nan"))
        rows.append([m[j, j] for j in range(n)] + [m[-1, j] for j in range(n - 1)] + [fwt])
    values = np.array(rows, dtype=float) * 100
    out = [header]
    out += [[str(s), *_cells(v)] for s, v in zip(c.seeds, values, strict=True)]
    return [*out, ["mean", *_cells(values.mean(axis=0))]]


def _cells(values: np.ndarray) -> list[str]:
    """Accuracies in % to one decimal; the last value (FWT) signed."""
    return [f"{v:.1f}" for v in values[:-1]] + [f"{values[-1]:+.1f}"]


def scenarios_table(by_scenario: dict[str, Comparison]) -> list[list[str]]:
    """One comparison per scenario, side by side: each strategy's average accuracy (mean ±
    std over seeds) per scenario, and the raw samples it keeps (in the last scenario)."""
    cs = list(by_scenario.values())
    header = ["strategy", *[f"{s}-IL" for s in by_scenario], "raw samples kept"]
    out = [header]
    for row in cs[0].rows:
        rows = [c.row(row.strategy) for c in cs]
        cells = [_pm(r.values("avg_acc")) if r else "n/a" for r in rows]
        kept = next((r for r in reversed(rows) if r), row).values("raw_samples").mean()
        out.append([row.strategy, *cells, f"{kept:,.0f}"])
    return out


def format_text(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("---" for _ in rows[0]) + "|")
    return "\n".join(lines)


def report_lines(c: Comparison, extra: Sequence[str] = ()) -> list[str]:
    """The markdown report: what the columns mean, the table, the figures, ``extra`` lines."""
    reference = c.with_role(Role.REFERENCE)
    ref = reference.strategy if reference else "the reference strategy"
    lines = [
        f"# {c.experiment}: {' -> '.join(c.displays)} ({c.scenario}-incremental)",
        "",
        f"Seeds {c.seeds}; mean ± std over seeds; accuracies in % on the test split. "
        "Raw kept: training samples a strategy keeps across task boundaries at the end of the "
        "sequence; state: derived state (Fisher matrices, importances, model copies). "
        f"Intransigence: {ref}'s accuracy on each task right after it, minus the strategy's "
        f"(Chaudhry et al. 2018), mean over tasks. Time: training seconds relative to {ref}.",
        "",
        format_markdown(table(c)),
        "",
    ]
    if c.skipped:
        lines += ["Not run:", ""] + [f"- {k}: {v}" for k, v in c.skipped.items()] + [""]
    return [
        *lines,
        f"MLflow parent run: `{c.parent_run_id}`",
        "",
        f"![accuracy along the sequence]({ALONG_SEQUENCE_FIGURE})",
        "",
        f"![accuracy against data kept]({VS_KEPT_FIGURE})",
        "",
        *extra,  # the loss-landscape planes (or why they are missing)
    ]
