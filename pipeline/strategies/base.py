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
``task_loss(m, b, logits)``   each training step; returns the task loss, in place of the
                              module's cross-entropy, or ``None``
``penalty(model, b, logits)`` each training step; returns a loss term added to the task loss,
                              or ``None``
``after_backward(model)``     after the backward pass, before the optimizer step (gradient
                              projection, importance accumulation)
``after_optimizer_step(m)``   after the optimizer step (path integrals need the update)
``on_task_end(ctx)``          after the task's training, model on the evaluation device
                              (Fisher information, anchors, buffer updates)
``predict(m, x, t, logits)``  each evaluated batch, after the forward; returns the scores
                              whose argmax is the prediction, or ``None`` (the logits)
``state_dict()`` / ``load_state_dict(s)``  saved into and restored from every checkpoint
============================  ===============================================================

``task_loss`` and ``predict`` replace what the module computes: one strategy of a config may
override each (:meth:`Strategy.check_config` refuses two); the module takes the first value.

Besides the hooks, a strategy declares what it keeps (``keeps_raw_data``, :meth:`retention`:
the retention ledger), its :class:`Role` in a comparison, and refuses a setting it cannot work
in before anything trains (:meth:`check_config` raises :class:`StrategyRefused`: a scenario,
streaming, ``retention: none``).

A strategy's metadata lives once: its defaults in its ``Params`` dataclass (named once, as the
type argument of its base: ``class EWC(AnchorStrategy[EWCParams])``, which types
``self.params``), its description and search ranges in ``conf/strategy/<name>.yaml``, its name,
role and raw-data use as class attributes. Each hook an implementation overrides is marked
with ``typing_extensions.override``; the hooks' docstrings below say when each is called and
what it may return. :func:`resolve` parses an experiment's strategy hyperparameters once, against
``Params``, and every other module reads the parsed objects.
"""

from __future__ import annotations

from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, get_args, get_origin

import torch
from torch import Tensor, nn
from typing_extensions import override

from pipeline.data.tasks import Batch, Task

# re-exported: the strategies and the runner import them from here
from pipeline.strategies._declared import DataclassInstance as DataclassInstance
from pipeline.strategies._declared import NoParams as NoParams
from pipeline.strategies._declared import Retention as Retention
from pipeline.strategies._declared import Role as Role
from pipeline.strategies._declared import StrategyRefused as StrategyRefused
from pipeline.strategies._declared import tensor_bytes as tensor_bytes
from pipeline.strategies._declared import tensors_in as tensors_in

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig
    from pipeline.data.datamodule import ContinualDataModule
    from pipeline.models import Classifier


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


#: A strategy's hyperparameters: an instance of its ``Params`` dataclass.
P = TypeVar("P", bound=DataclassInstance)


class Strategy(Generic[P]):
    """Base class of every strategy plugin, generic over its hyperparameters ``P``.

    A strategy names its hyperparameter dataclass once, as the type argument of its base:
    ``class EWC(AnchorStrategy[EWCParams])`` sets ``EWC.Params`` to ``EWCParams`` and types
    ``self.params`` and :meth:`check_config`'s ``params`` as ``EWCParams``; a strategy without
    hyperparameters subclasses ``Strategy[NoParams]``. Subclasses override the hooks they need,
    each marked with ``typing_extensions.override`` (mypy checks it). Every hook has a default
    (most do nothing), so a strategy that overrides none is plain fine-tuning.

    Class attributes:
        name: registry name (``conf/strategy/<name>.yaml`` holds its description and search
            ranges).
        Params: dataclass of its hyperparameters, taken from the type argument (a subclass of
            the unparametrised ``Strategy`` may set it itself; set both and they must agree).
        keeps_raw_data: True when it keeps raw training samples across task boundaries.
        scenarios: the scenarios it can work in.
        role: what it stands for in a comparison.
        landmark: a landmark of the field (a comparison draws its loss-landscape plane).

    Attributes:
        params: its hyperparameters, an instance of ``Params`` (:func:`parse_params`).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[DataclassInstance]] = NoParams
    #: True when the strategy keeps raw training samples across task boundaries.
    keeps_raw_data: ClassVar[bool] = False
    #: Scenarios the strategy can work in.
    scenarios: ClassVar[tuple[str, ...]] = ("task", "domain", "class")
    role: ClassVar[Role] = Role.METHOD
    #: A landmark of the field: a comparison draws its loss-landscape plane beside the best
    #: method's, so readers see where a classic lands.
    landmark: ClassVar[bool] = False

    @override
    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Take ``Params`` from the type argument of the strategy base (``Strategy[X]``, or an
        intermediate base such as ``AnchorStrategy[X]``).

        Raises:
            TypeError: the type argument is not a dataclass, or ``Params`` set on the class
                disagrees with it.
        """
        super().__init_subclass__(**kwargs)
        given = params_argument(cls)
        if given is None:
            return
        declared = cls.__dict__.get("Params")
        if declared is not None and declared is not given:
            raise TypeError(
                f"{cls.__name__}: Params = {declared.__name__} but its base says {given.__name__}"
            )
        cls.Params = given

    def __init__(self, params: P) -> None:
        self.params: P = params

    @classmethod
    def check_config(cls, params: P, cfg: ExperimentConfig) -> None:
        """Refuse, before training, a setting this strategy cannot work in.

        Called by :func:`resolve`, once per composed experiment, before any strategy is built
        or anything trains (so a comparison skips the strategy with the reason, and a single
        run stops with exit 2). An override calls ``super().check_config(params, cfg)`` first
        (the scenario and retention rules), then checks its own values.

        Args:
            params: its hyperparameters, parsed (defaults filled in, types checked).
            cfg: the whole experiment.

        Raises:
            StrategyRefused: the setting (retention, scenario, streaming) rules it out, or
                another strategy of the config overrides one of its :data:`EXCLUSIVE_HOOKS`.
            ConfigError: a hyperparameter value it cannot work with (one line).
        """
        if cls.keeps_raw_data and cfg.retention == "none":
            raise StrategyRefused(
                f"strategy: '{cls.name}' keeps raw training samples, which retention=none forbids"
            )
        if cfg.scenario not in cls.scenarios:
            raise StrategyRefused(
                f"strategy: '{cls.name}' does not work in the {cfg.scenario}-incremental "
                f"scenario (it works in: {', '.join(cls.scenarios)})"
            )
        for hook in (h for h in EXCLUSIVE_HOOKS if overrides(cls, h)):
            rivals = [n for n in cfg.strategy if n != cls.name and overrides(REGISTRY[n], hook)]
            if rivals:
                raise StrategyRefused(
                    f"strategy: '{cls.name}' and '{rivals[0]}' both replace the module's {hook}; "
                    "a config combines at most one of them"
                )

    def retention(self) -> Retention:
        """What this strategy keeps now: one entry of the retention ledger.

        Called after each task's training and evaluation, for the task's record.

        Returns:
            The raw samples it holds (per task name) and their bytes, and the bytes of its
            derived state. The default counts no raw samples and every tensor of
            :meth:`state_dict` as derived state; a strategy that keeps raw samples overrides it.
        """
        return Retention(state_bytes=tensor_bytes(self.state_dict()))

    def erase(self, task: int, ids: torch.Tensor) -> int:
        """Forget stored samples (the right to erasure).

        Called by ``make erase`` on the strategies of each of the run's checkpoints.

        Args:
            task: index of the task the samples belong to.
            ids: their sample ids (1-D, int64).

        Returns:
            How many samples were removed (ids it does not hold are ignored). The default, for
            a strategy that keeps none, removes none: 0.
        """
        return 0

    def stored_ids(self, task: int) -> torch.Tensor | None:
        """The ids of a task's samples this strategy holds now (what :meth:`erase` can remove).

        Called by ``make erase`` to count and list what each of the run's checkpoints holds.

        Returns:
            The ids (1-D, int64; empty when it holds none of that task's), or ``None`` (the
            default) for a strategy that keeps no samples in its state at all.
        """
        return None

    def on_task_start(self, ctx: TaskContext) -> None:
        """Enter task ``ctx.index``.

        Called before the task's Trainer is built, after the head has made room for the task:
        add parameters or hooks here (the optimizer is created afterwards), move state to
        ``ctx.device``, or change what the task trains on (``ctx.datamodule``).

        Returns:
            Nothing: it acts on its own state or on ``ctx``.
        """

    def transform_batch(self, batch: Batch, ctx: TaskContext) -> Batch:
        """Choose the batch a training step trains on.

        Called on every training batch, before the forward pass, in list order (each strategy
        gets the previous one's result).

        Args:
            batch: the training batch, on the training device.
            ctx: the current task.

        Returns:
            The batch to train on: ``batch`` itself (the default), or a new one (replay appends
            stored samples). Never ``None``.
        """
        return batch

    def task_loss(self, model: nn.Module, batch: Batch, logits: Tensor) -> Tensor | None:
        """The loss of this step's batch, in place of the module's cross-entropy.

        Called on every training step, after the forward pass and before :meth:`penalty`, in
        list order until one returns a value: the task loss (logged as ``train/loss``).

        Args: as :meth:`penalty`'s.

        Returns:
            A differentiable scalar, or ``None`` (the default): ``cross_entropy(logits, y)``.
        """
        return None

    def penalty(self, model: nn.Module, batch: Batch, logits: Tensor) -> Tensor | None:
        """A term to add to the training loss of this step.

        Called on every training step, after the forward pass and before the backward one.

        Args:
            model: the network being trained.
            batch: the batch the step trains on (after every :meth:`transform_batch`).
            logits: ``model``'s output on ``batch.x`` (part of the autograd graph).

        Returns:
            A differentiable scalar added to the task loss (and logged as
            ``train/penalty_<name>``), or ``None`` (the default) for no penalty this step
            (e.g. before the first task has ended).
        """
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Act on the gradients of this step.

        Called after ``loss.backward()``, before the optimizer step: the ``.grad`` of
        ``model``'s parameters hold the gradient of the task loss plus every penalty, and may
        be changed in place (gradient projection) or read (importance accumulation).

        Returns:
            Nothing: it acts on the gradients or its own state.
        """

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Act on the update of this step.

        Called after the optimizer step of each training batch: ``model``'s parameters hold
        the updated weights (path integrals need the update; a projection may correct it).

        Returns:
            Nothing: it acts on the weights or its own state.
        """

    def on_task_end(self, ctx: TaskContext) -> None:
        """Leave task ``ctx.index``.

        Called after the task's training, once the weights are checked finite, with the model
        on the evaluation device and before any task is evaluated: compute importances,
        anchors, old-model copies, buffer insertions here.

        Returns:
            Nothing: it acts on its own state.
        """

    def predict(self, model: nn.Module, x: Tensor, task: Tensor, logits: Tensor) -> Tensor | None:
        """The scores a prediction is read from (its argmax), in place of the logits.

        Called, in eval mode without gradients, in list order until one returns a value, on
        every batch whose accuracy the module measures: after each task, in validation, and
        the correctness a membership audit reads. Losses stay the network's, on the logits
        (validation loss, the audit's losses, the loss landscape), as does the training
        accuracy.

        Args:
            model: the network.
            x: the batch's inputs.
            task: each sample's task index.
            logits: ``model``'s output on ``x`` (batch x active outputs).

        Returns:
            Scores shaped as ``logits``, or ``None`` (the default): the logits.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """The state to store in each checkpoint.

        Called when a task's checkpoint is written (and rewritten by ``make erase``), and
        after each task of a distributed run to check that the processes hold the same state.

        Returns:
            Tensors, numbers, strings, lists and dicts of them (what ``torch.save`` writes
            with ``weights_only`` loading); ``{}`` (the default) for a strategy with no state.
            Its tensors also count as derived state in :meth:`retention`'s default.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Called on a freshly built strategy (a resumed run, a checkpoint reloaded), before any
        other hook; the tensors are on the CPU whatever device they were saved from.

        Returns:
            Nothing: it replaces its own state.
        """


#: Hooks whose value replaces what the module computes: one strategy of a config overrides each.
EXCLUSIVE_HOOKS = ("task_loss", "predict")


def overrides(cls: type[Strategy[Any]], hook: str) -> bool:
    """Whether a strategy class overrides one of :class:`Strategy`'s hooks."""
    return getattr(cls, hook) is not getattr(Strategy, hook)


def params_argument(cls: type) -> type[DataclassInstance] | None:
    """The hyperparameter dataclass a strategy class names as the type argument of its strategy
    base (``class EWC(AnchorStrategy[EWCParams])`` -> ``EWCParams``); ``None`` when its bases
    are unparametrised or parametrised by a type variable (an intermediate generic base).

    Raises:
        TypeError: the type argument is a class that is not a dataclass.
    """
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if not (isinstance(origin, type) and issubclass(origin, Strategy)):
            continue
        for arg in get_args(base):
            if isinstance(arg, type):
                if not is_dataclass(arg):
                    raise TypeError(f"{cls.__name__}: {arg.__name__} is not a dataclass")
                return arg
    return None


#: Every strategy by name. Each holds its own ``Params`` type (``Strategy[Any]``: the registry is
#: where the types meet the YAML; :func:`parse_params` checks each value against ``Params``).
REGISTRY: dict[str, type[Strategy[Any]]] = {}
S = TypeVar("S", bound=type[Strategy[Any]])


def register(cls: S) -> S:
    """Class decorator: make a strategy available by its ``name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"strategy name {cls.name!r} is empty or already registered")
    REGISTRY[cls.name] = cls
    return cls
