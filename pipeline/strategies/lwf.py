"""Learning without Forgetting: distil the previous model's outputs on the current data.

Li & Hoiem 2016, "Learning without Forgetting" (ECCV 2016; TPAMI 2018), with Hinton et al.'s
temperature-scaled distillation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from pipeline.config.schema import ExperimentConfig
from pipeline.data.tasks import Batch
from pipeline.errors import ConfigError
from pipeline.models import Classifier, IncrementalHead, MultiHead
from pipeline.strategies._frozen import distillation, frozen_copy
from pipeline.strategies.base import Strategy, TaskContext, register


@dataclass
class LwFParams:
    """Hyperparameters of LwF.

    The penalty carries Hinton's ``T^2`` factor, which the paper's loss (and Avalanche's) does
    not: ``alpha * T^2`` is the paper's ``lambda_o``. The defaults, ``alpha = 0.25`` at
    ``T = 2``, are the paper's ``lambda_o = 1``, and the same strength as Avalanche's defaults
    (``alpha = 1``, ``T = 2``, no ``T^2``) that the reference figures used.

    Attributes:
        alpha: weight of the distillation term.
        temperature: softmax temperature ``T`` of the distillation.
        weighting: ``fixed`` (the default, the paper's): ``CE + alpha * sum_h KD_h`` over the
            old heads ``h``; ``tasks``: van de Ven and Tolias's code, ``(1/t) CE + (1 - 1/t)
            mean_h KD_h`` at the ``t``-th task, written here as ``t`` times it,
            ``CE + alpha (t - 1) mean_h KD_h`` (``alpha = 1`` is theirs; Adam's steps do not
            see the factor ``t``, up to its epsilon).
        class_outputs: what the class scenario distils. ``old`` (the default; Li and Hoiem's
            and Avalanche's form): the current model's outputs of the old classes only, a
            softmax over those. ``seen`` (van de Ven and Tolias's code): every output seen so
            far, the current task's classes too, against the old model's probabilities padded
            with 0 on them, which also pulls the new classes' probability down on the current
            data. The other scenarios have no new outputs and ignore it.
        outputs: how the distillation adds up over the outputs it compares. ``sum`` (the
            default): the KL divergence, Hinton et al.'s and Li and Hoiem's form; ``mean``:
            divided by their number, as van de Ven and Tolias's 2019 code averages its
            ``loss_fn_kd`` over the batch and the outputs (2 in the domain scenario, every
            output seen so far in the class scenario).
    """

    alpha: float = 0.25
    temperature: float = 2.0
    weighting: str = "fixed"
    class_outputs: str = "old"
    outputs: str = "sum"


@register
class LwF(Strategy[LwFParams]):
    """LwF: keep a frozen copy of the model from the end of the previous task and penalise the
    current model for moving away from its outputs on the current batch::

        penalty = alpha * sum_h T^2 * KL(softmax(h_old(x) / T) || softmax(h_new(x) / T))

    summed over the old heads ``h``.

    "Old heads" depend on the scenario:

    - domain-incremental: the shared head, all outputs;
    - class-incremental: the outputs of the classes seen before this task,
      ``new_logits[:, :old_num_active]`` against the old model's (its head stopped there), or
      with ``class_outputs=seen`` every output seen so far (the old model's probabilities
      padded with 0);
    - task-incremental: each previous task's own head, evaluated on the current batch as if it
      were that task's data (both models with task id ``s`` for each ``s`` < current task),
      one term per old task as in the paper. The current model's features are the ones its
      training forward already computed (caught by a forward hook on the backbone), so only
      the heads run again.

    No samples are kept; the old copy is derived state and counts in ``state_bytes``.
    """

    name = "lwf"

    def __init__(self, params: LwFParams) -> None:
        super().__init__(params)
        self.old: Classifier | None = None
        self.old_state: dict[str, Tensor] | None = None  # restored, awaiting a model to fill
        self.old_tasks = 0  # tasks the old copy was trained on
        self.old_active = 0  # its head's active outputs (class-incremental)
        self._hook: RemovableHandle | None = None
        self._features: tuple[Tensor, Tensor] | None = None  # (backbone input, output)

    @classmethod
    @override
    def check_config(cls, params: LwFParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        if params.alpha < 0:
            raise ConfigError(f"strategies.lwf.alpha: must be >= 0, got {params.alpha}")
        if params.temperature <= 0:
            raise ConfigError(f"strategies.lwf.temperature: must be > 0, got {params.temperature}")
        if params.weighting not in ("fixed", "tasks"):
            raise ConfigError(
                f"strategies.lwf.weighting: must be fixed or tasks, got {params.weighting!r}"
            )
        if params.class_outputs not in ("old", "seen"):
            raise ConfigError(
                f"strategies.lwf.class_outputs: must be old or seen, got {params.class_outputs!r}"
            )
        if params.outputs not in ("sum", "mean"):
            raise ConfigError(
                f"strategies.lwf.outputs: must be sum or mean, got {params.outputs!r}"
            )

    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        model = ctx.model
        if self.old is None and self.old_state is not None:
            # Restored from a checkpoint: the architecture is the live model's.
            self.old = frozen_copy(model)
            self.old.load_state_dict(self.old_state)
            self.old_state = None
        if self.old is None:
            return
        self.old.to(ctx.device)
        if isinstance(model.head, MultiHead) and self._hook is None:
            self._hook = model.backbone.register_forward_hook(self._catch_features)

    def _catch_features(self, module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        self._features = (inputs[0], output)

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook, self._features = None, None
        model = ctx.model
        self.old = frozen_copy(model)
        self.old_tasks = ctx.index + 1
        self.old_active = model.head.num_active

    @override
    def penalty(self, model: nn.Module, batch: Batch, logits: Tensor) -> Tensor | None:
        if self.old is None:
            return None
        old, t = self.old, self.params.temperature
        mean = self.params.outputs == "mean"
        if next(old.parameters()).device != logits.device:
            old.to(logits.device)
        head = cast(Classifier, model).head
        if isinstance(head, MultiHead):
            caught, self._features = self._features, None
            if caught is not None and caught[0] is batch.x:
                features = caught[1]
            else:  # another strategy ran the model since: compute them again
                features = cast(Classifier, model).backbone(batch.x)
            old_head = cast(MultiHead, old.head)
            with torch.no_grad():
                old_features = old.backbone(batch.x)
            loss = logits.new_zeros(())
            for s in range(self.old_tasks):
                with torch.no_grad():
                    target = old_head.heads[s](old_features)
                loss = loss + distillation(head.heads[s](features), target, t, mean)
        else:
            with torch.no_grad():
                target = old(batch.x, batch.task)
            old_only = isinstance(head, IncrementalHead) and self.params.class_outputs == "old"
            new = logits[:, : self.old_active] if old_only else logits
            loss = distillation(new, target, t, mean)
        if self.params.weighting == "tasks":  # the mean over the old heads, times t - 1
            heads = self.old_tasks if isinstance(head, MultiHead) else 1
            return self.params.alpha * self.old_tasks * loss / heads
        return self.params.alpha * loss

    @override
    def state_dict(self) -> dict[str, Any]:
        weights = self.old.state_dict() if self.old is not None else self.old_state
        return {"old": weights, "old_tasks": self.old_tasks, "old_active": self.old_active}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.old, self.old_state = None, state["old"]
        self.old_tasks = int(state["old_tasks"])
        self.old_active = int(state["old_active"])
