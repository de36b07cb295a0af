"""A network as a point in weight space: its parameters as one flat vector and back, and its
batch-norm statistics re-estimated at whatever point it is set to."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pipeline.data.tasks import Batch


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Sequence[Batch], batch_size: int) -> None:
    """Re-estimate every batch-norm layer's running statistics on ``batches`` at the current
    weights: the plain average of the statistics of every ``batch_size`` slice, as
    ``torch.optim.swa_utils.update_bn`` computes them.

    The statistics are averages of activations, not functions of the weights: interpolating
    them, or keeping one checkpoint's, gives a network that no training produced. The model
    is left in eval mode.
    """
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch below, not an EMA
        m.train()
    for b in batches:
        for i in range(0, len(b.y), batch_size):
            model(b.x[i : i + batch_size], b.task[i : i + batch_size])
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
        m.eval()


def load_parameters(model: nn.Module, theta: Tensor) -> None:
    """Copy the flat vector ``theta`` into ``model``'s parameters (``parameters()`` order).

    In place, unlike ``vector_to_parameters``, which rebinds each parameter to a view of
    ``theta``: copying keeps every parameter's memory format (channels-last convolutions).
    """
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    if theta.numel() != sum(sizes):
        raise ValueError(f"theta has {theta.numel()} entries, the model {sum(sizes)} parameters")
    with torch.no_grad():
        for p, chunk in zip(params, torch.split(theta, sizes), strict=True):
            p.copy_(chunk.view(p.shape))


def flat_parameters(model: nn.Module) -> Tensor:
    """The network's parameters as one detached vector (``parameters()`` order)."""
    # reshape, not torch.nn.utils.parameters_to_vector: its view(-1) refuses channels-last weights
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
