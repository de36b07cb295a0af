"""What a finished sequence shows: the accuracy matrix as text, as a heatmap and as each task's
accuracy along the sequence, the headline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

METRIC_LABELS = {
    "avg_acc": "average accuracy",
    "bwt": "backward transfer (BWT)",
    "fwt": "forward transfer (FWT)",
    "forgetting": "forgetting (max-based)",
    "plasticity": "plasticity",
    "retention": "retention (earlier tasks)",
}


def format_matrix(R: ArrayLike, names: Sequence[str], split: str = "test") -> str:
    """The accuracy matrix as a text table: rows "after task i", columns "acc on task j" (%)."""
    m = np.asarray(R, dtype=float) * 100
    width = max(8, *(len(n) for n in names)) + 1
    lines = [
        f"{split} accuracy (%)  rows: after training task i; columns: task j",
        " " * (width + 6) + "".join(f"{n:>{width}}" for n in names),
    ]
    for i, name in enumerate(names):
        cells = "".join(f"{m[i, j]:>{width}.1f}" for j in range(len(names)))
        lines.append(f"{'after ' + name:<{width + 6}}{cells}")
    return "\n".join(lines)


def headline(R: ArrayLike, names: Sequence[str]) -> str:
    """``MNIST 99.0% -> after Fashion-MNIST: MNIST 34.1%, Fashion-MNIST 90.7%``."""
    m = np.asarray(R, dtype=float) * 100
    first = f"{names[0]} {m[0, 0]:.1f}%"
    if len(names) == 1:
        return first
    final = ", ".join(f"{n} {m[-1, j]:.1f}%" for j, n in enumerate(names))
    return f"{first} -> after {names[-1]}: {final}"


def format_summary(summary: Mapping[str, float], split: str = "test") -> str:
    """Summary metrics, one per line, in percentage points."""
    lines = [f"summary ({split} split)"]
    for key, label in METRIC_LABELS.items():
        if key in summary:
            lines.append(
                f"  {label:<26}{summary[key] * 100:+7.1f}"
                if key in ("bwt", "fwt")
                else f"  {label:<26}{summary[key] * 100:7.1f}"
            )
    return "\n".join(lines)


def heatmap(matrices: Mapping[str, ArrayLike], names: Sequence[str], title: str) -> Figure:
    """One heatmap panel per split of the accuracy matrix, cells annotated in %."""
    n = len(names)
    fig = Figure(figsize=(1.6 + 2.2 * n * len(matrices), 1.2 + 1.1 * n), layout="constrained")
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (split, R) in zip(axes, matrices.items(), strict=True):
        m = np.asarray(R, dtype=float) * 100
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.1f}",
                    ha="center",
                    va="center",
                    color="white" if m[i, j] < 60 else "black",
                )
        ax.set_xticks(range(n), names)
        ax.set_yticks(range(n), [f"after {x}" for x in names])
        ax.set_xlabel("evaluated on task")
        ax.set_title(f"{split} accuracy (%)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title)
    return fig


def along_sequence(
    percent: ArrayLike,
    names: Sequence[str],
    title: str,
    split: str = "test",
    init: Sequence[float] | None = None,
) -> Figure:
    """Each task's accuracy along the sequence: one line per task evaluated, against the task
    just trained (``percent[i][j]``: on task j after task i, in %).

    Args:
        percent: the accuracy matrix in % (:class:`pipeline.results.AccuracyAlong` rows).
        names: the tasks, in sequence order (the x ticks and the legend).
        title: the figure's title.
        split: the split evaluated (the y label).
        init: the untrained model's accuracies in %, drawn first (tick ``init``) when given.
    """
    m = np.asarray(percent, dtype=float)
    ticks = list(names)
    if init is not None:
        m, ticks = np.vstack([np.asarray(init, dtype=float), m]), ["init", *ticks]
    fig = Figure(figsize=(max(5.0, 2.0 + 1.3 * len(ticks)), 4.0), layout="constrained")
    ax = fig.subplots()
    for j, name in enumerate(names):
        ax.plot(range(len(ticks)), m[:, j], marker="o", label=name)
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set_xlabel("after training task")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(title="accuracy on", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig
