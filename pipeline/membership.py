"""Membership inference, the audit's measure of whether a model still remembers samples.

The loss-threshold attack (Yeom et al. 2018, "Privacy Risk in Machine Learning", arXiv:1709.01604):
a sample whose loss is below a threshold is called a member of the training set. Over every
threshold, its success is the AUC of the losses: the chance that a member's loss is below a
non-member's (ties count half), the Mann-Whitney U statistic over ``n1 * n2``
(``scipy.stats.mannwhitneyu``). 0.5: the model tells members from others no better than chance.

The verdict of an audit compares the unlearned model with models retrained from scratch without
the samples, which differ from each other by their seeds alone: the unlearned model passes when
its value lies within the references' range widened by that range, or by the sampling noise of
the value (its standard deviation under no difference) when the references happen to agree
more closely than the samples can tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import mannwhitneyu


def membership_auc(member_losses: ArrayLike, other_losses: ArrayLike) -> float:
    """P(a member's loss < another sample's loss), ties counted half."""
    members, others = np.asarray(member_losses, float), np.asarray(other_losses, float)
    if not members.size or not others.size:
        raise ValueError("membership AUC: needs members and non-members")
    u = mannwhitneyu(others, members, alternative="two-sided").statistic  # pairs other > member
    return float(u) / (members.size * others.size)


def auc_noise(n_members: int, n_others: int) -> float:
    """The standard deviation of the AUC when members and others do not differ."""
    return math.sqrt((n_members + n_others + 1) / (12 * n_members * n_others))


def accuracy_noise(n: int) -> float:
    """The largest standard deviation of an accuracy over ``n`` samples (at 50%)."""
    return 0.5 / math.sqrt(n)


def within_spread(value: float, references: Sequence[float], noise: float) -> bool:
    """Whether ``value`` lies within the references' range, widened on each side by that
    range or by ``noise``, whichever is larger."""
    low, high = min(references), max(references)
    margin = max(high - low, noise)
    return low - margin <= value <= high + margin
