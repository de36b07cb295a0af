"""Dark Experience Replay++: replay stored samples with the logits they had when stored, and
their labels.

Buzzega, Boschini, Porrello, Abati & Calderara 2020, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline" (NeurIPS 2020). DER's replay step and logit term are
shared (:mod:`pipeline.strategies._dark`); this module adds the label term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from pipeline.strategies._dark import DarkParams, DarkReplay, Replayed
from pipeline.strategies.base import register


@dataclass
class DERPPParams(DarkParams):
    """Hyperparameters of DER++ (defaults: Mammoth's best for domain-incremental Rotated
    MNIST with a 500-sample buffer).

    Attributes:
        size: buffer capacity (samples, over all tasks).
        alpha: weight of the logit-matching (MSE) term.
        beta: weight of the label (cross-entropy) term on stored samples.
        batch_size: samples drawn from the buffer for each term; 0: as many as the training
            batch has.
    """

    alpha: float = 0.5
    beta: float = 1.0
    batch_size: int = 0


@register
class DERPP(DarkReplay[DERPPParams]):
    """DER++: rehearsal with logit matching plus label replay.

    With ``(x', z')`` and ``(x'', y'')`` two independent uniform draws of ``batch_size``
    samples from the buffer (``z'``: the logits stored with ``x'``), the penalty added to the
    cross-entropy of the training batch is DER's plus a label term::

        alpha * MSE(f(x'), z') + beta * CE(f(x''), y'')

    Both draws go through the network in one forward pass; insertion is DER's (online, each
    sample once with its logits: :class:`~pipeline.strategies._dark.DarkReplay`).
    """

    name = "derpp"
    weights = ("alpha", "beta")

    @override
    def draws(self, n: int) -> list[Tensor | None]:
        """DER's draw, then the label term's (``None`` when ``beta`` is 0)."""
        return [*super().draws(n), self.draw(n) if self.params.beta > 0 else None]

    @override
    def replay_loss(self, parts: list[Replayed | None], like: Tensor) -> Tensor:
        """DER's term plus ``beta * CE(f(x''), y'')`` over the second draw."""
        total = super().replay_loss(parts, like)
        second = parts[1]
        if second is not None and second.slots.numel():
            total = total + self.params.beta * F.cross_entropy(second.out, second.y)
        return total
