"""What a finished sequence shows: the accuracy matrix as text and as a heatmap, the headline."""

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
