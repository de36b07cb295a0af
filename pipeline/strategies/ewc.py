"""Elastic Weight Consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in
neural networks", PNAS 114(13))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from pipeline.strategies._anchor import (
    AnchorStrategy,
    require,
    snapshot,
    task_batches,
    trainable,
)
from pipeline.strategies._per_sample import per_sample_grad_mean
from pipeline.strategies.base import TaskContext, register

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig


def _sample_nll(logits: Tensor, target: Tensor) -> Tensor:
    """``-log p(y | x)`` of one sample (logits of shape (classes,), 0-dim target)."""
    return F.cross_entropy(logits.unsqueeze(0), target.unsqueeze(0))


def _predicted_nll(logits: Tensor, target: Tensor) -> Tensor:
    """``-log p(y_hat | x)`` of one sample, ``y_hat`` the model's own most likely class (the
    label is a constant: no gradient flows through the argmax)."""
    return F.cross_entropy(logits.unsqueeze(0), logits.argmax().unsqueeze(0))


#: How the diagonal Fisher picks each sample's class (``fisher_labels``).
FISHER_LABELS = ("true", "predicted")


def diagonal_fisher(
    model: nn.Module, ctx: TaskContext, samples: int, labels: str = "true"
) -> dict[str, Tensor]:
    """The diagonal Fisher EWC anchors to, with each sample's class taken as ``labels`` says:

    - ``true``: the training label, the empirical Fisher (:func:`empirical_fisher`);
    - ``predicted``: the model's most likely class, ``F_i = 1/N sum_n (d log p(y_hat_n | x_n)
      / d theta_i)^2``, as van de Ven and Tolias's code estimates it (its default, not
      ``--emp-fi``). A sample the model gets wrong then adds the small gradient of its
      confident guess, where the empirical Fisher adds the large one of its true label: after
      a task learned to 99%, the one percent it misses makes much of the empirical Fisher.
    """
    if labels == "predicted":
        return per_sample_grad_mean(
            model, task_batches(ctx, samples), ctx.device, _predicted_nll, "square", samples
        )
    return empirical_fisher(model, ctx, samples)


def empirical_fisher(model: nn.Module, ctx: TaskContext, samples: int) -> dict[str, Tensor]:
    """Diagonal empirical Fisher of the task that just ended, at the current weights.

    ``F_i = 1/N sum_n (d log p(y_n | x_n; theta) / d theta_i)^2`` over the first ``samples``
    training samples of ``ctx.task`` (in the split's fixed order), with the true labels ``y_n``
    and exact per-sample gradients (``torch.func`` vmap). Not the squared mini-batch gradient
    some libraries use (Avalanche), which is about ``1/batch_size`` of this once the task is
    fitted and the batch mean gradient is near zero.

    Returns:
        ``F`` per trainable parameter name, non-negative, on the model's device.
    """
    return per_sample_grad_mean(
        model, task_batches(ctx, samples), ctx.device, _sample_nll, "square", samples
    )


@dataclass
class EWCParams:
    """Hyperparameters of EWC.

    Attributes:
        lam: lambda of Kirkpatrick's loss ``L_B + sum_i lam/2 F_i (theta_i - theta*_A,i)^2``:
            the 1/2 is inside (the penalty's gradient is ``lam F (theta - theta*)``). Avalanche's
            ``ewc_lambda`` has no 1/2 and a batch-gradient Fisher: its 1e4 is of the order of
            our 1e2 (see :func:`empirical_fisher`). On quick_forgetting (validation MNIST /
            Fashion-MNIST): 1e3 gives 45.7 / 84.2, 1e4 gives 38.5 / 85.0.
        fisher_samples: training samples of each task the Fisher is estimated on: 4,000
            costs about a fifth of a training epoch of the founding CNN (2 CPU threads). Against
            the Fisher of all 54k MNIST samples, the penalty's gradient at the displacement that
            fine-tuning on Fashion-MNIST makes is off by 20% (L2) at 4,000 samples and by 14% at
            8,000 (``benchmarks/importance.py``): the effect of changing ``lam`` by that much,
            small beside the range a sweep searches.
        fisher_labels: ``true`` (the empirical Fisher, with the training labels: Kirkpatrick
            et al.'s code, Avalanche, Mammoth) or ``predicted`` (the model's own most likely
            class: van de Ven and Tolias's code); see :func:`diagonal_fisher`.
    """

    lam: float = 1000.0
    fisher_samples: int = 4000
    fisher_labels: str = "true"


class FisherParams(Protocol):
    """The hyperparameters EWC and online EWC share (:class:`EWCParams`,
    :class:`~pipeline.strategies.online_ewc.OnlineEWCParams`)."""

    lam: float
    fisher_samples: int
    fisher_labels: str


def check_fisher_params(name: str, params: FisherParams) -> None:
    """Value rules shared by EWC and online EWC (one-line ``ConfigError`` naming the key)."""
    require(params.lam >= 0, name, "lam", f"must be >= 0, got {params.lam}")
    require(
        params.fisher_samples >= 1,
        name,
        "fisher_samples",
        f"must be >= 1, got {params.fisher_samples}",
    )
    require(
        params.fisher_labels in FISHER_LABELS,
        name,
        "fisher_labels",
        f"must be one of {', '.join(FISHER_LABELS)}, got {params.fisher_labels!r}",
    )


@register
class EWC(AnchorStrategy[EWCParams]):
    """Elastic Weight Consolidation, multi-penalty form (Kirkpatrick et al. 2017).

    After each task ``t`` the diagonal empirical Fisher ``F_t`` is computed once, on the task's
    training data (:func:`empirical_fisher`), and the weights ``theta*_t`` are kept; while
    learning later tasks the loss gets

        penalty = lam/2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2,

    one quadratic per past task. The sum over tasks is stored in its equivalent summed form
    (``A = sum_t F_t``, ``mu = sum_t F_t theta*_t / A`` and a scalar constant: see
    :meth:`QuadraticAnchor.accumulate`), which has exactly the same value and gradient and
    constant memory: two tensors per parameter however many tasks have passed.
    """

    name = "ewc"
    landmark = True  # the reference regulariser of the field

    @classmethod
    @override
    def check_config(cls, params: EWCParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        check_fisher_params(cls.name, params)

    @property
    @override
    def scale(self) -> float:
        return self.params.lam / 2.0

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        """Fisher of the task just learned, anchored at the weights it ended with."""
        model = ctx.model
        p = self.params
        fisher = diagonal_fisher(model, ctx, p.fisher_samples, p.fisher_labels)
        self.quad.accumulate(fisher, snapshot(trainable(model)))
        self.tasks_seen += 1


__all__ = [
    "EWC",
    "EWCParams",
    "FisherParams",
    "check_fisher_params",
    "diagonal_fisher",
    "empirical_fisher",
]
