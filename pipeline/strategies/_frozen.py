"""A frozen copy of the network: the previous model that distillation strategies (LwF, iCaRL,
DGR) compare the current one with, and the distillation loss against its outputs."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


def frozen_copy(model: M) -> M:
    """A deep copy of ``model`` in eval mode with no gradients and no hooks.

    Hooks that strategies registered on the live model (this one's feature hook, or others')
    are left out: a deep copy would otherwise copy them and, through bound methods, the
    strategies that own them.
    """
    memo: dict[int, Any] = {}
    for m in model.modules():
        for key, value in vars(m).items():
            if "hooks" in key and isinstance(value, dict):
                memo[id(value)] = type(value)()
    old = copy.deepcopy(model, memo)
    old.requires_grad_(False)
    return old.eval()


def distillation(new: Tensor, old: Tensor, temperature: float, per_output: bool = False) -> Tensor:
    """``T^2 * KL(softmax(old / T) || softmax(new / T))``, averaged over the batch.

    ``per_output``: divided by the number of ``new``'s outputs as well, the mean over the batch
    and the outputs that van de Ven and Tolias's 2019 code takes (``loss_fn_kd``:
    ``(-targets * log_scores).mean()``); the sum over the outputs is the KL divergence, Hinton
    et al.'s and Li and Hoiem's form.

    ``new`` may have more outputs than ``old`` (the class scenario's new classes): ``old``'s
    probabilities are then 0 on them, as van de Ven's ``loss_fn_kd`` pads its targets, so the
    loss also pulls the new classes' probability down on these inputs. With as many outputs,
    it is Hinton et al.'s distillation. The KL divergence (rather than the cross-entropy of
    the papers' code, which differs by the targets' constant entropy) is exactly 0 when
    ``new == old``. ``T^2`` keeps the gradient scale independent of ``T`` (Hinton et al.
    2015).
    """
    t = temperature
    log_old = F.log_softmax(old.float() / t, dim=1)
    log_new = F.log_softmax(new.float() / t, dim=1)[:, : old.shape[1]]
    kl = t * t * (log_old.exp() * (log_old - log_new)).sum(1).mean()
    return kl / new.shape[1] if per_output else kl
