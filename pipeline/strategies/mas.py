"""Memory Aware Synapses (Aljundi et al. 2018, "Memory Aware Synapses: Learning what (not) to
forget", ECCV)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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


def _sq_norm(logits: Tensor, target: Tensor) -> Tensor:
    """``||f(x)||_2^2`` of one sample's output (the target is not used: MAS is unsupervised)."""
    return logits.square().sum()


def output_sensitivity(model: nn.Module, ctx: TaskContext, samples: int) -> dict[str, Tensor]:
    """MAS importance of the task that just ended, at the current weights.

    ``Omega_i = 1/N sum_n |d ||f(x_n)||_2^2 / d theta_i|`` over the first ``samples`` training
    samples of ``ctx.task``, with exact per-sample gradients (the absolute value does not
    commute with the batch mean). ``f`` is the network's output as the scenario gives it
    (logits of the sample's task head, or of the active classes); a per-task head's padding is
    a constant and contributes nothing.
    """
    return per_sample_grad_mean(
        model, task_batches(ctx, samples), ctx.device, _sq_norm, "abs", samples
    )


@dataclass
class MASParams:
    """Hyperparameters of MAS.

    Attributes:
        lam: weight of the penalty ``lam * sum_i Omega_i (theta_i - theta*_i)^2`` (no 1/2). On
            quick_forgetting (validation MNIST / Fashion-MNIST): 1 gives 26.1 / 84.6, 100 gives
            34.5 / 84.6.
        samples: training samples of each task the importance is estimated on.
    """

    lam: float = 100.0
    samples: int = 2000


@register
class MAS(AnchorStrategy[MASParams]):
    """Memory Aware Synapses.

    At the end of each task the sensitivity of the squared L2 norm of the output to each weight,
    averaged over the task's samples (:func:`output_sensitivity`), is added to the importance,
    which accumulates over tasks as in the paper (a sum, not an average), and the anchor moves to
    the weights the task ended with. While learning the next tasks:

        penalty = lam * sum_i Omega_i (theta_i - theta*_i)^2.
    """

    name = "mas"

    @classmethod
    @override
    def check_config(cls, params: MASParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        require(params.lam >= 0, cls.name, "lam", f"must be >= 0, got {params.lam}")
        require(params.samples >= 1, cls.name, "samples", f"must be >= 1, got {params.samples}")

    @property
    @override
    def scale(self) -> float:
        return float(self.params.lam)

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        """Add this task's importance; re-anchor at the current weights."""
        model = ctx.model
        omega = output_sensitivity(model, ctx, self.params.samples)
        old = self.quad.importance
        if old is not None:
            omega = {n: old[n].to(o) + o for n, o in omega.items()}
        self.quad.set(omega, snapshot(trainable(model)))
        self.tasks_seen += 1
