"""The pieces of generative replay (:mod:`pipeline.strategies.dgr`): van de Ven and Tolias's
fully connected VAE, the replayed batch's targets, and the normalisation between the pixels the
VAE models and the batches the classifier sees.

The generator is a variational auto-encoder (Kingma & Welling 2014) of images whose pixels
are in [0, 1], as GMvandeVen/continual-learning builds it for Split MNIST (branch
``preprints``, ``vae_models.py``): an encoder of ``layers`` fully connected ReLU layers to
the mean and log-variance of a Gaussian latent, a mirrored decoder to one Bernoulli logit per
pixel, no batch norm and no dropout (their ``fc_bn`` and ``fc_drop`` defaults). Its loss is
theirs with ``average = True``: per sample, the reconstruction's binary cross-entropy summed
over the pixels plus the KL divergence of the latent from ``N(0, I)``, both divided by the
number of pixels, averaged over the batch.

The decoder outputs logits and the loss is ``binary_cross_entropy_with_logits``: the same
function as their sigmoid output followed by ``binary_cross_entropy``, without its clamping
of ``log 0`` and safe under autocast (which refuses the plain BCE). A sample is the
decoder's mean, ``sigmoid(logits)``, as theirs is: no Bernoulli draw.

This module registers no strategy (the package imports it like every other module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from pipeline import distributed
from pipeline.data.tasks import Batch, Task
from pipeline.strategies._frozen import distillation


def _relu_stack(in_features: int, hidden: int, layers: int) -> list[nn.Module]:
    """``layers`` times a linear layer of ``hidden`` units and a ReLU."""
    out: list[nn.Module] = []
    for _ in range(layers):
        out += [nn.Linear(in_features, hidden), nn.ReLU()]
        in_features = hidden
    return out


class VAE(nn.Module):
    """A fully connected VAE of images of ``shape`` (channels, height, width).

    Encoder: the flattened pixels, ``layers`` x (linear ``hidden`` + ReLU), then one linear
    layer to the latent's mean and log-variance (``latent`` each). Decoder: the latent,
    ``layers`` x (linear ``hidden`` + ReLU), then one linear layer to a logit per pixel.

    Args:
        shape: (channels, height, width) of the images.
        hidden: units of every hidden layer.
        layers: hidden layers of the encoder, and of the decoder.
        latent: dimensions of the latent variable ``z``.
    """

    def __init__(self, shape: tuple[int, int, int], hidden: int, layers: int, latent: int) -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.latent = latent
        pixels = math.prod(self.shape)
        width = hidden if layers else pixels
        self.encoder = nn.Sequential(*_relu_stack(pixels, hidden, layers))
        self.to_latent = nn.Linear(width, 2 * latent)
        self.decoder = nn.Sequential(
            *_relu_stack(latent, hidden, layers), nn.Linear(hidden if layers else latent, pixels)
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and log-variance of ``q(z | x)`` (each batch x ``latent``)."""
        mean, logvar = self.to_latent(self.encoder(x.flatten(1))).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: Tensor) -> Tensor:
        """The logits of ``p(x | z)``, one per pixel (batch x channels x height x width)."""
        logits: Tensor = self.decoder(z)
        return logits.reshape(-1, *self.shape)

    @override
    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        """The loss of ``x`` (pixels in [0, 1]), with ``z = mean + noise * std`` (the
        reparametrisation; ``noise`` ~ ``N(0, I)``, batch x ``latent``): :func:`vae_loss`."""
        mean, logvar = self.encode(x)
        z = mean + noise * torch.exp(0.5 * logvar)
        return vae_loss(self.decode(z), x, mean, logvar)

    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        """Images decoded from latents ``z``: the decoder's means, pixels in (0, 1)."""
        return torch.sigmoid(self.decode(z))


def vae_loss(logits: Tensor, x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """``mean over the batch of (BCE(x, sigmoid(logits)) + KL(q(z|x) || N(0, I))) / pixels``.

    The BCE is summed over the pixels and the KL, in closed form
    ``-1/2 sum(1 + logvar - mean^2 - exp(logvar))`` (Kingma & Welling 2014, appendix B), over
    the latent's dimensions; dividing both by the pixels is van de Ven's ``average = True``.
    """
    pixels = x[0].numel()
    bce = F.binary_cross_entropy_with_logits(
        logits.flatten(1).float(), x.flatten(1).float(), reduction="none"
    ).sum(1)
    kl = -0.5 * (1 + logvar - mean.square() - logvar.exp()).float().sum(1)
    return ((bce + kl) / pixels).mean()


def average_gradients(module: nn.Module) -> None:
    """Average the gradients of ``module`` over the processes of a distributed run, in place
    (one all-reduce of them all): what DDP does for the network it wraps, done by hand for a
    module it does not (no-op in one process)."""
    world = distributed.world()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    distributed.sum_([flat])
    flat /= world
    start = 0
    for g in grads:
        g.copy_(flat[start : start + g.numel()].view_as(g))
        start += g.numel()


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move an optimizer's state (Adam's moments) to ``device`` (its parameters moved)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and key != "step":  # Adam keeps its step on the CPU
                state[key] = value.to(device)


def target_loss(
    new: Tensor, old: Tensor, temperature: float | None, outputs: str = "sum"
) -> Tensor:
    """The current model's outputs ``new`` against the previous model's ``old`` on replayed
    samples, averaged over the batch.

    ``new`` has as many outputs as ``old`` or more (the class scenario's new classes).
    Hard targets (``temperature`` None): the cross-entropy of ``new`` against ``old``'s
    argmax. Soft: :func:`~pipeline.strategies._frozen.distillation` (van de Ven's
    ``loss_fn_kd``: zero-padded targets, the ``T^2`` factor), summed over the outputs or, with
    ``outputs="mean"``, averaged over them as well.
    """
    if temperature is None:
        return F.cross_entropy(new, old.argmax(1))
    return distillation(new, old, temperature, per_output=outputs == "mean")


class Normalisation:
    """Between the classifier's batches, normalised with each task's statistics (unless
    ``data.normalise=false``), and the pixels in [0, 1] the VAE models.

    A training batch is un-normalised with each sample's task statistics (exact). A replayed
    image is normalised for each previous task's head with that task's statistics
    (:attr:`groups`: the previous tasks grouped by equal statistics, one forward per group)
    or, where it has no task (domain, class), with :attr:`pooled`: the statistics of the equal
    mixture of the previous tasks, which is what the generator models. Both are the shared
    statistics exactly where the tasks share them.

    Args:
        tasks: the sequence.
        old_tasks: the tasks the generator has learnt (the first ``old_tasks``).
        device: where the batches are.
    """

    def __init__(self, tasks: list[Task], old_tasks: int, device: torch.device) -> None:
        means = torch.tensor([t.mean for t in tasks], dtype=torch.float32)
        stds = torch.tensor([t.std for t in tasks], dtype=torch.float32)
        self.means, self.stds = means.to(device), stds.to(device)
        shape = (1, -1, 1, 1)
        same: dict[tuple[float, ...], list[int]] = {}
        for s in range(old_tasks):
            same.setdefault((*means[s].tolist(), *stds[s].tolist()), []).append(s)
        self.groups = [
            (means[i[0]].view(shape).to(device), stds[i[0]].view(shape).to(device), i)
            for i in same.values()
        ]
        channels = (1, means.shape[1], 1, 1)
        self.pooled = (torch.zeros(channels, device=device), torch.ones(channels, device=device))
        if len(self.groups) == 1:  # the shared statistics, without rounding
            self.pooled = self.groups[0][:2]
        elif self.groups:
            m, s2 = means[:old_tasks], stds[:old_tasks].square()
            var = (s2 + m.square()).mean(0) - m.mean(0).square()
            self.pooled = (
                m.mean(0).view(shape).to(device),
                var.clamp_min(1e-12).sqrt().view(shape).to(device),
            )

    def pixels(self, batch: Batch) -> Tensor:
        """The batch's images un-normalised with each sample's task statistics, in [0, 1]."""
        shape = (-1, self.means.shape[1], 1, 1)
        x = batch.x.detach().float() * self.stds[batch.task].view(shape)
        return (x + self.means[batch.task].view(shape)).clamp_(0.0, 1.0)


def share_rows(rows: tuple[int, int, int], size: int) -> tuple[int, int, int]:
    """``size`` rows split over the processes as the step's ``rows`` are: this process's first
    one and its count, the slices of every process covering ``[0, size)`` once."""
    total, first, n = rows
    start, end = size * first // total, size * (first + n) // total
    return size, start, end - start


def global_rows(batch: Batch) -> tuple[int, int, int]:
    """The step's rows over every process, this process's first one, and its count (one
    gather of the sizes in a distributed run: a batch's slices may differ by a row)."""
    n = int(batch.x.shape[0])
    if distributed.world() == 1:
        return n, 0, n
    sizes = distributed.gather_rows(torch.tensor([n], device=batch.x.device)).tolist()
    return sum(sizes), sum(sizes[: distributed.rank()]), n
