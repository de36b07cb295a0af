"""Online EWC (Schwarz et al. 2018, "Progress & Compress: A scalable framework for continual
learning", ICML)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from typing_extensions import override

from pipeline.strategies._anchor import AnchorStrategy, require, snapshot, trainable
from pipeline.strategies.base import TaskContext, register
from pipeline.strategies.ewc import EWCParams, check_fisher_params, diagonal_fisher

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig


@dataclass
class OnlineEWCParams:
    """Hyperparameters of online EWC.

    Attributes:
        lam: weight of the penalty ``lam/2 * sum_i F_i (theta_i - theta*_i)^2`` (1/2 inside).
        gamma: decay of the running Fisher, in (0, 1]; 1 sums the tasks' Fishers.
        fisher_samples: training samples of each task the Fisher is estimated on (its cost and
            error: :class:`pipeline.strategies.ewc.EWCParams`).
        fisher_labels: ``true`` or ``predicted``: the class each sample's Fisher term takes
            (:func:`pipeline.strategies.ewc.diagonal_fisher`).
    """

    lam: float = 1000.0
    gamma: float = 1.0
    fisher_samples: int = EWCParams.fisher_samples  # one default for both (see EWCParams)
    fisher_labels: str = EWCParams.fisher_labels


@register
class OnlineEWC(AnchorStrategy[OnlineEWCParams]):
    """Online EWC: one running Fisher and one anchor, whatever the number of tasks.

    At the end of task ``t``: ``F <- gamma * F + F_t`` (``F_t`` the empirical Fisher of the task,
    see :func:`pipeline.strategies.ewc.empirical_fisher`) and ``theta* <- theta`` (the weights
    after the task). While learning the next tasks:

        penalty = lam/2 * sum_i F_i (theta_i - theta*_i)^2.

    Schwarz et al. write the penalty with ``gamma * F``; that is this one with ``lam * gamma``.
    Unlike EWC's multi-penalty form, the older tasks are pulled towards the latest weights.
    """

    name = "online_ewc"

    @classmethod
    @override
    def check_config(cls, params: OnlineEWCParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        check_fisher_params(cls.name, params)
        require(0 < params.gamma <= 1, cls.name, "gamma", f"must be in (0, 1], got {params.gamma}")

    @property
    @override
    def scale(self) -> float:
        return self.params.lam / 2.0

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        """Decay the running Fisher, add this task's, re-anchor at the current weights."""
        model = ctx.model
        p = self.params
        fisher = diagonal_fisher(model, ctx, p.fisher_samples, p.fisher_labels)
        old = self.quad.importance
        if old is not None:
            gamma = self.params.gamma
            fisher = {n: gamma * old[n].to(f) + f for n, f in fisher.items()}
        self.quad.set(fisher, snapshot(trainable(model)))
        self.tasks_seen += 1
