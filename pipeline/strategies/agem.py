"""Averaged Gradient Episodic Memory: never let a step increase the loss on stored samples.

Chaudhry, Ranzato, Rohrbach & Elhoseiny 2019, "Efficient Lifelong Learning with A-GEM"
(ICLR 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from pipeline import distributed
from pipeline.data.tasks import Batch
from pipeline.strategies._rehearsal import Rehearsal, RehearsalParams
from pipeline.strategies.base import TaskContext, register


@dataclass
class AGEMParams(RehearsalParams):
    """Hyperparameters of A-GEM.

    Attributes:
        size: episodic memory capacity (samples, over all tasks).
        sample_size: memory samples the reference gradient is computed on (the paper: 256).
    """

    sample_size: int = 256


def project(grad: Tensor, ref: Tensor) -> Tensor:
    """A-GEM's projection of a flat gradient ``g`` against a reference gradient ``g_ref``::

        g~ = g - (g . g_ref / g_ref . g_ref) g_ref    if g . g_ref < 0
        g~ = g                                         otherwise

    so that ``g~ . g_ref >= 0``: to first order the step does not increase the memory loss.
    Branch-free (``min(dot, 0)``), so it costs no host synchronisation on an accelerator.
    """
    dot = grad @ ref
    coef = torch.clamp(dot, max=0.0) / (ref @ ref).clamp_min(torch.finfo(ref.dtype).tiny)
    return grad - coef * ref


@register
class AGEM(Rehearsal[AGEMParams]):
    """A-GEM: project each gradient so that the loss on an episodic-memory batch does not grow.

    After the backward pass of each step of task ``t >= 1``, the reference gradient
    ``g_ref = grad L(memory batch)`` is computed on ``sample_size`` samples drawn from the
    memory, and the step's gradient is replaced by :func:`project` ``(g, g_ref)``.

    Memory policy: as in the paper (and Avalanche's and Mammoth's ``agem``) the memory is
    filled at the end of each task, here by offering every sample the task's batches showed
    to the shared reservoir once; the memory therefore holds only earlier tasks while a task
    trains.
    """

    name = "agem"

    @override
    def transform_batch(self, batch: Batch, ctx: TaskContext) -> Batch:
        assert self.current is not None
        self.current.first_sight(batch)
        return batch

    @override
    def after_backward(self, model: nn.Module) -> None:
        if self.buffer.empty:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        assert self.ctx is not None
        slots = self.buffer.sample(self.params.sample_size, self.generator)
        memory = self.ctx.datamodule.batch_from(*self.buffer.get(distributed.my_slice(slots)))
        # torch.autograd.grad returns the reference gradient without touching .grad: the
        # step's gradient stays where it is, no save/zero/restore round trip. The loss is this
        # process's share of the mean over the whole draw: in a distributed run the shares'
        # gradients sum to the reference gradient of one process (every process then projects
        # the same, already averaged, gradient against the same reference).
        with torch.enable_grad():
            out = model(memory.x, memory.task)
            loss = F.cross_entropy(out, memory.y, reduction="sum") / max(slots.numel(), 1)
            refs = torch.autograd.grad(loss, params, allow_unused=True)
        grad = torch.cat([flat(p.grad, p) for p in params])
        ref = torch.cat([flat(r, p) for r, p in zip(refs, params, strict=True)])
        distributed.sum_([ref])
        projected = project(grad, ref)
        offset = 0
        for p in params:  # a loop over parameter tensors (a handful), not over samples
            n = p.numel()
            value = projected[offset : offset + n].view_as(p)
            if p.grad is None:
                p.grad = value.clone()
            else:
                p.grad.copy_(value)
            offset += n

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        self.insert_seen()
        super().on_task_end(ctx)


def flat(grad: Tensor | None, param: Tensor) -> Tensor:
    """A gradient as a flat vector; zeros for a parameter the loss does not reach."""
    return (
        torch.zeros(param.numel(), dtype=param.dtype, device=param.device)
        if grad is None
        else grad.flatten()
    )
