"""What Dark Experience Replay and DER++ share: the logit-matching term and its replay step.

Buzzega, Boschini, Porrello, Abati & Calderara 2020, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline" (NeurIPS 2020). DER (``der``) adds to the task loss
``alpha * MSE(f(x'), z')`` on stored samples ``x'`` and the logits ``z'`` they had when stored;
DER++ (``derpp``) adds a label term ``beta * CE(f(x''), y'')`` on a second draw. Each formula is
written once: :class:`DarkReplay` holds the replay step (the draws, one forward pass over them,
the online insertion) and the logit term, and DER++ adds its draw and its label term
(:meth:`DarkReplay.draws`, :meth:`DarkReplay.replay_loss`). Neither strategy is built on the
other (the rule of ``pyproject.toml``'s strategies contract): both are built on this module.

This module registers no strategy of its own (the package imports it like every other module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor, nn
from typing_extensions import override

from pipeline.data.tasks import Batch
from pipeline.errors import ConfigError
from pipeline.models import MultiHead
from pipeline.strategies._rehearsal import Rehearsal, RehearsalParams

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig


@dataclass(kw_only=True)
class DarkParams(RehearsalParams):
    """The hyperparameters DER and DER++ share, named and typed once; each strategy's own
    ``Params`` gives their defaults (and says where each comes from).

    Attributes:
        alpha: weight of the logit-matching (MSE) term.
        batch_size: samples drawn from the buffer for each term; 0: as many as the training
            batch has.
    """

    alpha: float
    batch_size: int


#: The hyperparameters of a dark-replay strategy.
DP = TypeVar("DP", bound=DarkParams)


class Replayed(NamedTuple):
    """One draw of a replay step: the buffer slots drawn (this process's slice), the network's
    output on their samples and their stored targets."""

    slots: Tensor
    out: Tensor
    y: Tensor


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


class DarkReplay(Rehearsal[DP]):
    """Rehearsal with stored logits: DER's penalty, the base of DER and DER++.

    Each training step draws ``batch_size`` samples ``x'`` uniformly from the buffer (with
    the logits ``z'`` stored with them) and adds to the cross-entropy of the training batch::

        alpha * MSE(f(x'), z')

    (:func:`logit_mse`: the mean over the stored logits). A subclass adds draws and terms by
    extending :meth:`draws` and :meth:`replay_loss`; every draw goes through the network in one
    forward pass. The penalty applies as soon as the buffer holds anything (from the first
    task on, as in the paper: matching the logits of the current task's earlier samples
    regularises too).

    Insertion policy: online, as in the paper, so the stored logits are samples of the
    optimisation trajectory: each training sample of the current task is offered to the
    reservoir with its (detached) logits the first time a batch shows it in this task, i.e.
    during the first epoch; later epochs offer nothing, so no sample enters twice.

    Class attributes:
        weights: the hyperparameters that weigh a term (each must be >= 0).
    """

    weights: ClassVar[tuple[str, ...]] = ("alpha",)

    @classmethod
    @override
    def check_config(cls, params: DP, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        for key in cls.weights:
            value = getattr(params, key)
            if value < 0:
                raise ConfigError(f"strategies.{cls.name}.{key}: must be >= 0, got {value}")

    def draws(self, n: int) -> list[Tensor | None]:
        """The buffer slots each term of this step reads, in the order they are drawn (this
        process's slices: :meth:`Rehearsal.draw`): the logit term's (``None`` when ``alpha``
        is 0, which draws nothing)."""
        return [self.draw(n) if self.params.alpha > 0 else None]

    def replay_loss(self, parts: list[Replayed | None], like: Tensor) -> Tensor:
        """The replay terms of this step, from :meth:`draws`' draws in their order:
        ``alpha * MSE(f(x'), z')`` over the first.

        Args:
            parts: per draw, what it replayed (``None`` for a term that draws nothing).
            like: a tensor of the training step (the sum starts as its 0-dim zero).
        """
        total = like.new_zeros(())
        first = parts[0]
        # (a slice is empty only when the buffer holds fewer samples than there are processes)
        if first is not None and first.slots.numel():
            stored, widths = self.buffer.stored_logits(first.slots)
            total = total + self.params.alpha * logit_mse(first.out, stored, widths)
        return total

    def replay(self, model: nn.Module, drawn: list[Tensor | None]) -> list[Replayed | None]:
        """The drawn samples through the network, in one forward pass; per draw, what it
        replayed (``None`` where it drew nothing)."""
        taken = [d for d in drawn if d is not None]
        assert self.ctx is not None, "on_task_start() must be called first"
        memory = self.ctx.datamodule.batch_from(*self.buffer.get(torch.cat(taken)))
        out = model(memory.x, memory.task)
        parts: list[Replayed | None] = []
        start = 0
        for d in drawn:
            if d is None:
                parts.append(None)
                continue
            end = start + d.numel()
            parts.append(Replayed(d, out[start:end], memory.y[start:end]))
            start = end
        return parts

    @override
    def penalty(self, model: nn.Module, batch: Batch, logits: Tensor) -> Tensor | None:
        total: Tensor | None = None
        if not self.buffer.empty:
            drawn = self.draws(self.draw_size(self.params.batch_size, batch))
            if any(d is not None for d in drawn):
                total = self.replay_loss(self.replay(model, drawn), logits)
        # Sample before inserting (as the paper's algorithm does): this batch is already
        # trained on by the task loss.
        self.insert_online(batch, logits.detach(), logit_widths(model, batch.task, logits))
        return total
