"""A network as the landscape's ``evaluate`` callable, the evaluation samples, and the line
and plane of two (or three) checkpoints computed into plain data (:class:`Curve`,
:class:`Surface`), ready to be drawn and written by :func:`pipeline.landscape.draw`."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config.schema import ExperimentConfig
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch, TaskDataset
from pipeline.landscape.geometry import (
    LandscapeError,
    Plane,
    line_alphas,
    line_values,
    plane_values,
)
from pipeline.landscape.weights import batchnorm_layers, load_parameters, recompute_batchnorm

#: Order of the values :class:`ModelLoss` returns.
QUANTITIES = ("loss_a", "loss_b", "acc_a", "acc_b")

SPLIT = "test"  # see the module docstring


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


# -- a network as an evaluate callable ----------------------------------------------------------
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
    and max-pooling are about twice as fast on the CPU (measured on the project's CNN).

    Args:
        model: the network; its parameters are overwritten.
        tasks: one batch of evaluation samples per task (normalised, with task ids).
        batch_size: samples per forward pass.
        workers: replicas, i.e. the most concurrent calls.
    """

    def __init__(
        self, model: nn.Module, tasks: Sequence[Batch], batch_size: int = 100, workers: int = 1
    ) -> None:
        model = model.eval()  # build_model's convolutions are channels-last already
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


def evaluation_subset(data: ContinualDataModule, index: int, samples: int, seed: int) -> Batch:
    """The fixed evaluation samples of task ``index``: ``samples`` of its test split, chosen
    by a seeded permutation (all of them when the split is smaller), normalised as in
    training, in index order."""
    task = data.tasks[index]
    split = getattr(task, SPLIT)
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:samples]
    dataset = TaskDataset([(split.subset(pick.sort().values), task)], data.tasks)
    return dataset[torch.arange(len(dataset))]


@dataclass
class Checkpoint:
    """One loaded checkpoint: its network, the run's config, where it came from."""

    run_id: str
    file: str  # the checkpoint's file name in the run
    model: nn.Module
    cfg: ExperimentConfig

    @property
    def strategy(self) -> str:
        return "+".join(self.cfg.strategy)

    def signature(self) -> list[tuple[str, tuple[int, ...]]]:
        """Parameter names and shapes: what two checkpoints must share to be interpolated."""
        return [(n, tuple(p.shape)) for n, p in self.model.named_parameters()]


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


def _round(a: np.ndarray) -> Any:
    return np.round(a, 6).tolist()


@dataclass
class Evaluation:
    """What the line and the plane are evaluated on: the network as ``evaluate`` (its weights
    replaced at each point), the fixed samples of tasks A and B, and the parallelism.

    Attributes:
        evaluate: the callable of every point.
        tasks: display names of tasks A and B.
        samples: evaluation samples per task.
        workers: points evaluated at once (each single-threaded, see :class:`ModelLoss`).
    """

    evaluate: ModelLoss
    tasks: list[str]
    samples: list[int]
    workers: int

    @property
    def threads(self) -> int:
        """torch threads while evaluating (0: as set)."""
        return 1 if self.workers > 1 else 0

    @property
    def how(self) -> str:
        if self.workers > 1:
            return f"{self.workers} workers x 1 thread"
        return f"{torch.get_num_threads()} threads"


def prepare(
    model: nn.Module, cfg: ExperimentConfig, options: Options, root: Path | None
) -> Evaluation:
    """The evaluation of ``model`` (task B's network, whose weights each point replaces) on
    the fixed test samples of tasks 0 and 1, built from the run's own config so that
    normalisation, permutations and label remapping are exactly those of training.

    Raises:
        DataError: the data is missing.
    """
    # Test splits only: reading the training files too was the last peak of `make forget`.
    data = ContinualDataModule(cfg.data, cfg.seed, 0, cfg.scenario, root, test_only=True)
    data.setup()
    subsets = [evaluation_subset(data, i, options.samples, options.seed) for i in (0, 1)]
    workers = options.workers or torch.get_num_threads()  # default: one per core
    return Evaluation(
        ModelLoss(model, subsets, options.batch_size, workers),
        [data.tasks[i].display for i in (0, 1)],
        [len(s.y) for s in subsets],
        workers,
    )


@dataclass
class Curve:
    """Both tasks' loss and accuracy along the line from theta_A to theta_B.

    Attributes:
        alphas: positions along the line (0: theta_A, 1: theta_B).
        values: ``(len(alphas), 4)`` in :data:`QUANTITIES` order.
        distance: ``|theta_B - theta_A|``.
        seconds: evaluation time.
    """

    alphas: np.ndarray
    values: np.ndarray
    distance: float
    seconds: float

    def at_ends(self) -> dict[str, dict[str, float]]:
        """The values at theta_A and theta_B, by quantity."""
        ends = {k: int(np.argmin(np.abs(self.alphas - a))) for k, a in (("A", 0.0), ("B", 1.0))}
        return {
            k: dict(zip(QUANTITIES, self.values[i].tolist(), strict=True)) for k, i in ends.items()
        }

    def record(self) -> dict[str, Any]:
        """The JSON-able values (written beside the figure)."""
        return {
            "alphas": _round(self.alphas),
            **{q: _round(self.values[:, i]) for i, q in enumerate(QUANTITIES)},
            "distance_AB": self.distance,
            "seconds": self.seconds,
        }


def compute_line(theta_a: Tensor, theta_b: Tensor, ev: Evaluation, options: Options) -> Curve:
    """Evaluate the line ``(1 - a) theta_A + a theta_B`` over ``options.span``."""
    alphas = line_alphas(options.span, options.points)
    started = time.perf_counter()
    with torch_threads(ev.threads):
        values = line_values(theta_a, theta_b, list(alphas), ev.evaluate, ev.workers)
    distance = float(torch.linalg.vector_norm((theta_b - theta_a).double()))
    return Curve(alphas, values, distance, time.perf_counter() - started)


@dataclass
class Surface:
    """Both tasks' losses over the plane through theta_A, theta_B and theta_S.

    Attributes:
        plane: the evaluated grid.
        at: the values at the three points, by quantity.
        seconds: evaluation time.
    """

    plane: Plane
    at: dict[str, dict[str, float]]
    seconds: float

    def record(self) -> dict[str, Any]:
        """The JSON-able values (written beside the figure)."""
        p = self.plane
        return {
            "basis": "orthonormal (Gram-Schmidt): u = (B - A)/|B - A|, v = (S - A) minus its "
            "u component, normalised; units: Euclidean distance in weight space",
            "points": {k: list(xy) for k, xy in p.points.items()},
            "at_points": self.at,
            "xs": _round(p.xs),
            "ys": _round(p.ys),
            **{q: _round(p.values[..., i]) for i, q in enumerate(QUANTITIES)},
            "seconds": self.seconds,
        }


def compute_plane(thetas: dict[str, Tensor], ev: Evaluation, options: Options) -> Surface:
    """Evaluate the plane through ``thetas["A"]``, ``["B"]`` and ``["S"]`` on a grid.

    Raises:
        LandscapeError: the three points do not span a plane.
    """
    started = time.perf_counter()
    with torch_threads(ev.threads):
        plane = plane_values(
            thetas["A"],
            thetas["B"],
            thetas["S"],
            options.grid,
            ev.evaluate,
            options.margin,
            ev.workers,
        )
    seconds = time.perf_counter() - started
    at = {k: dict(zip(QUANTITIES, ev.evaluate(t).tolist(), strict=True)) for k, t in thetas.items()}
    return Surface(plane, at, seconds)
