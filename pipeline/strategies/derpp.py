"""Dark Experience Replay++: replay stored samples with the logits they had when stored.

Buzzega, Boschini, Porrello, Abati & Calderara 2020, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline" (NeurIPS 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from pipeline.config.schema import ExperimentConfig
from pipeline.data.tasks import Batch
from pipeline.errors import ConfigError
from pipeline.models import MultiHead
from pipeline.strategies._rehearsal import Rehearsal, RehearsalParams
from pipeline.strategies.base import register


@dataclass
class DERPPParams(RehearsalParams):
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


def logit_mse(current: Tensor, stored: Tensor, widths: Tensor) -> Tensor:
    """Mean squared difference over the first ``widths[i]`` logits of each sample ``i``.

    The stored logits are zero-padded to the widest stored; in the class-incremental scenario
    the head has grown since some were stored, so the current logits are compared on each
    sample's stored width (the classes that existed when it was stored; there is no target
    for the classes added since). Task-incremental samples use their own task head's width
    (the padding columns carry no information). Equal widths give ``F.mse_loss``.
    """
    width = min(current.shape[1], stored.shape[1])
    mask = torch.arange(width, device=current.device) < widths[:, None]
    diff = (current[:, :width] - stored[:, :width]) * mask
    return diff.pow(2).sum() / mask.sum().clamp_min(1)


def logit_widths(model: nn.Module, task: Tensor, logits: Tensor) -> Tensor:
    """How many of each sample's logits are real outputs (not padding) for this model."""
    head = getattr(model, "head", None)
    if isinstance(head, MultiHead):
        return torch.tensor(head.widths, device=task.device)[task]
    return torch.full_like(task, logits.shape[1])


@register
class DERPP(Rehearsal[DERPPParams]):
    """DER++: rehearsal with logit matching plus label replay.

    With ``(x', z')`` and ``(x'', y'')`` two independent uniform draws of ``batch_size``
    samples from the buffer (``z'``: the logits stored with ``x'``), the penalty added to the
    cross-entropy of the training batch is::

        alpha * MSE(f(x'), z') + beta * CE(f(x''), y'')

    Both draws go through the network in one forward pass. The penalty applies as soon as the
    buffer holds anything (from the first task on, as in the paper: matching the logits of the
    current task's earlier samples regularises too).

    Insertion policy: online, as in the paper, so the stored logits are samples of the
    optimisation trajectory: each training sample of the current task is offered to the
    reservoir with its (detached) logits the first time a batch shows it in this task, i.e.
    during the first epoch; later epochs offer nothing, so no sample enters twice.
    """

    name = "derpp"

    @classmethod
    @override
    def check_config(cls, params: DERPPParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        for key in ("alpha", "beta"):
            if getattr(params, key) < 0:
                raise ConfigError(
                    f"strategies.derpp.{key}: must be >= 0, got {getattr(params, key)}"
                )

    @override
    def penalty(self, model: nn.Module, batch: Batch, logits: Tensor) -> Tensor | None:
        p = self.params
        total: Tensor | None = None
        if not self.buffer.empty and (p.alpha > 0 or p.beta > 0):
            n = self.draw_size(p.batch_size, batch)
            # this process's slices of the draws (pipeline.strategies._rehearsal.Rehearsal.draw)
            first = self.draw(n) if p.alpha > 0 else None
            second = self.draw(n) if p.beta > 0 else None
            index = torch.cat([i for i in (first, second) if i is not None])
            assert self.ctx is not None
            memory = self.ctx.datamodule.batch_from(*self.buffer.get(index))
            out = model(memory.x, memory.task)
            total = logits.new_zeros(())
            # (a slice is empty only when the buffer holds fewer samples than there are processes)
            if first is not None and first.numel():
                stored, widths = self.buffer.stored_logits(first)
                total = total + p.alpha * logit_mse(out[: first.numel()], stored, widths)
            if second is not None and second.numel():
                k = second.numel()
                total = total + p.beta * F.cross_entropy(out[-k:], memory.y[-k:])
        # Sample before inserting (as the paper's algorithm does): this batch is already
        # trained on by the task loss.
        self.insert_online(batch, logits.detach(), logit_widths(model, batch.task, logits))
        return total
