"""The reservoir buffer's arithmetic (:mod:`pipeline.strategies.buffer`): pairs packed into one
integer, and class quotas that share a capacity as equally as the samples allow."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

# (task, id) and (task, target) pairs packed into one int64: ids and targets stay far below 2^40.
_PAIR = 1 << 40


def pair_key(task: Tensor, value: Tensor) -> Tensor:
    """One int64 per ``(task, value)`` pair (a sample's identity or a class)."""
    return task.long() * _PAIR + value.long()


def water_fill(counts: Sequence[int], capacity: int) -> list[int]:
    """Class quotas that share ``capacity`` as equally as the available samples allow.

    Each class gets ``min(count, L)`` for the largest level ``L`` whose total fits, then the
    slots left over go one each to the first classes (in the given order) that have more
    samples than ``L``. If everything fits, every class keeps everything.

    Args:
        counts: samples available per class.
        capacity: slots to share.

    Returns:
        The quota of each class; they sum to ``min(capacity, sum(counts))``.
    """
    if sum(counts) <= capacity:
        return list(counts)
    lo, hi = 0, max(counts)  # sum(min(c, lo)) <= capacity < sum(min(c, hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sum(min(c, mid) for c in counts) <= capacity:
            lo = mid
        else:
            hi = mid
    quotas = [min(c, lo) for c in counts]
    left = capacity - sum(quotas)
    for i, c in enumerate(counts):
        if left == 0:
            break
        if c > lo:
            quotas[i] += 1
            left -= 1
    return quotas
