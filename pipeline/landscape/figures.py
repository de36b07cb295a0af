"""The landscape's figures: the loss and accuracy along the line, and the losses over the
plane (matplotlib ``Figure`` objects; nothing is written here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patheffects import withStroke
from matplotlib.ticker import FuncFormatter

from pipeline.landscape.geometry import Plane


# -- figures -------------------------------------------------------------------------------------
def theta_label(name: str) -> str:
    return rf"$\theta_{{{name}}}$"


def plot_line(
    alphas: np.ndarray, values: np.ndarray, tasks: Sequence[str], title: str, distance: float
) -> Figure:
    """Loss (log scale) and accuracy of both tasks along the line, checkpoints marked.

    Args:
        alphas: positions along the line.
        values: ``(len(alphas), 4)`` in :data:`QUANTITIES` order.
        tasks: display names of task A and task B.
        title: figure title.
        distance: ``|theta_B - theta_A|`` (for the axis label).
    """
    fig = Figure(figsize=(11.5, 4.4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, offset, scale, label in (
        (ax_loss, 0, 1.0, "mean cross-entropy loss (log scale)"),
        (ax_acc, 2, 100.0, "accuracy (%)"),
    ):
        for j, (task, colour) in enumerate(zip(tasks, ("C0", "C1"), strict=True)):
            curve = values[:, offset + j] * scale
            ax.plot(alphas, curve, color=colour, lw=2, label=f"task {'AB'[j]}: {task}")
            ends = [int(np.argmin(np.abs(alphas - a))) for a in (0.0, 1.0)]
            ax.plot(alphas[ends], curve[ends], "o", color=colour, ms=7, mec="black")
        for a, who, task in ((0.0, "A", tasks[0]), (1.0, "B", tasks[1])):
            ax.axvline(a, color="grey", lw=0.9, ls=":")
            ax.annotate(  # above the axes: the curves can be anywhere inside
                f"{theta_label(who)} (after {task})",
                (a, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=9,
            )
        ax.set_xlabel(
            r"$\alpha$ in $\theta(\alpha) = (1-\alpha)\,\theta_A + \alpha\,\theta_B$"
            f"   ($\\|\\theta_B - \\theta_A\\|_2$ = {distance:.2f})"
        )
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_loss.set_yscale("log")
    # 0.1, 0.2, 0.5, 1 rather than 10^-1 and a label on every minor tick
    ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax_loss.yaxis.set_minor_formatter(
        FuncFormatter(lambda y, _: f"{y:g}" if f"{y:.0e}"[0] in "25" else "")
    )
    ax_loss.tick_params(axis="y", which="minor", labelsize=7)
    ax_acc.set_ylim(0, 102)
    ax_loss.legend(loc="best", fontsize=9)
    ax_acc.legend(loc="best", fontsize=9)
    fig.suptitle(title)
    return fig


def nice_ticks(low: float, high: float) -> list[float]:
    """1-2-5 values between ``low`` and ``high`` (log colorbar ticks people can read)."""
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    ticks = [m * 10.0**e for e in decades for m in (1, 2, 5) if low <= m * 10.0**e <= high]
    return [float(f"{t:.1g}") for t in ticks]


def plot_plane(plane: Plane, tasks: Sequence[str], labels: dict[str, str], title: str) -> Figure:
    """Filled contours of task A's loss, task B's loss and their sum, the points marked.

    Args:
        plane: the evaluated grid (values in :data:`QUANTITIES` order).
        tasks: display names of task A and task B.
        labels: legend text of the points ``A``, ``B``, ``S``.
        title: figure title.
    """
    fig = Figure(figsize=(17, 5.8), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    loss = plane.values[..., :2]
    surfaces = (
        (f"task A loss: {tasks[0]}", loss[..., 0]),
        (f"task B loss: {tasks[1]}", loss[..., 1]),
        ("sum of both losses", loss.sum(axis=-1)),
    )
    for ax, (name, z) in zip(axes, surfaces, strict=True):
        # Losses span orders of magnitude (0.01 at a bowl's bottom, 10+ far out): log levels.
        low = max(float(np.nanmin(z)), 1e-4)
        z = np.clip(z, low, None)
        levels = np.geomspace(low, max(float(np.nanmax(z)), low * 1.01), 16)
        cs = ax.contourf(plane.xs, plane.ys, z, levels=levels, norm=LogNorm(), cmap="viridis")
        ax.contour(plane.xs, plane.ys, z, levels=levels[::3], colors="white", linewidths=0.4)
        cbar = fig.colorbar(cs, ax=ax, shrink=0.9)
        cbar.set_ticks(nice_ticks(levels[0], levels[-1]), labels=None)
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        cbar.ax.minorticks_off()
        cbar.set_label(f"{name.split(':')[0]} (log scale)")
        _mark_points(ax, plane.points, labels)
        ax.set_title(name)
        ax.set_aspect("equal")
        ax.set_xlabel(r"$u = (\theta_B - \theta_A)/\|\theta_B - \theta_A\|$  (L2 distance)")
    axes[0].set_ylabel(r"$v$: toward $\theta_S$, orthogonal to $u$  (L2 distance)")
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=10
    )
    fig.suptitle(
        f"{title}\northonormal basis (Gram-Schmidt) of the plane through "
        r"$\theta_A$, $\theta_B$, $\theta_S$; axis units: Euclidean distance in weight space"
    )
    return fig


_POINT_STYLES = {"A": ("o", "white"), "B": ("s", "white"), "S": ("*", "gold")}


def _mark_points(ax: Axes, points: dict[str, tuple[float, float]], labels: dict[str, str]) -> None:
    """theta_A, theta_B and theta_S on a contour plot: a marker each, labelled."""
    for key, (x, y) in points.items():
        marker, colour = _POINT_STYLES[key]
        ms = 15 if key == "S" else 10
        ax.plot(x, y, marker, ms=ms, mfc=colour, mec="black", label=labels[key])
        ax.annotate(
            theta_label(key),
            (x, y),
            xytext=(7, 7),
            textcoords="offset points",
            fontsize=12,
            color="white",
            fontweight="bold",
            path_effects=[withStroke(linewidth=2.5, foreground="black")],  # light areas too
        )
