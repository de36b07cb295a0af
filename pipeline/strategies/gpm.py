"""Gradient Projection Memory: learn new tasks only in directions old tasks' inputs do not use.

Saha, Garg & Roy 2021, "Gradient Projection Memory for Continual Learning" (ICLR 2021).

A layer ``y = W x + b`` answers an old input ``x`` the same way after an update ``dW`` when
``dW [x; 1] = 0``. GPM keeps, per layer, an orthonormal basis ``M`` of the inputs the past tasks
gave that layer (the top singular vectors of their representation matrix that hold a fraction
``threshold`` of its energy) and removes from every later update its component in that span:
``dW <- dW - dW M M^T``. It keeps no raw sample, only the bases (derived state).

A convolution's inputs are its unfolded patches, with the layer's own stride and padding (the
paper's representation of a ResNet-18's convolutions); a layer without bias (a ResNet's) has no
constant input. BatchNorm layers are learnt on the first task only and shared by the later ones,
as the paper's ResNet-18 does: see :class:`GPM`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from pipeline import distributed
from pipeline.config.schema import ExperimentConfig
from pipeline.errors import ConfigError
from pipeline.models import MultiHead
from pipeline.strategies._anchor import require, task_batches
from pipeline.strategies.base import Strategy, TaskContext, register

Layer = nn.Linear | nn.Conv2d
#: BatchNorm1d/2d/3d and SyncBatchNorm: torch's common base of the batch norms
Norm = nn.modules.batchnorm._BatchNorm

#: Most float64 entries of one chunk of a layer's representation rows (128 MB): a ResNet's first
#: stage unfolds 1,024 rows of 576 entries per 32x32 image at width 64, 1.4 GB for 300 samples.
GRAM_CHUNK = 1 << 24


@dataclass
class GPMParams:
    """Hyperparameters of GPM.

    Attributes:
        threshold: fraction of each layer's input energy (squared singular values of its
            representation matrix) the kept basis must hold; the paper uses 0.95-0.99. Higher
            protects old tasks more and leaves fewer directions to new ones.
        samples: training samples of each ended task the representation matrices are built from
            (the paper: 125 for convolutional layers, 300 for fully connected ones).
    """

    threshold: float = 0.97
    samples: int = 300


def protected_layers(model: nn.Module) -> dict[str, Layer]:
    """The linear and convolutional layers whose updates GPM constrains, by module name.

    A task-incremental head's per-task layers are left out: each one answers only its own
    task's samples, and the layers of old tasks receive no gradient later anyway.
    """
    skip = [name for name, m in model.named_modules() if isinstance(m, MultiHead)]
    layers: dict[str, Layer] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d) and not any(name.startswith(f"{s}.") for s in skip):
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or isinstance(m.padding, str)):
                raise ConfigError(
                    f"strategy: 'gpm' supports no grouped or string-padded convolution ({name})"
                )
            layers[name] = m
    return layers


def norm_layers(model: nn.Module) -> dict[str, Norm]:
    """The batch norms of ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Norm)}


def layer_inputs(layer: Layer, x: Tensor) -> Tensor:
    """The rows ``[x; 1]`` the layer multiplies by ``[W b]`` (``x`` alone without a bias): one
    per sample for a linear layer, one per sample and output position (the unfolded patch,
    with the layer's stride and padding) for a convolution."""
    if isinstance(layer, nn.Conv2d):
        patches = F.unfold(
            x,
            layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,  # type: ignore[arg-type]  # a tuple: protected_layers
            stride=layer.stride,
        )  # (N, C*kh*kw, L), channel-major: the order of W.view(out, -1)
        x = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    x = x.reshape(-1, x.shape[-1])
    if layer.bias is None:
        return x
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def _samples_per_chunk(layer: Layer, x: Tensor) -> int:
    """Samples of ``x`` whose :func:`layer_inputs` rows fit in :data:`GRAM_CHUNK` entries."""
    if isinstance(layer, nn.Conv2d):
        padding = cast(tuple[int, int], layer.padding)  # a tuple: protected_layers
        positions = 1  # the convolution's output positions: one row each
        for size, k, s, d, p in zip(
            x.shape[-2:], layer.kernel_size, layer.stride, layer.dilation, padding, strict=True
        ):
            positions *= (size + 2 * p - d * (k - 1) - 1) // s + 1
        per_sample = positions * layer.in_channels * math.prod(layer.kernel_size)
    else:
        per_sample = x[0].numel()
    return max(1, GRAM_CHUNK // max(per_sample, 1))


def grow_basis(basis: Tensor | None, gram: Tensor, threshold: float) -> Tensor:
    """Add to ``basis`` the fewest directions that make it hold ``threshold`` of the energy.

    Args:
        basis: orthonormal columns (d x k) kept from earlier tasks, or ``None``.
        gram: ``X^T X`` of the ended task's representation matrix ``X`` (d x d). Its
            eigenvectors are ``X``'s right singular vectors and its eigenvalues their squared
            singular values, so the energy criterion needs no SVD of the tall ``X``.
        threshold: fraction of ``trace(gram)`` the returned basis must hold.

    Returns:
        Orthonormal columns (d x k'), k' >= k: ``basis`` followed by the new directions, which
        are orthogonal to it (the paper's criterion on the residual, Algorithm 1).
    """
    gram = gram.double()
    m = basis.double() if basis is not None else gram.new_zeros(gram.shape[0], 0)
    total = float(torch.trace(gram))
    residual = gram - m @ (m.T @ gram)
    residual = residual - (residual @ m) @ m.T  # P G P with P = I - M M^T
    held = total - float(torch.trace(residual))  # the energy the old basis already holds
    need = threshold * total - held
    if total <= 0.0 or need <= 0.0 or m.shape[1] == gram.shape[0]:
        return m.float()
    values, vectors = torch.linalg.eigh((residual + residual.T) / 2)
    values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)
    cumulative = torch.cumsum(values, 0)
    k = int(torch.searchsorted(cumulative, torch.tensor(need, dtype=cumulative.dtype))) + 1
    # never past the residual's rank (its null directions are M's own) or the dimension
    k = min(k, int((values > values[0] * 1e-10).sum()), gram.shape[0] - m.shape[1])
    # Re-orthonormalise: the eigenvectors are orthogonal to M only up to rounding.
    q: Tensor = torch.linalg.qr(torch.cat([m, vectors[:, :k]], dim=1)).Q
    return q.float()


@torch.no_grad()
def input_grams(model: nn.Module, inputs: Iterable[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """``X^T X`` of each protected layer's representation matrix ``X`` (rows
    :func:`layer_inputs`) over the given batches of (images, task ids), model in eval mode."""
    grams: dict[str, Tensor] = {}

    def hook(name: str, layer: Layer) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def record(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach()
            step = _samples_per_chunk(layer, x)
            for start in range(0, x.shape[0], step):  # chunks of samples, to bound the memory
                rows = layer_inputs(layer, x[start : start + step].double())
                gram = rows.T @ rows
                grams[name] = gram if name not in grams else grams[name] + gram

        return record

    handles: list[RemovableHandle] = [
        layer.register_forward_pre_hook(hook(name, layer))
        for name, layer in protected_layers(model).items()
    ]
    was_training = model.training
    model.eval()
    try:
        for x, task in inputs:
            model(x, task)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return grams


def flat_update(layer: Layer, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``[W b]`` (or its gradient) as one (out x d) matrix, the layout of :func:`layer_inputs`:
    ``W`` alone for a layer without bias (a bias's gradient that is ``None`` counts as 0)."""
    w = weight.reshape(weight.shape[0], -1)
    if layer.bias is None:
        return w
    if bias is None:
        return torch.cat([w, w.new_zeros(w.shape[0], 1)], dim=1)
    return torch.cat([w, bias.unsqueeze(1)], dim=1)


def project_out(update: Tensor, basis: Tensor) -> Tensor:
    """``U - U M M^T``: the rows of ``update`` with their component in ``span(M)`` removed."""
    return update - (update @ basis) @ basis.T


@register
class GPM(Strategy[GPMParams]):
    """GPM: project each update of a layer onto the orthogonal complement of the input space
    of the tasks learnt before.

    At the end of each task, every protected layer's inputs on ``samples`` of the task's training
    samples (in fixed order, model in eval mode) extend that layer's basis (:func:`grow_basis`).
    While a later task trains, the gradient of ``[W b]`` is projected (so Adam's moments never
    build up along protected directions), and so is the step the optimizer took: Adam scales
    each coordinate, so a projected gradient alone does not give a projected update (the paper
    uses plain SGD, for which the two are the same).

    Works in every scenario. It is built for the task-incremental one; with a shared or
    growing head it still keeps old inputs' outputs fixed, but new classes can only use
    directions old tasks leave free.

    Batch norms (a ResNet's) are learnt on the first task and shared by the later ones, as in
    the paper's ResNet-18: between two protected layers a batch norm would otherwise change old
    inputs' outputs twice, through its affine parameters (which no input basis protects) and
    through its running statistics, re-estimated on the new task's batches. From the second
    task on their parameters' gradients are zeroed (as the paper's code does) and any step the
    optimizer still takes (weight decay) is undone; and they run in eval mode, normalising with
    the first task's running statistics, in training too. (The paper's code keeps no running
    statistics, ``track_running_stats=False``: it normalises with each batch's own, at test time
    too, which makes a sample's prediction depend on the batch it is tested in.)
    """

    name = "gpm"
    keeps_raw_data = False

    @classmethod
    @override
    def check_config(cls, params: GPMParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        require(
            0 < params.threshold <= 1,
            cls.name,
            "threshold",
            f"must be in (0, 1], got {params.threshold}",
        )
        require(params.samples >= 1, cls.name, "samples", f"must be >= 1, got {params.samples}")

    def __init__(self, params: GPMParams) -> None:
        super().__init__(params)
        self.bases: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}
        self._norms_before: list[tuple[Tensor, Tensor]] = []  # (parameter, value before the step)
        self._norm_hooks: list[RemovableHandle] = []

    def _layers(self, model: nn.Module) -> dict[str, Layer]:
        return {n: m for n, m in protected_layers(model).items() if n in self.bases}

    def _basis(self, name: str, device: torch.device) -> Tensor:
        """The layer's basis, moved to the training device once, not at every step."""
        if self.bases[name].device != device:
            self.bases[name] = self.bases[name].to(device)
        return self.bases[name]

    def _norm_parameters(self, model: nn.Module) -> list[Tensor]:
        """The batch norms' parameters GPM holds fixed: all, once a task has ended."""
        if not self.bases:
            return []
        norms = norm_layers(model).values()
        return [p for m in norms for p in m.parameters(recurse=False) if p.requires_grad]

    def _release_norms(self) -> None:
        for handle in self._norm_hooks:
            handle.remove()
        self._norm_hooks = []

    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        """From the second task on, every batch norm runs in eval mode (see the class
        docstring): a pre-hook sets it at each call, as Lightning sets training mode anew."""
        self._release_norms()
        if self.bases:
            self._norm_hooks = [
                m.register_forward_pre_hook(_evaluated) for m in norm_layers(ctx.model).values()
            ]

    @override
    def after_backward(self, model: nn.Module) -> None:
        self._before = {}
        self._norms_before = []
        for p in self._norm_parameters(model):
            if p.grad is not None:
                p.grad.zero_()
            self._norms_before.append((p, p.detach().clone()))
        for name, layer in self._layers(model).items():
            basis = self._basis(name, layer.weight.device)
            if layer.weight.grad is not None:
                bias_grad = layer.bias.grad if layer.bias is not None else None
                g = project_out(flat_update(layer, layer.weight.grad, bias_grad), basis)
                _write(layer, g, grad=True)
            self._before[name] = flat_update(layer, layer.weight, layer.bias).detach().clone()

    @override
    def after_optimizer_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, layer in self._layers(model).items():
                before = self._before.get(name)
                if before is None:
                    continue
                basis = self._basis(name, before.device)
                step = flat_update(layer, layer.weight, layer.bias) - before
                _write(layer, before + project_out(step, basis), grad=False)
            for p, value in self._norms_before:
                p.copy_(value)
        self._before = {}
        self._norms_before = []

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        self._release_norms()

        def first_samples() -> Iterator[tuple[Tensor, Tensor]]:
            # The training split's first samples in its fixed order (this process's share).
            for batch in task_batches(ctx, self.params.samples):
                yield batch.x.to(ctx.device), batch.task.to(ctx.device)

        grams = input_grams(ctx.model, first_samples())
        # A distributed run: the Gram matrices are sums over samples, so the shares add up to
        # the whole; every process then grows the same basis, and rank 0's is given to all so
        # that an eigensolver's last bits cannot set them apart (not even their sizes).
        distributed.sum_([grams[n] for n in sorted(grams)])
        bases = {}
        for name, gram in grams.items():
            old = self.bases.get(name)
            bases[name] = grow_basis(
                old.to(gram.device) if old is not None else None, gram, self.params.threshold
            ).cpu()
        for name, basis in distributed.broadcast_object(bases).items():
            self.bases[name] = basis.to(ctx.device)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"bases": {k: v.cpu().clone() for k, v in self.bases.items()}}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bases = {k: v.clone() for k, v in state["bases"].items()}

    def basis_sizes(self) -> dict[str, tuple[int, int]]:
        """Per layer: (directions kept, input dimension, + 1 with a bias): how much of it old
        tasks hold."""
        return {k: (v.shape[1], v.shape[0]) for k, v in self.bases.items()}


def _evaluated(module: nn.Module, args: tuple[Any, ...]) -> None:
    """A forward pre-hook: the module runs in eval mode (a batch norm then normalises with its
    running statistics and leaves them as they are)."""
    module.train(False)


def _write(layer: Layer, flat: Tensor, *, grad: bool) -> None:
    """Write an (out x d) matrix back into ``[W b]`` or into their gradients."""
    w = (flat if layer.bias is None else flat[:, :-1]).reshape(layer.weight.shape)
    if grad:
        assert layer.weight.grad is not None
        layer.weight.grad.copy_(w)
        if layer.bias is not None and layer.bias.grad is not None:
            layer.bias.grad.copy_(flat[:, -1])
    else:
        layer.weight.copy_(w)
        if layer.bias is not None:
            layer.bias.copy_(flat[:, -1])
