"""L2 regularisation towards the previous task's weights (the uniform-importance baseline of
Kirkpatrick et al. 2017, Fig. 2A)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from typing_extensions import override

from pipeline.strategies._anchor import AnchorStrategy, require, snapshot, trainable
from pipeline.strategies.base import TaskContext, register

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig


@dataclass
class L2Params:
    """Hyperparameters of L2.

    Attributes:
        lam: weight of the penalty ``lam * sum_i (theta_i - theta*_i)^2`` (no 1/2). On
            quick_forgetting (validation MNIST / Fashion-MNIST): 0.1 gives 91.2 / 74.9; 1 gives
            about 95 / 55 (a third of the second task learned).
    """

    lam: float = 0.1


@register
class L2(AnchorStrategy[L2Params]):
    """Pull every weight to its value after the previous task with the same strength:

        penalty = lam * sum_i (theta_i - theta*_i)^2,

    ``theta*`` the weights after the last task that ended. EWC with the Fisher replaced by 1
    everywhere: the baseline that shows what a per-weight importance buys. Keeps one copy of
    the weights (no importance tensor is stored).
    """

    name = "l2"

    @classmethod
    @override
    def check_config(cls, params: L2Params, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        require(params.lam >= 0, cls.name, "lam", f"must be >= 0, got {params.lam}")

    @property
    @override
    def scale(self) -> float:
        return float(self.params.lam)

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        """Anchor at the weights the task ended with."""
        self.quad.set(None, snapshot(trainable(ctx.model)))
        self.tasks_seen += 1
