"""A comparison's figures (matplotlib ``Figure`` objects; nothing is written here)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from pipeline.compare.table import Comparison


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
