"""Means of element-wise maps of per-sample gradients: the importances of EWC and MAS.

EWC's empirical Fisher is ``1/N sum_n g_n^2`` and MAS's importance ``1/N sum_n |g_n|``, with
``g_n`` the gradient of one sample's loss. Neither commutes with the batch mean, so each needs the
per-sample gradients. Two ways compute them here, with the same result:

- By layer (the fast path, used whenever every trainable parameter sits in a plain
  ``nn.Linear``, ``nn.Conv2d`` or BatchNorm with running statistics, as in every model of
  :mod:`pipeline.models`): one forward and one backward per chunk give each layer's inputs
  ``a_n`` and output gradients ``d_n``. A linear layer's per-sample weight gradient is the outer
  product ``d_n a_n^T``, and since the square and the absolute value are multiplicative,
  ``sum_n f(d_n a_n^T) = f(D)^T f(A)``: one matrix product, no per-sample gradient is ever
  stored. A convolution's is ``sum_p d_{n,p} a_{n,p}^T`` over output positions ``p`` (``a`` the
  unfolded patches): one batched matrix product per chunk. A BatchNorm in eval mode is a fixed
  per-channel affine map of ``x^ = (a - running mean) / sqrt(running var + eps)``: its
  per-sample gradients are ``sum_p d_{n,p} x^_{n,p}`` (weight) and ``sum_p d_{n,p}`` (bias), per
  channel.
- By ``torch.func`` (``functional_call`` + ``grad`` + ``vmap``), for any other network.

We write the by-layer path ourselves (the identities BackPACK and Opacus use; neither is a
dependency here) because ``vmap`` materialises every parameter's per-sample gradient through a
generic batching rule: on the founding CNN the by-layer path takes 2.9 s for 4,000 samples
against 5.5 s (``benchmarks/importance.py``, 2 CPU threads), which brings EWC's end-of-task cost
to about a fifth of a training epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.hooks import RemovableHandle

from pipeline import distributed
from pipeline.data.tasks import Batch

#: Samples per chunk of the per-sample pass. It bounds the memory: a chunk holds, on the by-layer
#: path, ``chunk x out x in*k*k`` floats for the widest convolution (~50 MB for the founding
#: CNN), and on the vmap path ``chunk x parameters`` floats.
PER_SAMPLE_CHUNK = 256

Reduce = Literal["square", "abs"]
_MAPS: dict[str, Callable[[Tensor], Tensor]] = {"square": torch.square, "abs": torch.abs}
SampleLoss = Callable[[Tensor, Tensor], Tensor]  # (logits of one sample, its target) -> scalar


def per_sample_grad_mean(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device,
    sample_loss: SampleLoss,
    reduce: Reduce,
    limit: int,
) -> dict[str, Tensor]:
    """``1/N sum_n reduce(d sample_loss(f(x_n), y_n) / d theta)`` over the first ``limit``
    samples of ``batches``, for every trainable parameter.

    Exact per-sample gradients, in chunks of :data:`PER_SAMPLE_CHUNK` samples, by layer where
    the network allows it, else by ``torch.func`` (see the module docstring). The model is put
    in eval mode for the pass (dropout off: the importance of the weights as they are; samples
    then do not interact, which the by-layer path relies on), then restored.

    Args:
        model: the network; called as ``model(x, task)`` (so every head type works: per-task
            heads pick by the task id, a growing head gives its active outputs).
        batches: CPU batches (e.g. ``datamodule.loader(task, "train", ...)``), moved to
            ``device`` here.
        device: where the model is.
        sample_loss: ``(logits of one sample, its target) -> scalar``.
        reduce: ``square`` (the empirical Fisher) or ``abs`` (MAS), applied element-wise to
            each per-sample gradient.
        limit: most samples used.

    Returns:
        The mean per trainable parameter name (zeros if ``batches`` is empty).
    """
    params: dict[str, Tensor] = {n: p for n, p in model.named_parameters() if p.requires_grad}
    totals = {n: torch.zeros_like(p) for n, p in params.items()}
    layers = _layers_by_parameter(model, params)
    f = _MAPS[reduce]
    seen = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            if seen >= limit:
                break
            take = min(len(batch.y), limit - seen)
            x, y, t = (v[:take].to(device) for v in batch[:3])
            for start in range(0, take, PER_SAMPLE_CHUNK):
                sl = slice(start, start + PER_SAMPLE_CHUNK)
                if layers is None or not _add_by_layer(
                    model, layers, x[sl], y[sl], t[sl], sample_loss, f, totals
                ):
                    layers = None  # a layer ran twice: this network needs the general path
                    _add_by_vmap(model, params, x[sl], y[sl], t[sl], sample_loss, f, totals)
            seen += take
    finally:
        model.train(was_training)
    # A distributed run gives each process a share of the samples: sum the shares.
    distributed.sum_(list(totals.values()))
    seen = distributed.sum_int(seen, device)
    return {n: v / max(seen, 1) for n, v in totals.items()}


Layer = nn.Linear | nn.Conv2d | nn.BatchNorm1d | nn.BatchNorm2d
Norm = nn.BatchNorm1d | nn.BatchNorm2d


def _layers_by_parameter(model: nn.Module, params: dict[str, Tensor]) -> dict[str, Layer] | None:
    """The layers that hold every trainable parameter, by module name, if all are plain linear
    layers, convolutions or BatchNorms the by-layer path handles; else ``None``.

    A BatchNorm qualifies with running statistics, which eval mode normalises with (without,
    it normalises each chunk with the chunk's own statistics: the samples interact)."""
    layers: dict[str, Layer] = {}
    covered: set[str] = set()
    for name, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        plain_conv = (
            isinstance(module, nn.Conv2d)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )
        norm = (
            type(module) in (nn.BatchNorm1d, nn.BatchNorm2d)
            and getattr(module, "running_mean", None) is not None
        )
        if not (plain_conv or norm or type(module) is nn.Linear):
            return None
        layers[name] = module
        covered.update(f"{name}.{n}" if name else n for n in own)
    return layers if covered == set(params) else None


def _add_by_layer(
    model: nn.Module,
    layers: dict[str, Layer],
    x: Tensor,
    y: Tensor,
    t: Tensor,
    sample_loss: SampleLoss,
    f: Callable[[Tensor], Tensor],
    totals: dict[str, Tensor],
) -> bool:
    """Add one chunk's ``sum_n f(g_n)`` to ``totals`` by layer; ``False`` (nothing added) if a
    layer ran more than once in the forward pass (shared weights: the outer products would
    not be the per-sample gradients)."""
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    reused = False

    def keep(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
            nonlocal reused
            reused = reused or name in outputs
            inputs[name], outputs[name] = args[0].detach(), out
            # A BatchNorm's output is changed in place next in a ResNet (ReLU(inplace=True), the
            # residual's +=), which would make the kept tensor stand for the later value: the
            # network goes on with a copy, and the kept one stays the layer's own output.
            return out.clone() if isinstance(module, Norm) else None

        return hook

    handles: list[RemovableHandle] = [m.register_forward_hook(keep(n)) for n, m in layers.items()]
    try:
        with torch.enable_grad():
            losses = vmap(sample_loss)(model(x, t), y)
            names = [n for n in layers if n in outputs]
            if reused or any(inputs[n].dim() != 2 for n in names if type(layers[n]) is nn.Linear):
                return False
            grads = torch.autograd.grad(
                losses.sum(), [outputs[n] for n in names], allow_unused=True
            )
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for name, d in zip(names, grads, strict=True):
            if d is not None:
                _add_layer(name, layers[name], inputs[name], d, f, totals)
    return True


def _add_layer(
    name: str,
    layer: Layer,
    a: Tensor,
    d: Tensor,
    f: Callable[[Tensor], Tensor],
    totals: dict[str, Tensor],
) -> None:
    """``sum_n f(per-sample gradient)`` of one layer's weight and bias, from its inputs ``a``
    and output gradients ``d``."""
    prefix = f"{name}." if name else ""
    if isinstance(layer, Norm):
        weight, bias = _norm_sums(layer, a, d, f)
    elif isinstance(layer, nn.Conv2d):
        patches = F.unfold(
            a.contiguous(),  # im2col is several times slower on channels-last input
            layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,  # type: ignore[arg-type]  # a tuple: _layers_by_parameter
            stride=layer.stride,
        )  # (N, C*kh*kw, P), channel-major like weight.reshape(out, -1)
        d = d.flatten(2)  # (N, out, P)
        weight = f(torch.bmm(d, patches.transpose(1, 2))).sum(0)  # (out, C*kh*kw)
        bias = f(d.sum(2)).sum(0)
    else:
        weight, bias = f(d).T @ f(a), f(d).sum(0)
    if prefix + "weight" in totals:  # a trainable weight (a frozen one has no entry)
        totals[prefix + "weight"] += weight.reshape(totals[prefix + "weight"].shape)
    if prefix + "bias" in totals:
        totals[prefix + "bias"] += bias


def _norm_sums(
    layer: nn.BatchNorm1d | nn.BatchNorm2d, a: Tensor, d: Tensor, f: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """``sum_n f(per-sample gradient)`` of an eval-mode BatchNorm's weight and bias, from its
    inputs ``a`` and output gradients ``d`` (N x C, or N x C x positions...)."""
    assert layer.running_mean is not None and layer.running_var is not None
    shape = (1, -1) + (1,) * (a.dim() - 2)
    scale = torch.rsqrt(layer.running_var + layer.eps).view(shape)
    normalised = ((a - layer.running_mean.view(shape)) * scale).reshape(*a.shape[:2], -1)
    d = d.reshape(*d.shape[:2], -1)  # N x C x positions (1 for an N x C input)
    return f((d * normalised).sum(2)).sum(0), f(d.sum(2)).sum(0)


def _add_by_vmap(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    t: Tensor,
    sample_loss: SampleLoss,
    f: Callable[[Tensor], Tensor],
    totals: dict[str, Tensor],
) -> None:
    """Add one chunk's ``sum_n f(g_n)`` to ``totals`` with ``torch.func``'s per-sample
    gradients (any network)."""
    detached = {n: p.detach() for n, p in params.items()}

    def one(p: dict[str, Tensor], x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        logits = functional_call(model, p, (x.unsqueeze(0), t.unsqueeze(0)))
        return sample_loss(logits[0], y)

    grads = vmap(grad(one), in_dims=(None, 0, 0, 0))(detached, x, y, t)
    for n, g in grads.items():
        totals[n] += f(g).sum(0)
