"""A frozen copy of the network: the previous model that distillation strategies (LwF, iCaRL)
compare the current one with."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from torch import nn

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
