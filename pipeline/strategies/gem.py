"""Gradient Episodic Memory: no step may increase the loss on any past task's episodic memory.

Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning" (NeurIPS 2017);
the authors' code is facebookresearch/GradientEpisodicMemory (``model/gem.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import quadprog
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from pipeline import distributed
from pipeline.errors import ConfigError
from pipeline.strategies._rehearsal import Rehearsal, RehearsalParams
from pipeline.strategies.base import Retention, TaskContext, register
from pipeline.strategies.buffer import ReservoirBuffer

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig
    from pipeline.data.tasks import Batch

#: Ridge added to the dual's matrix ``G G^T``, relative to its mean diagonal. quadprog needs a
#: positive definite matrix; ``G G^T`` is only semi-definite when two memory gradients are
#: parallel or one is zero (a memory erased empty). The authors' code adds nothing, Avalanche's
#: ``GEMPlugin`` an absolute 1e-3; relative 1e-8 factorises any such matrix in float64 and moves
#: each constraint ``g_k . g~ >= 0`` by at most 1e-8 of ``|g_k|^2 v_k``.
_RIDGE = 1e-8


@dataclass
class GEMParams(RehearsalParams):
    """Hyperparameters of GEM.

    Attributes:
        size: episodic memory per task (samples), the paper's "memory per task": each finished
            task keeps a uniform sample of ``size`` of the training samples it showed, so the
            memory grows to ``size * (tasks - 1)`` while the last task trains. 256 is GEM's
            MNIST value (the authors' ``n_memories``).
        margin: the paper's ``gamma`` (the authors' ``memory_strength``): the lower bound of
            every dual variable, ``v >= margin`` in :func:`project`, which biases a projected
            step towards the memories' gradients (backward transfer). 0.5 is their MNIST value;
            0 gives the closest gradient that satisfies every constraint.
    """

    size: int = 256
    margin: float = 0.5


def project(grad: Tensor, memories: Tensor, margin: float) -> Tensor:
    """GEM's projection of a flat gradient ``g`` against the past tasks' memory gradients.

    With ``G`` the ``t x p`` matrix of memory gradients, the paper's primal problem is
    ``min_z 1/2 |g - z|^2`` subject to ``G z >= 0``; its dual (paper section 3, solved
    with quadprog as in the authors' ``project2cone2``) is::

        min_v  1/2 v^T (G G^T) v + (G g)^T v    subject to  v >= margin
        g~ = G^T v + g

    whose optimality conditions give ``G g~ = mu >= 0``: to first order, the step raises no past
    task's memory loss. The ``t x t`` matrix and ``G g`` are formed where the gradients are
    (float64 where the device has it); only they travel to the CPU.

    Args:
        grad: the step's gradient, flat (``p``).
        memories: one memory gradient per row (``t x p``), on ``grad``'s device.
        margin: lower bound of every dual variable (>= 0).

    Returns:
        The projected gradient ``g~``, flat, in ``grad``'s dtype and device.
    """
    dtype = torch.float32 if grad.device.type == "mps" else torch.float64
    g, G = grad.to(dtype), memories.to(dtype)
    gram = G @ G.T
    gram = 0.5 * (gram + gram.T)
    t = gram.shape[0]
    eye = torch.eye(t, dtype=torch.float64)
    ridge = _RIDGE * max(float(torch.diagonal(gram).mean()), torch.finfo(torch.float64).tiny)
    # quadprog minimises 1/2 x^T P x - a^T x subject to C^T x >= b: here a = -G g, C = I.
    v, *_ = quadprog.solve_qp(
        (gram.cpu().double() + ridge * eye).numpy(),
        (-(G @ g)).cpu().double().numpy(),
        eye.numpy(),
        torch.full((t,), float(margin), dtype=torch.float64).numpy(),
    )
    dual = torch.from_numpy(v).to(device=G.device, dtype=dtype)
    return (G.T @ dual + g).to(grad.dtype)


def flat(grad: Tensor | None, param: Tensor) -> Tensor:
    """A gradient as a flat vector; zeros for a parameter the loss does not reach."""
    if grad is None:
        return torch.zeros(param.numel(), dtype=param.dtype, device=param.device)
    return grad.flatten()


def assign_grad(params: list[nn.Parameter], value: Tensor) -> None:
    """Write a flat gradient back into the parameters' ``.grad``, in their order."""
    offset = 0
    for p in params:  # a loop over parameter tensors (a handful), not over samples
        n = p.numel()
        part = value[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = part.clone()
        else:
            p.grad.copy_(part)
        offset += n


@register
class GEM(Rehearsal[GEMParams]):
    """GEM: project each step's gradient so that no past task's memory loss grows.

    After the backward pass of each step of task ``t >= 1``, the gradient ``g_k`` of the loss
    on the whole episodic memory of each past task ``k < t`` is computed (the mean
    cross-entropy over its samples, through ``model(x, task)``: in the task scenario task
    ``k``'s head, in the class scenario every class seen so far, as A-GEM's reference loss is).
    If the step's gradient ``g`` violates a constraint (``g . g_k < 0`` for some ``k``) it is
    replaced by :func:`project` ``(g, G, margin)``; otherwise it is left as it is (the authors'
    code projects only then, so the margin acts only on projected steps).

    Memory: one reservoir of ``size`` samples per task (:class:`ReservoirBuffer`). At the end
    of a task every training sample its batches showed is offered once to that task's
    reservoir (a uniform sample of them, as Avalanche's ``GEMPlugin`` takes; the authors' code
    keeps a ring of the most recent samples the stream showed), and the reservoir is frozen as
    the task's memory. ``self.buffer`` (the rehearsal base's) is the reservoir of the task
    training now; it carries its generator and erasure list on to the next task's.

    In a distributed run every process holds every memory (the samples any process was shown
    are offered on every process), computes its slice of each memory's loss, and the slices'
    gradients are summed: every process then projects the same averaged gradient against the
    same ``G`` and solves the same program. Under 16-bit mixed precision the step's gradient is
    loss-scaled and the memories' are not: the constraints hold, but the margin's share shrinks
    by the loss scale (use 32-bit or bf16 with a margin).
    """

    name = "gem"

    def __init__(self, params: GEMParams) -> None:
        super().__init__(params)
        #: The frozen memory of each finished task, by task index.
        self.memories: list[ReservoirBuffer] = []

    @classmethod
    @override
    def check_config(cls, params: GEMParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        if params.margin < 0:
            raise ConfigError(f"strategies.{cls.name}.margin: must be >= 0, got {params.margin}")

    # -- hooks ------------------------------------------------------------------------------
    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        super().on_task_start(ctx)
        for memory in self.memories:
            memory.to(ctx.device)

    @override
    def transform_batch(self, batch: Batch, ctx: TaskContext) -> Batch:
        assert self.current is not None
        self.current.first_sight(batch)  # what training showed, offered at the task's end
        return batch

    @override
    def after_backward(self, model: nn.Module) -> None:
        if not self.memories:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        grad = torch.cat([flat(p.grad, p) for p in params])
        memories = self.memory_gradients(model, params)
        # One host sync per step: the branch (and quadprog) need the answer on the CPU.
        if bool((memories @ grad < 0).any()):
            assign_grad(params, project(grad, memories, self.params.margin))

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        self.insert_seen()
        done = self.buffer
        self.memories.append(done)
        self.buffer = ReservoirBuffer(self.params.size, device=done.device)
        # The next reservoir draws on from where this one stopped (no repeated priorities) and
        # keeps refusing what was erased.
        self.buffer.generator.set_state(done.generator.get_state())
        self.buffer.erased = done.erased.clone()
        super().on_task_end(ctx)

    def memory_gradients(self, model: nn.Module, params: list[nn.Parameter]) -> Tensor:
        """The gradient of each past task's memory loss, one flat row per task (``t x p``).

        ``torch.autograd.grad`` leaves the step's ``.grad`` untouched. Each memory goes through
        the model alone (its own batch statistics, as in the authors' code). In a distributed
        run each process takes its slice of every memory; its loss is its share of the mean
        over the whole memory, so the summed rows are the one-process gradients.
        """
        assert self.ctx is not None, "on_task_start() must be called first"
        rows = []
        with torch.enable_grad():
            for memory in self.memories:
                slots = memory.slots()
                mine = distributed.my_slice(slots)
                if mine.numel() == 0:  # erased empty (or fewer samples than processes)
                    rows.append(torch.cat([flat(None, p) for p in params]))
                    continue
                batch = self.ctx.datamodule.batch_from(*memory.get(mine))
                out = model(batch.x, batch.task)
                loss = F.cross_entropy(out, batch.y, reduction="sum") / slots.numel()
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                rows.append(torch.cat([flat(g, p) for g, p in zip(grads, params, strict=True)]))
        stacked = torch.stack(rows)
        distributed.sum_([stacked])
        return stacked

    # -- ledger, erasure, checkpoints ---------------------------------------------------------
    def _holder(self, task: int) -> ReservoirBuffer:
        """The buffer that holds (or will hold) task ``task``'s samples."""
        return self.memories[task] if 0 <= task < len(self.memories) else self.buffer

    @override
    def retention(self) -> Retention:
        kept = super().retention()
        for memory in self.memories:
            r = memory.retention(self.task_names)
            for task, n in r.raw_samples.items():
                kept.raw_samples[task] = kept.raw_samples.get(task, 0) + n
            kept.raw_bytes += r.raw_bytes
            kept.state_bytes += r.state_bytes
        return kept

    @override
    def erase(self, task: int, ids: Tensor) -> int:
        return self._holder(task).erase(task, ids)

    @override
    def stored_ids(self, task: int) -> Tensor | None:
        return self._holder(task).stored_ids(task)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memories": [m.state_dict() for m in self.memories]}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memories = []
        for saved in state["memories"]:
            memory = ReservoirBuffer(int(saved["capacity"]), device=self.buffer.device)
            memory.load_state_dict(saved)
            self.memories.append(memory)
