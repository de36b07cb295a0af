"""The geometry of the landscape: flat parameter vectors, a line and a plane through them,
and an ``evaluate(theta) -> values`` callable. Pure math, so the tests check it on quadratics
with a closed form (see :mod:`pipeline.landscape` for the picture it draws)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

#: ``evaluate(theta) -> values``: any fixed number of values per point (losses, accuracies).
Evaluate = Callable[[Tensor], ArrayLike]

T = TypeVar("T")


class LandscapeError(ValueError):
    """The landscape cannot be drawn (unknown run, no checkpoints, runs that do not match);
    one line for the user (the CLI exits with code 2)."""


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
