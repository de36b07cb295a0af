"""Experience replay: train on each batch plus a batch of stored raw samples of earlier tasks.

Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning" (experience replay
with a reservoir buffer); the rehearsal baseline of Avalanche's ``Replay`` and Mammoth's
``er``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from typing_extensions import override

from pipeline.data.tasks import Batch
from pipeline.strategies._rehearsal import Rehearsal, RehearsalParams
from pipeline.strategies.base import TaskContext, register


@dataclass
class ReplayParams(RehearsalParams):
    """Hyperparameters of experience replay.

    Attributes:
        size: buffer capacity (samples, over all tasks); 500 is the size of the reference
            figures (Avalanche: 95.6 / 86.9 on MNIST -> Fashion-MNIST).
        batch_size: stored samples appended to each training batch; 0: as many as the
            training batch has (each step then trains on half new, half old samples).
        class_balanced: keep per-class quotas in the buffer instead of a plain reservoir.
    """

    batch_size: int = 0
    class_balanced: bool = False


@register
class Replay(Rehearsal[ReplayParams]):
    """Experience replay with a reservoir buffer of raw samples.

    Each training batch ``B`` of task ``t >= 1`` is extended with ``M``, ``batch_size``
    samples drawn uniformly from the buffer, and the step minimises the cross-entropy over
    the union::

        L = CE(f(x), y) over (x, y) in B + M        (one mean over |B| + |M| samples)

    Insertion policy: at the end of each task, every training sample the task's batches
    showed is offered once to the reservoir (however many epochs showed it). So while task
    ``t`` trains, the buffer holds only tasks ``< t`` (replay starts at task 1 and every
    replayed sample is an old one), and after ``t`` tasks it is a uniform sample of all
    samples seen (about ``size / t`` per task for equal-sized tasks). Offering at task end
    rather than online in the first epoch keeps the whole capacity for old tasks during the
    next task, as Avalanche's replay does, at the cost of one vectorised pass over the task's
    ids (milliseconds).
    """

    name = "replay"

    @override
    def transform_batch(self, batch: Batch, ctx: TaskContext) -> Batch:
        assert self.current is not None
        self.current.first_sight(batch)  # remember what training showed, for on_task_end
        if self.buffer.empty:
            return batch
        memory = self.memory_batch(self.draw_size(self.params.batch_size, batch))
        return Batch(*(torch.cat([new, old]) for new, old in zip(batch, memory, strict=True)))

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        self.insert_seen()
        super().on_task_end(ctx)
