"""Forgetting in weight space: two tasks' losses along a line and over a plane of weights.

The thread explains forgetting with two bowls: task A's loss is low around theta_A (the weights
after task A), task B's around theta_B (after task B), and training on B walks the weights out
of A's bowl. This module draws that picture from a run's checkpoints:

- **line**: loss and accuracy of both tasks at ``theta(a) = (1 - a) theta_A + a theta_B`` for
  ``a`` in [-0.25, 1.25] (:func:`line_values`);
- **plane**: both losses and their sum over the plane through theta_A, theta_B and theta_S, a
  strategy's weights after task B (:func:`plane_values`), in an orthonormal basis built by
  Gram-Schmidt (:func:`gram_schmidt`), so that distances and angles on the figure are those of
  weight space.

The math takes flat parameter vectors and an ``evaluate(theta) -> values`` callable, so the
tests check it on quadratics with a closed form; :class:`ModelLoss` is the callable for a real
network. Choices, and why:

- **Data**: a fixed subset of each task's *test* split (``samples``, default 2,000, drawn once
  by a seeded permutation: every point of a figure is evaluated on the same samples). The figure
  is a report, like the accuracy matrix, and its endpoints then agree with the run's reported
  test accuracies (up to the subset's sampling error); nothing is selected on it, so it has no
  claim on the validation split, which model selection and sweeps read.
- **Tasks**: theta_A and theta_B are the checkpoints after tasks 0 and 1. For longer sequences
  the picture is of the first two tasks; every later task would need another axis.
- **Parameters**: only the network's parameters (``module.model``) are interpolated, the
  parameters every checkpoint of the same model has; strategy state (Fisher matrices, buffers,
  LwF's model copy) is not part of the function being drawn. A domain-incremental head is shared
  and moves with the rest. A task-incremental ``MultiHead`` holds every task's layer in every
  checkpoint; each sample is evaluated through its own task's layer, as in training.
- **Buffers** come from the checkpoint after task B: in class-incremental runs the
  ``IncrementalHead``'s active classes are those of both tasks everywhere on the figure (one
  function over the whole plane; at theta_A, task A's loss therefore includes the untrained
  outputs of task B's classes).
- **Normalisation layers**: batch norm's running statistics are averages over the data seen,
  not functions of the weights, so they do not interpolate; at every point :class:`ModelLoss`
  recomputes them on the evaluation samples of both tasks (:func:`recompute_batchnorm`). Our
  networks (``pipeline.models``: the LeNet-style CNN and the MLP) have no batch norm, so for
  them this never runs and each point is exactly the network at those weights.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patheffects import withStroke
from matplotlib.ticker import FuncFormatter
from numpy.typing import ArrayLike
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from pipeline.config import REPORTS_DIR, ExperimentConfig
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch, TaskDataset
from pipeline.runner import load_checkpoint
from pipeline.tracking import Run, client_for, local_path

if TYPE_CHECKING:
    from pipeline.compare import Comparison

#: ``evaluate(theta) -> values``: any fixed number of values per point (losses, accuracies).
Evaluate = Callable[[Tensor], ArrayLike]
#: Order of the values :class:`ModelLoss` returns.
QUANTITIES = ("loss_a", "loss_b", "acc_a", "acc_b")
T = TypeVar("T")
ARTIFACT_DIR = "landscape"  # artifacts: landscape/line.png, landscape/plane.json, ...
SPLIT = "test"  # see the module docstring


class LandscapeError(ValueError):
    """The landscape cannot be drawn (unknown run, no checkpoints, runs that do not match);
    one line for the user (the CLI exits with code 2)."""


@dataclass
class Options:
    """How finely and on how much data the landscape is evaluated.

    Attributes:
        points: points along the line (plus 0 and 1 where their spacing misses them).
        span: the line's range of ``a`` (0 is theta_A, 1 is theta_B).
        grid: points per axis of the plane (``grid x grid`` evaluations).
        margin: room around the three points on the plane, as a fraction of their larger span.
        samples: evaluation samples per task (fewer when the split is smaller).
        seed: seed of the subset of samples.
        batch_size: evaluation batch size (small batches stay in the CPU's cache).
        workers: points evaluated at once, each on one thread (0: one per core, as torch
            counts them).
    """

    points: int = 31
    span: tuple[float, float] = (-0.25, 1.25)
    grid: int = 21
    margin: float = 0.25
    samples: int = 2000
    seed: int = 0
    batch_size: int = 100
    workers: int = 0

    def check(self) -> None:
        """Raise :class:`LandscapeError` for a value that cannot work."""
        for key, value, low in (
            ("points", self.points, 2),
            ("grid", self.grid, 2),
            ("samples", self.samples, 1),
            ("batch_size", self.batch_size, 1),
        ):
            if value < low:
                raise LandscapeError(f"--{key.replace('_', '-')}: must be >= {low}, got {value}")
        if self.margin < 0 or self.workers < 0 or self.span[0] >= self.span[1]:
            raise LandscapeError(f"margin and workers must be >= 0, span increasing: {self}")


# -- the math: flat parameter vectors and an evaluate callable ---------------------------------
def evaluate_all(
    make: Callable[[T], Tensor], items: Sequence[T], evaluate: Evaluate, workers: int = 1
) -> np.ndarray:
    """``evaluate(make(item))`` for every item, as rows of one array, in order.

    With ``workers > 1`` the points are evaluated concurrently by that many threads (``evaluate``
    must then be thread-safe, as :class:`ModelLoss` is); each thread builds its own parameter
    vector, so only ``workers`` of them exist at a time.
    """

    def one(item: T) -> np.ndarray:
        return np.asarray(evaluate(make(item)), dtype=float).reshape(-1)

    if workers <= 1:
        rows = [one(item) for item in items]
    else:
        with ThreadPoolExecutor(workers) as pool:
            rows = list(pool.map(one, items))
    return np.stack(rows)


def line_values(
    theta_a: Tensor,
    theta_b: Tensor,
    alphas: Sequence[float],
    evaluate: Evaluate,
    workers: int = 1,
) -> np.ndarray:
    """Values of ``evaluate`` along ``theta(a) = (1 - a) * theta_a + a * theta_b``.

    Args:
        theta_a, theta_b: flat parameter vectors (a = 0 and a = 1).
        alphas: positions along the line; outside [0, 1] extrapolates.
        evaluate: maps a parameter vector to a fixed number of values.
        workers: points evaluated concurrently (see :func:`evaluate_all`).

    Returns:
        Array of shape ``(len(alphas), k)``: row ``i`` is ``evaluate(theta(alphas[i]))``.
    """
    # (1 - a) A + a B rather than A + a (B - A): exactly theta_b at a = 1, in any precision.
    return evaluate_all(
        lambda a: (1 - a) * theta_a + a * theta_b, [float(a) for a in alphas], evaluate, workers
    )


def line_alphas(span: tuple[float, float], points: int) -> np.ndarray:
    """``points`` evenly spaced positions over ``span``, plus exactly 0 and 1 (the two
    checkpoints) when the spacing misses them."""
    alphas = np.linspace(span[0], span[1], points)
    for end in (0.0, 1.0):
        alphas[np.isclose(alphas, end, rtol=0, atol=1e-9)] = end  # linspace's 1.0000000000000002
    inside = [e for e in (0.0, 1.0) if span[0] <= e <= span[1]]
    return np.union1d(alphas, inside)


def gram_schmidt(theta_a: Tensor, theta_b: Tensor, theta_s: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal basis ``(u, v)`` of the plane through three points, by Gram-Schmidt.

    ``u = (B - A) / |B - A|``; ``v`` is ``S - A`` minus its component along ``u``, normalised.
    Computed in float64: the vectors have ~10^5 entries and the check ``u . v = 0`` should hold
    to rounding, not to float32's 1e-7 times the norms.

    Raises:
        LandscapeError: the points do not span a plane (A = B, or S on the line through them).
    """
    a, b, s = (t.detach().double().flatten() for t in (theta_a, theta_b, theta_s))
    d = b - a
    norm = torch.linalg.vector_norm(d)
    if norm == 0:
        raise LandscapeError("theta_A and theta_B are the same point: there is no line")
    u = d / norm
    w = s - a
    w = w - (w @ u) * u
    w = w - (w @ u) * u  # a second pass removes what rounding left of u (classical GS is lossy)
    wn = torch.linalg.vector_norm(w)
    if wn <= 1e-6 * max(float(torch.linalg.vector_norm(s - a)), float(norm)):
        raise LandscapeError("theta_S lies on the line through theta_A and theta_B: no plane")
    return u, w / wn


def plane_coordinates(theta: Tensor, origin: Tensor, u: Tensor, v: Tensor) -> tuple[float, float]:
    """Coordinates ``(x, y)`` of ``theta``'s projection on the plane ``origin + x u + y v``."""
    d = theta.detach().double().flatten() - origin.detach().double().flatten()
    return float(d @ u), float(d @ v)


def plane_axes(points: ArrayLike, n: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid axes (``n`` values each) that hold every point with room around them.

    The room is ``margin`` times the larger of the two spans on both axes, so that three
    points almost on a line still get a plane around them, not a sliver.
    """
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    lo, hi = p.min(axis=0), p.max(axis=0)
    pad = margin * float(max((hi - lo).max(), 1e-12))
    xs = np.linspace(lo[0] - pad, hi[0] + pad, n)
    ys = np.linspace(lo[1] - pad, hi[1] + pad, n)
    return xs, ys


@dataclass
class Plane:
    """Values of ``evaluate`` on a grid of the plane through theta_A, theta_B and theta_S.

    Attributes:
        xs, ys: grid coordinates along ``u`` and ``v`` (units: Euclidean distance in weight
            space, since the basis is orthonormal).
        values: shape ``(len(ys), len(xs), k)``: ``values[j, i]`` is at ``(xs[i], ys[j])``.
        points: coordinates of ``A``, ``B`` and ``S`` (A is the origin, B lies on ``u``).
        u, v: the orthonormal basis (float64).
    """

    xs: np.ndarray
    ys: np.ndarray
    values: np.ndarray
    points: dict[str, tuple[float, float]]
    u: Tensor
    v: Tensor


def plane_values(
    theta_a: Tensor,
    theta_b: Tensor,
    theta_s: Tensor,
    grid: int | tuple[ArrayLike, ArrayLike],
    evaluate: Evaluate,
    margin: float = 0.25,
    workers: int = 1,
) -> Plane:
    """Values of ``evaluate`` on the plane ``theta_a + x u + y v`` (basis: :func:`gram_schmidt`).

    Args:
        theta_a, theta_b, theta_s: flat parameter vectors; theta_a is the origin.
        grid: points per axis (the range then holds the three points, see :func:`plane_axes`),
            or explicit ``(xs, ys)`` coordinates.
        evaluate: maps a parameter vector (theta_a's dtype) to a fixed number of values.
        margin: room around the points when ``grid`` is a number.
        workers: points evaluated concurrently (see :func:`evaluate_all`).

    Raises:
        LandscapeError: the three points do not span a plane.
    """
    u, v = gram_schmidt(theta_a, theta_b, theta_s)
    origin = theta_a.detach().double().flatten()
    points = {
        name: plane_coordinates(t, origin, u, v)
        for name, t in (("A", theta_a), ("B", theta_b), ("S", theta_s))
    }
    if isinstance(grid, int):
        xs, ys = plane_axes(list(points.values()), grid, margin)
    else:
        xs, ys = (np.asarray(g, dtype=float) for g in grid)

    def at(xy: tuple[float, float]) -> Tensor:
        return (origin + xy[0] * u + xy[1] * v).to(theta_a.dtype).view_as(theta_a)

    coords = [(float(x), float(y)) for y in ys for x in xs]  # row-major: values[j, i]
    values = evaluate_all(at, coords, evaluate, workers)
    return Plane(xs, ys, values.reshape(len(ys), len(xs), -1), points, u, v)


# -- a network as an evaluate callable ----------------------------------------------------------
def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Sequence[Batch], batch_size: int) -> None:
    """Re-estimate every batch-norm layer's running statistics on ``batches`` at the current
    weights: the plain average of the statistics of every ``batch_size`` slice, as
    ``torch.optim.swa_utils.update_bn`` computes them.

    The statistics are averages of activations, not functions of the weights: interpolating
    them, or keeping one checkpoint's, gives a network that no training produced. The model
    is left in eval mode.
    """
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch below, not an EMA
        m.train()
    for b in batches:
        for i in range(0, len(b.y), batch_size):
            model(b.x[i : i + batch_size], b.task[i : i + batch_size])
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
        m.eval()


def load_parameters(model: nn.Module, theta: Tensor) -> None:
    """Copy the flat vector ``theta`` into ``model``'s parameters (``parameters()`` order).

    In place, unlike ``vector_to_parameters``, which rebinds each parameter to a view of
    ``theta``: copying keeps every parameter's memory format (channels-last convolutions).
    """
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    if theta.numel() != sum(sizes):
        raise ValueError(f"theta has {theta.numel()} entries, the model {sum(sizes)} parameters")
    with torch.no_grad():
        for p, chunk in zip(params, theta.split(sizes), strict=True):
            p.copy_(chunk.view(p.shape))


class ModelLoss:
    """``evaluate(theta)`` for a network: mean cross-entropy and accuracy on fixed samples.

    Each call loads ``theta`` into the network's parameters (in ``parameters()`` order, as
    :func:`flat_parameters` flattens them), then evaluates every batch in eval mode without
    gradients. Returns ``[loss_0, ..., loss_n, acc_0, ..., acc_n]``, one loss and one accuracy
    per batch of samples (:data:`QUANTITIES` for two tasks).

    Thread-safe: ``workers`` replicas of the network are kept, and a call borrows one. On the
    CPU, several single-threaded evaluations at once beat one evaluation on several threads:
    small batches stay in cache and no thread waits for another inside each operation.
    Convolutional networks run in channels-last memory format, in which oneDNN's convolutions
    and max-pooling are about twice as fast on the CPU (measured on the thread's CNN).

    Args:
        model: the network; its parameters are overwritten.
        tasks: one batch of evaluation samples per task (normalised, with task ids).
        batch_size: samples per forward pass.
        workers: replicas, i.e. the most concurrent calls.
    """

    def __init__(
        self, model: nn.Module, tasks: Sequence[Batch], batch_size: int = 100, workers: int = 1
    ) -> None:
        model = model.eval().to(memory_format=torch.channels_last)  # no-op without 4-D weights
        self.model = model
        self.replicas: SimpleQueue[nn.Module] = SimpleQueue()
        for m in [model, *(copy.deepcopy(model) for _ in range(workers - 1))]:
            self.replicas.put(m)
        self.tasks = [
            b._replace(x=b.x.contiguous(memory_format=torch.channels_last)) if b.x.dim() == 4 else b
            for b in tasks
        ]
        self.batch_size = batch_size
        self.has_batchnorm = bool(batchnorm_layers(model))

    @torch.no_grad()
    def __call__(self, theta: Tensor) -> np.ndarray:
        model = self.replicas.get()
        try:
            load_parameters(model, theta)
            if self.has_batchnorm:
                recompute_batchnorm(model, self.tasks, self.batch_size)
            losses, accs = [], []
            bs = self.batch_size
            for b in self.tasks:
                loss = correct = 0.0
                for i in range(0, len(b.y), bs):
                    logits = model(b.x[i : i + bs], b.task[i : i + bs])
                    y = b.y[i : i + bs]
                    loss += float(F.cross_entropy(logits, y, reduction="sum"))
                    correct += float((logits.argmax(1) == y).sum())
                losses.append(loss / len(b.y))
                accs.append(correct / len(b.y))
        finally:
            self.replicas.put(model)
        return np.array(losses + accs)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads in torch (0: as set), then restore the
    setting (``run --landscape`` goes on in the same process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def flat_parameters(model: nn.Module) -> Tensor:
    """The network's parameters as one detached vector (``parameters()`` order)."""
    return parameters_to_vector(model.parameters()).detach().clone()


def evaluation_subset(data: ContinualDataModule, index: int, samples: int, seed: int) -> Batch:
    """The fixed evaluation samples of task ``index``: ``samples`` of its test split, chosen
    by a seeded permutation (all of them when the split is smaller), normalised as in
    training, in index order."""
    task = data.tasks[index]
    split = getattr(task, SPLIT)
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:samples]
    dataset = TaskDataset([(split.subset(pick.sort().values), task)], data.tasks)
    return dataset[torch.arange(len(dataset))]


# -- reading runs ------------------------------------------------------------------------------
CKPT_NAME = re.compile(r"task(\d+)-.*\.ckpt$")


def run_checkpoints(store: str | Path, run_id: str) -> dict[int, Path]:
    """A run's per-task checkpoint files, by task index.

    Raises:
        LandscapeError: no store there, or no such run in it.
    """
    if not (Path(store) / "mlflow.db").is_file():
        raise LandscapeError(f"no MLflow store at {store}/ (mlflow.db is missing)")
    client = client_for(store)
    try:
        run = client.get_run(run_id)
    except Exception as e:  # MlflowException: the id is not in this store (or malformed)
        raise LandscapeError(f"no run '{run_id}' in the store {store}/") from e
    folder = local_path(run.info.artifact_uri) / "checkpoints"
    found = {}
    for path in sorted(folder.glob("task*.ckpt")):
        m = CKPT_NAME.match(path.name)
        if m:
            found[int(m.group(1))] = path
    return found


@dataclass
class Checkpoint:
    """One loaded checkpoint: its network, the run's config, where it came from."""

    run_id: str
    path: Path
    model: nn.Module
    cfg: ExperimentConfig

    @property
    def strategy(self) -> str:
        return "+".join(self.cfg.strategy)

    def signature(self) -> list[tuple[str, tuple[int, ...]]]:
        """Parameter names and shapes: what two checkpoints must share to be interpolated."""
        return [(n, tuple(p.shape)) for n, p in self.model.named_parameters()]


def load_run(store: str | Path, run_id: str, indices: Sequence[int]) -> list[Checkpoint]:
    """The checkpoints of run ``run_id`` after the tasks ``indices``.

    Raises:
        LandscapeError: unknown run, a missing checkpoint, a file that does not load.
    """
    found = run_checkpoints(store, run_id)
    missing = [i for i in indices if i not in found]
    if missing:
        have = f"checkpoints after tasks {sorted(found)}" if found else "no checkpoints"
        raise LandscapeError(
            f"run {run_id} has {have}; the landscape needs the checkpoints after tasks "
            f"{list(indices)} (a run of 2+ tasks with tracking.log_checkpoints=true)"
        )
    out = []
    for i in indices:
        try:
            module, cfg, _ = load_checkpoint(found[i])
        except KeyError as e:
            raise LandscapeError(
                f"run {run_id}: {found[i].name} has no {e} entry (written by an older pipeline)"
            ) from e
        except ValueError as e:
            raise LandscapeError(f"run {run_id}: cannot load {found[i].name} ({e})") from e
        out.append(Checkpoint(run_id, found[i], module.model.eval(), cfg))
    return out


def check_comparable(ref: Checkpoint, other: Checkpoint) -> None:
    """Refuse a theta_S from a run that does not share the reference run's task sequence,
    scenario and network (a point of another problem's weight space).

    Raises:
        LandscapeError: one line naming the difference.
    """
    a, b = ref.cfg, other.cfg
    seq_a = " -> ".join(t.name for t in a.data.tasks)
    seq_b = " -> ".join(t.name for t in b.data.tasks)
    if a.data.tasks != b.data.tasks:
        raise LandscapeError(
            f"run {other.run_id} trains on {seq_b}, run {ref.run_id} on {seq_a}: "
            "the plane needs runs of the same task sequence"
        )
    if a.scenario != b.scenario:
        raise LandscapeError(
            f"run {other.run_id} is {b.scenario}-incremental, run {ref.run_id} "
            f"{a.scenario}-incremental: the plane needs the same scenario"
        )
    if ref.signature() != other.signature():
        raise LandscapeError(
            f"runs {ref.run_id} and {other.run_id} have different networks "
            f"(model {a.model.name} vs {b.model.name}): their weights cannot be interpolated"
        )


# -- figures -------------------------------------------------------------------------------------
def _theta(name: str) -> str:
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
                f"{_theta(who)} (after {task})",
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
    styles = {"A": ("o", "white"), "B": ("s", "white"), "S": ("*", "gold")}
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
        for key, (x, y) in plane.points.items():
            marker, colour = styles[key]
            ax.plot(
                x,
                y,
                marker,
                ms=15 if key == "S" else 10,
                mfc=colour,
                mec="black",
                label=labels[key],
            )
            ax.annotate(
                _theta(key),
                (x, y),
                xytext=(7, 7),
                textcoords="offset points",
                fontsize=12,
                color="white",
                fontweight="bold",
                path_effects=[withStroke(linewidth=2.5, foreground="black")],  # light areas too
            )
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


# -- the whole thing: runs in, figures and JSON out ---------------------------------------------
@dataclass
class Landscape:
    """What :func:`draw` produced.

    Attributes:
        out_dir: the folder the files were written to.
        files: the files written (PNG and JSON).
        seconds: evaluation time of each figure drawn (``line``, ``plane``).
        summary: values at the marked points, for printing and the README.
    """

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _subsets(
    cfg: ExperimentConfig, options: Options, data_root: str
) -> tuple[list[Batch], list[str]]:
    """Evaluation samples of tasks 0 and 1, built from the run's own config so that
    normalisation, permutations and label remapping are exactly those of training.

    Raises:
        DataError: the data is missing.
    """
    data_cfg = replace(cfg.data, root=data_root) if data_root else cfg.data
    data = ContinualDataModule(data_cfg, cfg.seed, 0, cfg.scenario)
    data.setup()
    subsets = [evaluation_subset(data, i, options.samples, options.seed) for i in (0, 1)]
    return subsets, [data.tasks[i].display for i in (0, 1)]


def _save(
    fig: Figure, obj: dict[str, Any], name: str, out_dir: Path, runs: Sequence[Run]
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, js = out_dir / f"{name}.png", out_dir / f"{name}.json"
    fig.savefig(png, dpi=110)
    js.write_text(json.dumps(obj, indent=2))
    for run in runs:  # the files just written: log_figure would render the figure again
        run.log_file(png, ARTIFACT_DIR)
        run.log_file(js, ARTIFACT_DIR)
    return [png, js]


def _round(a: np.ndarray) -> Any:
    return np.round(a, 6).tolist()


def draw(
    store: str | Path,
    run_id: str,
    vs: str | None = None,
    *,
    options: Options | None = None,
    out_dir: Path | None = None,
    line: bool = True,
    log_to: Sequence[str] | None = None,
    data_root: str = "",
    plane_name: str = "plane",
    log: Callable[[str], None] = print,
) -> Landscape:
    """Draw the line (and, with ``vs``, the plane) for run ``run_id``; save and log them.

    Every check (the runs, their checkpoints, that ``vs`` matches) happens before anything is
    evaluated or written.

    Args:
        store: the MLflow store.
        run_id: the run that gives theta_A and theta_B (checkpoints after tasks 0 and 1).
        vs: a run whose checkpoint after task 1 is theta_S (the plane); ``None``: no plane.
        options: grid, samples...; defaults when ``None``.
        out_dir: where the PNG and JSON files go (default ``reports/landscape-<run id[:8]>``).
        line: draw the line (``False``: only the plane, as ``make compare`` does).
        log_to: run ids that get the files as artifacts under ``landscape/`` (default: the run).
        data_root: dataset folder, instead of the run's ``data.root``.
        plane_name: file stem of the plane's PNG and JSON (``make compare`` draws several).
        log: progress lines.

    Raises:
        LandscapeError: unknown run, missing checkpoints, ``vs`` from another task sequence,
            bad options.
        DataError: the run's data is missing.
    """
    options = options or Options()
    options.check()
    if not line and vs is None:
        raise LandscapeError("nothing to draw: the plane needs a second run (--vs)")
    ck_a, ck_b = load_run(store, run_id, (0, 1))
    ck_s = load_run(store, vs, (1,))[0] if vs else None
    theta_a, theta_b = flat_parameters(ck_a.model), flat_parameters(ck_b.model)
    theta_s = flat_parameters(ck_s.model) if ck_s else None
    if ck_s is not None and theta_s is not None:
        check_comparable(ck_b, ck_s)
        gram_schmidt(theta_a, theta_b, theta_s)  # no plane (theta_S on the line): fail now
    subsets, tasks = _subsets(ck_b.cfg, options, data_root)
    client = client_for(store)
    runs = [
        Run(client, rid, client.get_run(rid).info.experiment_id) for rid in (log_to or [run_id])
    ]
    out_dir = out_dir or REPORTS_DIR / f"landscape-{run_id[:8]}"
    workers = options.workers or torch.get_num_threads()  # default: one per core
    evaluate = ModelLoss(ck_b.model, subsets, options.batch_size, workers)
    # Parallel over points, each single-threaded (see ModelLoss); torch's setting is restored.
    threads = 1 if workers > 1 else 0
    how = f"{workers} workers x 1 thread" if workers > 1 else f"{torch.get_num_threads()} threads"
    cfg = ck_b.cfg
    n = [len(s.y) for s in subsets]
    head = f"{cfg.name}, {ck_b.strategy}, run {run_id[:8]}"
    distance = float(torch.linalg.vector_norm((theta_b - theta_a).double()))
    common = {
        "run_id": run_id,
        "tasks": tasks,
        "split": SPLIT,
        "samples": n,
        "sample_seed": options.seed,
        "parameters": int(theta_a.numel()),
        "workers": how,
        "batch_size": options.batch_size,
        "checkpoints": {"A": ck_a.path.name, "B": ck_b.path.name},
    }
    result = Landscape(out_dir)
    if line:
        alphas = line_alphas(options.span, options.points)
        started = time.perf_counter()
        with torch_threads(threads):
            values = line_values(theta_a, theta_b, list(alphas), evaluate, workers)
        result.seconds["line"] = seconds = time.perf_counter() - started
        log(
            f"line: {len(alphas)} points x 2 tasks x {n[0]:,} {SPLIT} samples in "
            f"{seconds:.1f} s ({how})"
        )
        ends = {k: values[int(np.argmin(np.abs(alphas - a)))] for k, a in (("A", 0), ("B", 1))}
        result.summary["line"] = {
            k: dict(zip(QUANTITIES, v.tolist(), strict=True)) for k, v in ends.items()
        }
        obj = {
            **common,
            "alphas": _round(alphas),
            **{q: _round(values[:, i]) for i, q in enumerate(QUANTITIES)},
            "distance_AB": distance,
            "seconds": seconds,
        }
        title = f"{head}: {tasks[0]} then {tasks[1]}, {n[0]:,} {SPLIT} samples per task"
        fig = plot_line(alphas, values, tasks, title, distance)
        result.files += _save(fig, obj, "line", out_dir, runs)
    if ck_s is not None and theta_s is not None:
        started = time.perf_counter()
        with torch_threads(threads):
            plane = plane_values(
                theta_a, theta_b, theta_s, options.grid, evaluate, options.margin, workers
            )
        result.seconds["plane"] = seconds = time.perf_counter() - started
        log(
            f"plane: {options.grid}x{options.grid} points x 2 tasks x {n[0]:,} {SPLIT} samples in "
            f"{seconds:.1f} s ({how})"
        )
        at = {k: evaluate(t) for k, t in (("A", theta_a), ("B", theta_b), ("S", theta_s))}
        result.summary["plane"] = {
            k: dict(zip(QUANTITIES, v.tolist(), strict=True)) for k, v in at.items()
        }
        who = {
            "A": f"{ck_a.strategy} after {tasks[0]} (run {run_id[:8]})",
            "B": f"{ck_b.strategy} after {tasks[1]} (run {run_id[:8]})",
            "S": f"{ck_s.strategy} after {tasks[1]} (run {ck_s.run_id[:8]})",
        }
        labels = {
            k: f"{_theta(k)}: {who[k]}\nloss A {at[k][0]:.3g}, loss B {at[k][1]:.3g}" for k in who
        }
        obj = {
            **common,
            "vs_run_id": ck_s.run_id,
            "vs_checkpoint": ck_s.path.name,
            "vs_strategy": ck_s.strategy,
            "basis": "orthonormal (Gram-Schmidt): u = (B - A)/|B - A|, v = (S - A) minus its "
            "u component, normalised; units: Euclidean distance in weight space",
            "points": {k: list(p) for k, p in plane.points.items()},
            "at_points": result.summary["plane"],
            "xs": _round(plane.xs),
            "ys": _round(plane.ys),
            **{q: _round(plane.values[..., i]) for i, q in enumerate(QUANTITIES)},
            "seconds": seconds,
        }
        title = (
            f"{cfg.name}: {ck_b.strategy} vs {ck_s.strategy}, {tasks[0]} then {tasks[1]}, "
            f"{n[0]:,} {SPLIT} samples per task"
        )
        fig = plot_plane(plane, tasks, labels, title)
        result.files += _save(fig, obj, plane_name, out_dir, runs)
    log(
        f"wrote {', '.join(p.name for p in result.files)} to {out_dir}/ and logged them to run(s) "
        f"{', '.join(r.run_id[:8] for r in runs)} under {ARTIFACT_DIR}/"
    )
    return result


# -- make compare: naive against the best strategy that keeps no raw data ----------------------
def best_raw_free(c: Comparison) -> str | None:
    """The strategy of a comparison that keeps no raw data (every part of a combination),
    other than the ``naive`` and ``joint`` baselines, with the highest mean validation average
    accuracy over the seeds (validation: choosing one is model selection). ``None`` if none ran.
    """
    from pipeline.strategies import REGISTRY

    def score(strategy: str) -> float:
        row = c.row(strategy)
        assert row is not None
        return float(np.mean([r.summary["val"]["avg_acc"] for r in row.results]))

    candidates = [
        r.strategy
        for r in c.rows
        if r.strategy not in ("naive", "joint")
        and all(not REGISTRY[n].keeps_raw_data for n in r.strategy.split("+"))
    ]
    return max(candidates, key=score, default=None)


# EWC is the reference regulariser of the field (and of the thread): its plane is drawn too when it
# ran, so a reader sees where a quadratic penalty lands next to the best method.
REFERENCE_STRATEGY = "ewc"


def comparison_plane(
    c: Comparison,
    store: str | Path,
    parent_run_id: str,
    options: Options | None = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Planes through naive's theta_A and theta_B and another strategy's theta_S, from the first
    seed's runs, into ``<report>/landscape/plane-<strategy>.png`` and the parent run's artifacts.

    theta_S comes from the best raw-data-free strategy and, when it ran and is another one, from
    EWC. Sequences of more than two tasks use tasks 0 and 1 (see the module docstring). When the
    comparison has no naive run, no raw-data-free strategy, a single task or no checkpoints,
    nothing is drawn and the reason is logged.

    Returns:
        Markdown lines for the comparison's report (the figures, or why there are none).
    """
    best = best_raw_free(c)
    naive = c.row("naive")
    if naive is None or best is None:
        why = "needs naive and a strategy that keeps no raw data (other than joint)"
    elif len(c.tasks) < 2:
        why = "needs a sequence of at least two tasks"
    else:
        seed = c.seeds[0]
        others = [best] + [s for s in (REFERENCE_STRATEGY,) if s != best and c.row(s)]
        lines = [
            "## Forgetting in weight space",
            "",
            f"Losses of {c.displays[0]} (task A) and {c.displays[1]} (task B) on the plane "
            "through naive's weights after task A and after task B and another strategy's after "
            f"task B (seed {seed}'s runs): {best}, the strategy that keeps no raw data with the "
            "highest mean validation average accuracy"
            + (f", and {REFERENCE_STRATEGY}." if len(others) > 1 else "."),
            "",
        ]
        for other in others:
            row = c.row(other)
            assert row is not None
            log(f"\nlandscape: naive against {other}, the runs of seed {seed}")
            try:
                draw(
                    store,
                    naive.results[0].run_id,
                    row.results[0].run_id,
                    options=options,
                    out_dir=c.report_dir / ARTIFACT_DIR,
                    line=False,
                    log_to=[parent_run_id],
                    plane_name=f"plane-{other}",
                    log=log,
                )
            except LandscapeError as e:
                log(f"landscape of naive against {other} not drawn: {e}")
                lines += [f"Plane of naive against {other} not drawn: {e}.", ""]
            else:
                lines += [
                    f"![loss landscape: naive vs {other}]({ARTIFACT_DIR}/plane-{other}.png)",
                    "",
                ]
        return lines
    log(f"landscape not drawn: {why}")
    return [f"Landscape plane not drawn: {why}.", ""]
