"""Compare strategies on one benchmark over several seeds: one table, one report, one parent run.

Every (strategy, seed) pair is a full :func:`pipeline.runner.run_sequence`, nested as a child
of a parent MLflow run that holds the table, the markdown report and the plots. Besides the
accuracy metrics, the table answers the thread's "why not just retrain on all the data?": what
each strategy keeps (raw samples, which privacy law may forbid, and derived state) and what it
costs in training time next to ``joint``, which retrains on everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

from pipeline import metrics
from pipeline.config import REPORTS_DIR, ConfigError, ExperimentConfig, compose
from pipeline.landscape import Options, comparison_plane
from pipeline.runner import SequenceResult, run_sequence
from pipeline.strategies import REGISTRY
from pipeline.tracking import Run, client_for

#: Order of the default comparison: baselines, then no raw data kept, then rehearsal.
DEFAULT_ORDER = (
    "naive",
    "joint",
    "ewc",
    "online_ewc",
    "si",
    "mas",
    "l2",
    "lwf",
    "replay",
    "agem",
    "derpp",
)


def default_strategies() -> list[str]:
    """Every registered strategy, baselines first (``all`` on the command line)."""
    known = [s for s in DEFAULT_ORDER if s in REGISTRY]
    return known + sorted(set(REGISTRY) - set(known))


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
    report_dir: Path = REPORTS_DIR

    def row(self, strategy: str) -> Row | None:
        return next((r for r in self.rows if r.strategy == strategy), None)

    def intransigence(self, row: Row) -> float:
        """Mean intransigence against ``joint``'s diagonal (NaN without a joint row)."""
        joint = self.row("joint")
        if joint is None:
            return float("nan")
        ref = np.mean([np.diag(r.matrix["test"]) for r in joint.results], axis=0)
        vals = [np.mean(metrics.intransigence(r.matrix["test"], list(ref))) for r in row.results]
        return float(np.mean(vals))

    def time_vs_joint(self, row: Row) -> float:
        joint = self.row("joint")
        if joint is None:
            return float("nan")
        return float(row.values("train_s").mean() / joint.values("train_s").mean())


def _pm(values: np.ndarray, scale: float = 100.0, digits: int = 1) -> str:
    if np.all(np.isnan(values)):
        return "n/a"
    mean, std = float(np.mean(values)) * scale, float(np.std(values)) * scale
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(c: Comparison) -> list[list[str]]:
    """The comparison table as rows of cells (header first)."""
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
        "time vs joint",
    ]
    out = [header]
    for row in c.rows:
        cells = [row.strategy]
        cells += [_pm(np.array([_final(j)(r) for r in row.results])) for j in range(len(c.tasks))]
        cells += [_pm(row.values(k)) for k in ("avg_acc", "bwt", "forgetting", "plasticity")]
        cells.append(f"{c.intransigence(row) * 100:.1f}" if c.row("joint") else "n/a")
        cells.append(f"{row.values('raw_samples').mean():,.0f}")
        cells += [f"{row.values(k).mean():.2f}" for k in ("raw_mb", "state_mb")]
        ratio = c.time_vs_joint(row)
        cells.append("n/a" if np.isnan(ratio) else f"{ratio:.2f}x")
        out.append(cells)
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


def plot_along_sequence(c: Comparison) -> Figure:
    """Each task's test accuracy along the sequence, one line per strategy (mean over seeds)."""
    n = len(c.tasks)
    fig = Figure(figsize=(4.2 * n, 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    for j, ax in enumerate(axes):
        for row in c.rows:
            curve = np.mean([r.matrix["test"][:, j] for r in row.results], axis=0) * 100
            ax.plot(range(n), curve, marker="o", label=row.strategy)
        ax.axvline(j, color="grey", lw=0.8, ls=":")
        ax.set_title(f"accuracy on {c.displays[j]}")
        ax.set_xticks(range(n), [f"after {d}" for d in c.displays], rotation=20, fontsize=8)
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{c.experiment} ({c.scenario}-incremental), mean over seeds {c.seeds}")
    return fig


def plot_accuracy_vs_kept(c: Comparison) -> Figure:
    """Final average accuracy against the raw data a strategy keeps."""
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.subplots()
    for row in c.rows:
        kept = max(row.values("raw_samples").mean(), 1.0)  # log axis: 0 drawn at 1
        acc = row.values("avg_acc") * 100
        ax.errorbar(kept, acc.mean(), yerr=acc.std(), fmt="o", capsize=3)
        ax.annotate(
            row.strategy, (kept, acc.mean()), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    ax.set_xscale("log")
    ax.set_xlabel("raw training samples kept across tasks (log; 0 drawn at 1)")
    ax.set_ylabel("final average test accuracy (%)")
    ax.set_title(f"{c.experiment}: accuracy against data kept")
    return fig


def compare(
    experiment: str,
    strategies: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    out_dir: Path | None = None,
    log: Callable[[str], None] = print,
    landscape: Options | None = None,
    resume: str | None = None,
) -> Comparison:
    """Run every strategy on every seed and write the report.

    Args:
        experiment: a file of ``conf/experiment/``.
        strategies: names, ``a+b`` for a combination (``ewc+replay``).
        seeds: experiment seeds.
        overrides: applied to every run (``trainer.epochs=1``, ``scenario=class``...).
        out_dir: where the report goes (default ``reports/compare-<experiment>-<time>``).
        landscape: grid and samples of the loss-landscape plane of naive against the best
            strategy that keeps no raw data (:func:`pipeline.landscape.comparison_plane`).
        resume: the parent run of a comparison that was cut off, with the same arguments: its
            finished child runs are read back, not run again.

    Raises:
        ConfigError: a bad override or strategy name, or a ``resume`` run that is not the same
            comparison (before anything runs).
    """
    configs: dict[str, list[ExperimentConfig]] = {}
    skipped: dict[str, str] = {}
    for spec in strategies:
        try:
            configs[spec] = [
                compose(
                    experiment, [*overrides, f"strategy=[{spec.replace('+', ',')}]", f"seed={seed}"]
                )
                for seed in seeds
            ]
        except ConfigError as e:
            if "does not work in" not in str(e) and "forbids" not in str(e):
                raise
            skipped[spec] = str(e).removeprefix("strategy: ")
    if not configs:
        raise ConfigError("strategy: no strategy can run in this setting")
    base = next(iter(configs.values()))[0]
    store = base.tracking.store
    out_dir = out_dir or REPORTS_DIR / f"compare-{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    params = {
        "experiment": experiment,
        "strategies": ",".join(configs),
        "seeds": ",".join(map(str, seeds)),
        "scenario": base.scenario,
        "overrides": " ".join(overrides),
        "tasks": " -> ".join(t.name for t in base.data.tasks),
    }
    done = finished_children(store, resume, params) if resume else {}
    parent_run = (
        Run.reopen(store, resume)
        if resume
        else Run.start(
            store,
            base.tracking.experiment or base.name,
            f"compare-{experiment}",
            tags={"kind": "comparison", "scenario": base.scenario},
        )
    )
    with parent_run as parent:
        if not resume:
            parent.log_params(params)
        log(f"parent run {parent.run_id} (if cut off, resume it: RESUME={parent.run_id})")
        rows: list[Row] = []
        total = len(configs) * len(seeds)
        for spec, cfgs in configs.items():
            row = Row(spec)
            for cfg in cfgs:
                cfg.tracking.run_name = f"{spec}-seed{cfg.seed}"
                step = f"[{len(rows) * len(seeds) + len(row.results) + 1}/{total}] {spec}, seed"
                if cfg.tracking.run_name in done:
                    run_id = done[cfg.tracking.run_name]
                    try:
                        row.results.append(SequenceResult.from_run(store, run_id))
                        log(f"{step} {cfg.seed}: finished before (run {run_id})")
                        continue
                    except LookupError as e:
                        log(f"{step} {cfg.seed}: {e}; running it again")
                else:
                    log(f"{step} {cfg.seed}")
                row.results.append(run_sequence(cfg, parent_run_id=parent.run_id))
            rows.append(row)
        first = rows[0].results[0]
        c = Comparison(
            experiment,
            first.tasks,
            first.displays,
            base.scenario,
            list(seeds),
            rows,
            skipped,
            parent.run_id,
            out_dir,
        )
        plane = comparison_plane(c, store, parent.run_id, landscape, log)
        write_report(c, out_dir, parent, plane)
    return c


def finished_children(store: str | Path, parent_id: str, params: dict[str, str]) -> dict[str, str]:
    """The finished child runs of the comparison ``parent_id``, by run name; children left
    RUNNING by a crash are marked KILLED (they run again).

    Raises:
        ConfigError: no such run, or it is not a comparison with these ``params``.
    """
    client = client_for(store)
    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        raise ConfigError(f"resume: no MLflow run '{parent_id}' in {store}") from None
    if parent.data.tags.get("kind") != "comparison":
        raise ConfigError(f"resume: run '{parent_id}' is not a comparison (make compare)")
    differ = [
        f"{k} {parent.data.params[k]!r} (now {v!r})"
        for k, v in params.items()
        if k in parent.data.params and parent.data.params[k] != v
    ]
    if differ:
        raise ConfigError(
            f"resume: run '{parent_id}' compared other settings: {'; '.join(differ)}; "
            "resume it with the same arguments, or start a new comparison"
        )
    done: dict[str, str] = {}
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
    )
    for run in children:
        if run.info.status == "FINISHED":
            done[run.info.run_name] = run.info.run_id  # the latest one wins
        elif run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "error", "cut off; run again when resumed")
            client.set_terminated(run.info.run_id, status="KILLED")
    return done


def write_report(c: Comparison, out_dir: Path, parent: Run, extra: Sequence[str] = ()) -> None:
    """The table (text and markdown), the plots and ``extra`` markdown lines; to ``out_dir``
    and the parent run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table(c)
    lines = [
        f"# {c.experiment}: {' -> '.join(c.displays)} ({c.scenario}-incremental)",
        "",
        f"Seeds {c.seeds}; mean ± std over seeds; accuracies in % on the test split. "
        "Raw kept: training samples a strategy keeps across task boundaries at the end of the "
        "sequence; state: derived state (Fisher matrices, importances, model copies). "
        "Intransigence: joint's accuracy on each task right after it, minus the strategy's "
        "(Chaudhry et al. 2018), mean over tasks. Time: training seconds relative to joint.",
        "",
        format_markdown(rows),
        "",
    ]
    if c.skipped:
        lines += ["Not run:", ""] + [f"- {k}: {v}" for k, v in c.skipped.items()] + [""]
    lines += [
        f"MLflow parent run: `{c.parent_run_id}`",
        "",
        "![accuracy along the sequence](accuracy_along_sequence.png)",
        "",
        "![accuracy against data kept](accuracy_vs_data_kept.png)",
        "",
        *extra,  # the loss-landscape plane (or why it is missing)
    ]
    (out_dir / "report.md").write_text("\n".join(lines))
    (out_dir / "table.txt").write_text(format_text(rows) + "\n")
    for name, fig in (
        ("accuracy_along_sequence.png", plot_along_sequence(c)),
        ("accuracy_vs_data_kept.png", plot_accuracy_vs_kept(c)),
    ):
        fig.savefig(out_dir / name, dpi=120)
        parent.log_figure(fig, name)
    parent.log_text("\n".join(lines), "report.md")
    parent.log_text(format_text(rows) + "\n", "table.txt")
    parent.log_metrics(
        {
            f"avg_acc/{r.strategy.replace('+', '_and_')}": float(r.values("avg_acc").mean())
            for r in c.rows
        }
    )
