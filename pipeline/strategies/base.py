"""Strategy plugins: the typed hooks through which every method against forgetting acts.

A strategy never subclasses the LightningModule. It is a plugin hosted by
:class:`pipeline.module.ContinualModule`, which calls its hooks in list order, so strategies
compose (``strategy=[ewc,replay]``). The hooks return values instead of mutating the host:

============================  ===============================================================
hook                          when / what it returns
============================  ===============================================================
``on_task_start(ctx)``        before the task's Trainer is built (add parameters here: the
                              optimizer is created afterwards)
``transform_batch(b, ctx)``   each training batch, before the forward; returns the batch to
                              train on (replay appends stored samples)
``penalty(model, b, logits)`` each training step; returns a loss term added to the task loss,
                              or ``None``
``after_backward(model)``     after the backward pass, before the optimizer step (gradient
                              projection, importance accumulation)
``after_optimizer_step()``    after the optimizer step (path integrals need the update)
``on_task_end(ctx)``          after the task's training, model on the evaluation device
                              (Fisher information, anchors, buffer updates)
``state_dict()`` / ``load_state_dict(s)``  saved into and restored from every checkpoint
============================  ===============================================================

Besides the hooks, a strategy declares what it keeps (``keeps_raw_data``, :meth:`retention`:
the retention ledger), its :class:`Role` in a comparison, and refuses a setting it cannot work
in before anything trains (:meth:`check_config` raises :class:`StrategyRefused`: a scenario,
streaming, ``retention: none``).

A strategy's metadata lives once: its defaults in its ``Params`` dataclass, its description and
search ranges in ``conf/strategy/<name>.yaml``, its name, role and raw-data use as class
attributes. :func:`resolve` parses an experiment's strategy hyperparameters once, against
``Params``, and every other module reads the parsed objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from pipeline.data.tasks import Batch, Task
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.data.datamodule import ContinualDataModule
    from pipeline.models import Classifier


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


@dataclass
class TaskContext:
    """What a strategy may look at when a task starts or ends.

    Attributes:
        index: position of the task in the sequence.
        task: the task (its splits, names, normalisation).
        datamodule: the whole sequence (``datamodule.tasks``) and its loaders.
        model: the network being trained (backbone and head).
        device: where the model is during this hook.
    """

    index: int
    task: Task
    datamodule: ContinualDataModule
    model: Classifier
    device: torch.device


class Strategy:
    """Base class of every strategy plugin. Subclasses override the hooks they need.

    Class attributes:
        name: registry name (``conf/strategy/<name>.yaml`` holds its defaults).
        Params: dataclass of its hyperparameters; ``params`` is an instance of it.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: True when the strategy keeps raw training samples across task boundaries.
    keeps_raw_data: ClassVar[bool] = False
    #: Scenarios the strategy can work in.
    scenarios: ClassVar[tuple[str, ...]] = ("task", "domain", "class")
    role: ClassVar[Role] = Role.METHOD
    #: A landmark of the field: a comparison draws its loss-landscape plane beside the best
    #: method's, so readers see where a classic lands.
    landmark: ClassVar[bool] = False

    def __init__(self, params: Any) -> None:
        self.params = params

    @classmethod
    def check_config(cls, params: Any, cfg: ExperimentConfig) -> None:
        """Refuse, before training, a setting this strategy cannot work in.

        Raises:
            StrategyRefused: the setting (scenario, streaming, retention) rules it out.
            ConfigError: a hyperparameter value it cannot work with (one line).
        """
        if cfg.scenario not in cls.scenarios:
            raise StrategyRefused(
                f"strategy: '{cls.name}' does not work in the {cfg.scenario}-incremental "
                f"scenario (it works in: {', '.join(cls.scenarios)})"
            )
        if cls.keeps_raw_data and cfg.retention == "none":
            raise StrategyRefused(
                f"strategy: '{cls.name}' keeps raw training samples, which retention=none forbids"
            )

    def retention(self) -> Retention:
        """What this strategy keeps now (default: no raw samples; its state's tensors)."""
        return Retention(state_bytes=tensor_bytes(self.state_dict()))

    def erase(self, task: int, ids: torch.Tensor) -> int:
        """Forget the stored samples of task ``task`` with these sample ids (the right to
        erasure). Returns how many were removed; a strategy that keeps none removes none."""
        return 0

    def stored_ids(self, task: int) -> torch.Tensor | None:
        """The ids of task ``task``'s samples this strategy holds now (what :meth:`erase` can
        remove); ``None`` for a strategy that keeps no samples in its state."""
        return None

    def on_task_start(self, ctx: TaskContext) -> None:
        """Called before training on ``ctx.task``."""

    def transform_batch(self, batch: Batch, ctx: TaskContext) -> Batch:
        """Return the batch to train on (default: unchanged)."""
        return batch

    def penalty(self, model: nn.Module, batch: Batch, logits: Tensor) -> Tensor | None:
        """Return a term added to the loss, or ``None`` for no penalty."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Called after ``loss.backward()``, before the optimizer step."""

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after the optimizer step."""

    def on_task_end(self, ctx: TaskContext) -> None:
        """Called after training on ``ctx.task``, before the evaluation of every task."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in each checkpoint (tensors, numbers, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


REGISTRY: dict[str, type[Strategy]] = {}
S = TypeVar("S", bound=type[Strategy])


def register(cls: S) -> S:
    """Class decorator: make a strategy available by its ``name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"strategy name {cls.name!r} is empty or already registered")
    REGISTRY[cls.name] = cls
    return cls


def parse_params(name: str, raw: Any) -> Any:
    """Validate a strategy's hyperparameters against its ``Params`` dataclass, whose defaults
    fill what ``raw`` leaves out (already parsed params are returned as they are).

    Raises:
        ConfigError: unknown strategy, unknown key, wrong type or bad value.
    """
    if name not in REGISTRY:
        raise ConfigError(
            f"strategy: unknown strategy '{name}' (available: {', '.join(sorted(REGISTRY))})"
        )
    schema = REGISTRY[name].Params
    if isinstance(raw, schema):
        return raw
    if is_dataclass(raw):
        raise ConfigError(f"strategies.{name}: expected {schema.__name__}, got {raw!r}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), raw or {})
        params = OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(f"strategies.{name}.{key}: {str(e).splitlines()[0]}") from e
    except ConfigError as e:
        raise ConfigError(f"strategies.{name}.{e}") from e
    assert is_dataclass(params)
    for f in fields(params):
        value = getattr(params, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"strategies.{name}.{f.name}: must be finite, got {value}")
    return params


def with_role(role: Role) -> list[str]:
    """Names of the registered strategies of a role."""
    return [name for name, cls in REGISTRY.items() if cls.role is role]


def default_order() -> list[str]:
    """Every registered strategy: the baseline, the reference, then the methods that keep no
    raw data, then those that do (by name within each group): ``make compare``'s default."""
    return sorted(REGISTRY, key=lambda n: (REGISTRY[n].role.value, REGISTRY[n].keeps_raw_data, n))


def resolve(cfg: ExperimentConfig) -> ExperimentConfig:
    """Parse the strategies of a composed config, once, and check them against it.

    ``cfg.strategy`` empty means the baseline; ``cfg.strategies[name]`` becomes the strategy's
    ``Params`` (its defaults filled in); then each strategy's :meth:`Strategy.check_config`.

    Returns:
        ``cfg``, changed in place.

    Raises:
        ConfigError: an unknown strategy, parameters of a strategy not in use, a bad value.
        StrategyRefused: a strategy that cannot work in this setting.
    """
    if not cfg.strategy:
        cfg.strategy = with_role(Role.BASELINE)[:1]
    for name in cfg.strategy:
        if not isinstance(name, str):
            raise ConfigError(f"strategy: expected a list of names, got {name!r}")
    extra = sorted(set(cfg.strategies) - set(cfg.strategy))
    if extra:
        raise ConfigError(f"strategies: {extra} configured but not in strategy={cfg.strategy}")
    cfg.strategies = {n: parse_params(n, cfg.strategies.get(n)) for n in cfg.strategy}
    for name in cfg.strategy:
        REGISTRY[name].check_config(cfg.strategies[name], cfg)
    return cfg


def build_strategies(cfg: ExperimentConfig) -> list[Strategy]:
    """Instantiate the strategies of a resolved config (:func:`resolve`), in order."""
    return [REGISTRY[n](parse_params(n, cfg.strategies.get(n))) for n in cfg.strategy]
