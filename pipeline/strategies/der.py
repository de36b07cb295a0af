"""Dark Experience Replay: replay stored samples and match the logits they had when stored.

Buzzega, Boschini, Porrello, Abati & Calderara 2020, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline" (NeurIPS 2020), the method without its label term (that is
DER++, ``pipeline/strategies/derpp.py``); Mammoth's ``models/der.py``. The replay step and the
logit term are shared with DER++ (:mod:`pipeline.strategies._dark`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.strategies._dark import DarkParams, DarkReplay
from pipeline.strategies.base import register


@dataclass
class DERParams(DarkParams):
    """Hyperparameters of DER (defaults: Mammoth's best with a 500-sample buffer,
    ``utils/best_args.py``, where seq-mnist and perm-mnist agree).

    Attributes:
        size: buffer capacity (samples, over all tasks); 500, the middle of the paper's three
            buffer sizes (200, 500, 5120), the size of the other rehearsal strategies here.
        alpha: weight of the logit-matching (MSE) term: 1.0, Mammoth's best for seq-mnist
            and for perm-mnist at 500 samples (rot-mnist's is 0.5, its seq-cifar10's 0.3).
        batch_size: samples drawn from the buffer for the term; 0: as many as the training
            batch has (Mammoth's ``minibatch_size`` equals its ``batch_size``, 128, for
            perm-mnist).
    """

    alpha: float = 1.0
    batch_size: int = 0


@register
class DER(DarkReplay[DERParams]):
    """DER: rehearsal with logit matching.

    With ``(x', z')`` a uniform draw of ``batch_size`` samples from the reservoir buffer
    (``z'``: the logits stored with ``x'`` when it entered), the penalty added to the
    cross-entropy of the training batch is::

        alpha * MSE(f(x'), z')

    Insertion is online (each sample offered once, with its logits, the first time a batch
    shows it), so the stored logits sample the optimisation trajectory; see
    :class:`~pipeline.strategies._dark.DarkReplay`.
    """

    name = "der"
