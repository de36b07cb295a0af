"""What a strategy declares besides its hooks: the type of its hyperparameters
(:class:`DataclassInstance`, :class:`NoParams`), a setting it refuses (:class:`StrategyRefused`),
its :class:`Role` in a comparison, and what it keeps (:class:`Retention`, the retention ledger's
entry, and the tensors of its state: :func:`tensors_in`, :func:`tensor_bytes`).

:mod:`pipeline.strategies.base` re-exports every name (``from pipeline.strategies.base import
Retention`` is how the strategies and the runner import them); they live here so that the
interface module holds the hooks.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field
from enum import Enum
from typing import Any, ClassVar, Protocol

import torch

from pipeline.errors import ConfigError


class DataclassInstance(Protocol):
    """Any dataclass instance: what a strategy's hyperparameters are (typeshed's
    ``_typeshed.DataclassInstance``, which exists only for type checkers)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]


@dataclass
class NoParams:
    """Hyperparameters of a strategy that has none."""


class StrategyRefused(ConfigError):
    """A strategy cannot work in this setting (scenario, streaming, retention): not a bad value
    but a combination a comparison skips with the reason, where a single run stops (exit 2)."""


class Role(Enum):
    """What a strategy stands for in a comparison.

    - ``BASELINE``: no defence, the forgetting every method is measured against (its weights
      span a comparison's loss-landscape plane); the default strategy of an experiment.
    - ``REFERENCE``: retrains on all data seen so far, the upper bound; intransigence and
      training cost are measured against it.
    - ``METHOD``: a method against forgetting.
    """

    BASELINE = 0
    REFERENCE = 1
    METHOD = 2


@dataclass
class Retention:
    """What a strategy keeps across task boundaries (one entry of the retention ledger).

    Attributes:
        raw_samples: raw training samples kept, per task name.
        raw_bytes: bytes of those samples (images, labels and anything stored with them).
        state_bytes: bytes of derived state (Fisher matrices, importances, old model copies).
    """

    raw_samples: dict[str, int] = field(default_factory=dict)
    raw_bytes: int = 0
    state_bytes: int = 0


def tensors_in(tree: Any) -> list[torch.Tensor]:
    """Every tensor in a nest of dicts, lists and tuples (e.g. a ``state_dict()``), in a fixed
    order (dict keys sorted)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree, key=str) for t in tensors_in(tree[k])]
    if isinstance(tree, list | tuple):
        return [t for v in tree for t in tensors_in(v)]
    return []


def tensor_bytes(tree: Any) -> int:
    """Bytes of every tensor in a nested dict/list/tuple (e.g. a ``state_dict()``)."""
    return sum(t.numel() * t.element_size() for t in tensors_in(tree))
