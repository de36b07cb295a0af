"""Continual-learning metrics, all computed from one accuracy matrix.

Notation (0-based in code): ``R[i, j]`` is the accuracy on task ``j`` after training through
task ``i``; ``b[j]`` is the accuracy on task ``j`` of the untrained model (same seed). Every
evaluation covers every task of the sequence, unseen ones too, so ``R`` is square (T x T).
Definitions follow ``docs/metrics.md``; the 1-based formulas there map to the code by
``k -> k - 1``. Accuracies are fractions in [0, 1] here; everything a user reads (the
terminal, MLflow's metrics, Optuna's values, reports) is in percent, converted once by
:func:`percent`.

A metric that needs an earlier task (BWT, FWT, forgetting) is undefined for a single task and is
left out of :func:`summarize` rather than reported as 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

Matrix = NDArray[np.float64]

SUMMARY_NAMES = ("avg_acc", "plasticity", "bwt", "fwt", "forgetting", "retention")
PERCENT_DECIMALS = 2  # 0.01 points: finer than one sample of a 10,000-sample test split


def percent(fraction: float) -> float:
    """An accuracy, or a difference of accuracies, as a user reads it: percent (points),
    rounded to :data:`PERCENT_DECIMALS` so MLflow's tables and Optuna's dashboard show
    ``35.53``, not ``0.35533333333333333``."""
    return round(float(fraction) * 100, PERCENT_DECIMALS)


def _matrix(R: ArrayLike, partial: bool = False) -> Matrix:
    """``R`` as an array; ``partial`` admits the first rows only (a sequence still running)."""
    m = np.asarray(R, dtype=np.float64)
    rows_ok = m.ndim == 2 and (m.shape[0] <= m.shape[1] if partial else m.shape[0] == m.shape[1])
    if not rows_ok or m.size == 0:
        raise ValueError(f"accuracy matrix must be square and non-empty, got shape {m.shape}")
    return m


def average_accuracy(R: ArrayLike, k: int | None = None) -> float:
    """Average accuracy over the tasks seen so far.

    ``ACC_k = 1/(k+1) * sum_{j<=k} R[k, j]`` (0-based ``k``); the final ``ACC`` is ``k = T-1``.

    Args:
        R: accuracy matrix (T x T), or its first rows while the sequence runs.
        k: row, i.e. the index of the task just trained; default the last row.
    """
    m = _matrix(R, partial=True)
    k = m.shape[0] - 1 if k is None else k
    return float(m[k, : k + 1].mean())


def backward_transfer(R: ArrayLike) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017, GEM).

    ``BWT = 1/(T-1) * sum_{j<T-1} (R[T-1, j] - R[j, j])``: how much learning later tasks changed
    the accuracy on earlier ones. Negative means forgetting. Needs ``T >= 2``.
    """
    m = _matrix(R)
    T = m.shape[0]
    if T < 2:
        raise ValueError("backward transfer needs at least two tasks")
    return float(np.mean([m[T - 1, j] - m[j, j] for j in range(T - 1)]))


def forward_transfer(R: ArrayLike, b: Sequence[float] | NDArray[np.float64]) -> float:
    """Forward transfer (Lopez-Paz & Ranzato 2017, GEM).

    ``FWT = 1/(T-1) * sum_{j>=1} (R[j-1, j] - b[j])``: accuracy on a task before training on it,
    against the untrained model's accuracy ``b``. Needs ``T >= 2``.
    """
    m = _matrix(R)
    T = m.shape[0]
    base = np.asarray(b, dtype=np.float64)
    if base.shape != (T,):
        raise ValueError(f"b must have one accuracy per task ({T}), got shape {base.shape}")
    if T < 2:
        raise ValueError("forward transfer needs at least two tasks")
    return float(np.mean([m[j - 1, j] - base[j] for j in range(1, T)]))


def forgetting(R: ArrayLike, k: int | None = None) -> float:
    """Average max-based forgetting (Chaudhry et al. 2018, "Riemannian Walk").

    ``f_j^k = max_{l<k} R[l, j] - R[k, j]`` for ``j < k``; ``F_k = 1/k * sum_{j<k} f_j^k``
    (0-based ``k``, so ``k`` earlier tasks). The max runs over earlier rows only, not the current
    one, so ``f`` is negative when a task improved (unlike Mammoth's and PyCIL's variant).

    Args:
        R: accuracy matrix (T x T).
        k: row to measure at; default the last. Needs ``k >= 1``.
    """
    m = _matrix(R)
    k = m.shape[0] - 1 if k is None else k
    if k < 1:
        raise ValueError("forgetting needs at least two tasks")
    return float(np.mean([m[:k, j].max() - m[k, j] for j in range(k)]))


def plasticity(R: ArrayLike) -> float:
    """Mean accuracy of each task right after learning it: ``1/T * sum_j R[j, j]``."""
    return float(np.diag(_matrix(R)).mean())


def retention(R: ArrayLike) -> float:
    """Mean final accuracy on the earlier tasks: ``1/(T-1) * sum_{j<T-1} R[T-1, j]``.

    The stability side of the plasticity/stability trade-off that sweeps search (the current
    task is left out: it measures plasticity, not what was kept). Needs ``T >= 2``.
    """
    m = _matrix(R)
    T = m.shape[0]
    if T < 2:
        raise ValueError("retention needs at least two tasks")
    return float(m[T - 1, : T - 1].mean())


def intransigence(R: ArrayLike, joint_diag: Sequence[float]) -> list[float]:
    """Intransigence per task (Chaudhry et al. 2018): ``I_k = R*[k] - R[k, k]``.

    Args:
        R: accuracy matrix of the strategy.
        joint_diag: ``R*[k]``, accuracy on task ``k`` of a reference trained jointly on tasks
            ``0..k`` (the ``joint`` strategy's diagonal).
    """
    d = np.diag(_matrix(R))
    ref = np.asarray(joint_diag, dtype=np.float64)
    if ref.shape != d.shape:
        raise ValueError(f"joint_diag must have {d.shape[0]} entries, got {ref.shape[0]}")
    return [float(x) for x in ref - d]


def summarize(R: ArrayLike, b: Sequence[float] | NDArray[np.float64]) -> dict[str, float]:
    """Every summary metric of a finished sequence, keyed by name.

    Keys (:data:`SUMMARY_NAMES`): ``avg_acc``, ``plasticity`` and, with two or more tasks,
    ``bwt``, ``fwt``, ``forgetting``, ``retention``.
    """
    m = _matrix(R)
    out = {"avg_acc": average_accuracy(m), "plasticity": plasticity(m)}
    if m.shape[0] >= 2:
        out |= {
            "bwt": backward_transfer(m),
            "fwt": forward_transfer(m, b),
            "forgetting": forgetting(m),
            "retention": retention(m),
        }
    return out
