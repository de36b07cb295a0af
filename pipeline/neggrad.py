"""NegGrad+, the approximate unlearning of ``make erase UNLEARN=approx`` (Kurmanji et al. 2023,
"Towards Unbounded Machine Unlearning", arXiv:2302.09880, their baseline NegGrad+): starting
from the trained model, minimise ``alpha * CE(retained) - (1 - alpha) * CE(erased)``, a descent
on the samples kept and an ascent on the samples to forget, for a budget of samples.

The retained samples are the training samples of the tasks an exact unlearning would train
again (from the first task that saw the erased samples on), less the erased ones; each step
takes a shuffled batch of them and a batch of the erased samples. The budget counts both, as a
fraction of the samples the exact retraining would process (``Params.budget``): a measure of
cost that, unlike a clock, gives the same model on every run.

A plain loop rather than a Lightning Trainer: two streams combined in one loss and a budget in
samples, over a few hundred steps, with nothing to log per step; the model, its heads and the
batches are the pipeline's own (:class:`pipeline.module.ContinualModule`, :class:`Batch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch, Split, TaskDataset
from pipeline.module import ContinualModule


@dataclass
class Params:
    """NegGrad+'s settings (defaults: untuned; ``make unlearn-tune`` chooses them).

    Attributes:
        lr: Adam's learning rate.
        alpha: the weight of the retained samples' loss; ``1 - alpha`` that of the ascent.
        budget: the samples processed, as a fraction of those the exact retraining processes.
    """

    lr: float = 1e-4
    alpha: float = 0.95
    budget: float = 0.2


def neggrad(
    module: ContinualModule,
    data: ContinualDataModule,
    first_task: int,
    erased: Batch,
    samples: int,
    params: Params,
    seed: int = 0,
) -> int:
    """Fine-tune ``module`` in place with NegGrad+ for ``samples`` samples (retained and
    erased together); the samples processed.

    Args:
        module: the trained model (and its strategies, unused).
        data: the sequence less the erased samples (``data.erased``), set up.
        first_task: the first task whose retained samples are trained on.
        erased: the samples to forget, as they were trained on.
        samples: the budget.
        params: the settings.
        seed: the batches' order.
    """
    device = torch.device("cpu")
    module.to(device).train()
    parts = [(t.train, t) for t in data.tasks[first_task:] if isinstance(t.train, Split)]
    retained = TaskDataset(parts, data.tasks)
    size = data.cfg.batch_size
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.model.parameters(), lr=params.lr)
    done = 0
    while done < samples:
        for rows in torch.split(torch.randperm(len(retained), generator=g), size):
            kept = retained[rows]
            pick = torch.randint(0, len(erased.y), (min(size, len(erased.y)),), generator=g)
            loss = params.alpha * F.cross_entropy(module.model(kept.x, kept.task), kept.y)
            loss = loss - (1 - params.alpha) * F.cross_entropy(
                module.model(erased.x[pick], erased.task[pick]), erased.y[pick]
            )
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            done += len(rows) + len(pick)
            if done >= samples:
                break
    module.eval()
    return done
