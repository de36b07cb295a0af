"""Riemannian Walk (Chaudhry, Dokania, Ajanthan & Torr 2018, "Riemannian Walk for Incremental
Learning: Understanding Forgetting and Intransigence", ECCV)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from pipeline.strategies._anchor import AnchorStrategy, require, snapshot, trainable
from pipeline.strategies.base import TaskContext, register

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig

#: How the Fisher and the scores are brought to one scale before they are added (the
#: ``normalise`` key of :class:`RWalkParams`).
NORMALISATIONS = ("max", "minmax", "none")


@dataclass
class RWalkParams:
    """Hyperparameters of RWalk.

    The defaults of ``lam``, ``alpha`` and ``fisher_update_after`` are those of
    ContinualAI/continual-learning-baselines for Split MNIST task-incremental
    (``experiments/split_mnist/rwalk.py``: ``ewc_lambda=0.1, ewc_alpha=0.9, delta_t=10``, with
    Avalanche's ``RWalkPlugin``, whose formulas these are).

    Attributes:
        lam: weight of the penalty ``lam * sum_i (F_i + s_i) (theta_i - theta*_i)^2`` (no
            1/2, as in the paper's objective and both references); 0.1 with the max normalisation
            below, as the baselines run it.
        alpha: weight of the newest gradients in the Fisher's moving average (EWC++):
            ``F <- (1 - alpha) F + alpha F_window``; 0.9 is the authors' code's
            (``FISHER_EMA_DECAY``) and the baselines' value.
        fisher_update_after: the paper's ``Delta t``: steps per window; the Fisher is updated
            and a window's path score is taken every this many steps. 10 is the authors' MNIST
            value (``FISHER_UPDATE_AFTER``; 50 on CIFAR) and the baselines'.
        eps: the ``epsilon`` of the score's denominator ``1/2 F dtheta^2 + epsilon`` (> 0). The
            paper names it without a value; 1e-3 is the authors' code's (``PARAM_XI_STEP``,
            the same constant as their path integral's damping). The references differ:
            Avalanche uses float32's machine epsilon (1.2e-7), FACIL a damping of 0.1.
        normalise: how ``F`` and ``s`` are rescaled before they are added. The references
            differ: ``max`` divides each by its largest value over all parameters (Avalanche,
            "normalize terms in [0,1] interval, as suggested in the paper"), ``minmax`` maps
            each to [0, 1] by its smallest and largest (the authors' code), ``none`` adds them
            as they are (FACIL). ``max`` is the default: it gives the [0, 1] range the paper
            asks for, keeps an unimportant weight at 0, and is what ``lam = 0.1`` was tuned
            with.
    """

    lam: float = 0.1
    alpha: float = 0.9
    fisher_update_after: int = 10
    eps: float = 1e-3
    normalise: str = "max"


def rescaled(values: list[Tensor], how: str) -> list[Tensor]:
    """``values`` (one tensor per parameter) brought to [0, 1] jointly over all parameters.

    ``max``: ``v / max(v)``; ``minmax``: ``(v - min(v)) / (max(v) - min(v))``; ``none``: a copy.
    A set that is all zero (or, for ``minmax``, all equal) becomes all zero, not NaN. Computed on
    the tensors' device, without a host synchronisation.
    """
    if how == "none":
        return [v.clone() for v in values]
    top = torch.stack([v.max() for v in values]).max()
    low = torch.stack([v.min() for v in values]).min() if how == "minmax" else top.new_zeros(())
    span = (top - low).clamp_min(torch.finfo(top.dtype).tiny)
    return [(v - low) / span for v in values]


@register
class RWalk(AnchorStrategy[RWalkParams]):
    """RWalk: a quadratic pull to the last task's weights, weighted per parameter by the sum of
    an online Fisher (EWC++) and an optimisation-path importance score (a KL-divergence-scaled
    path integral, like SI's).

    While a task trains, every step ``k`` (with ``g`` the gradient of the task loss, i.e. the
    total gradient minus RWalk's own penalty's, and ``dtheta(k)`` the step's update) adds
    ``-g * dtheta(k)`` (the first-order change of the loss it caused) to the window's loss
    change ``dL`` and ``g^2`` to the window's squared gradients. Every ``Delta t`` steps (a
    window ending at ``theta``, begun at ``theta_0``), with ``F`` the running Fisher at the
    window's start (for the very first window of a run, the window's own mean ``g^2``):

        s_task += max(dL / (1/2 F (theta - theta_0)^2 + eps), 0)     (path score)
        F <- (1 - alpha) F + alpha * mean(g^2 over the window)        (EWC++)

    At the end of each task (a last, shorter window included), the scores are averaged with
    the previous tasks' (``s <- (s + s_task) / 2``; the first task's is ``s_task``) and

        penalty = lam * sum_i (F_i + s_i) (theta_i - theta*_i)^2,     theta* <- theta(end)

    with ``F`` and ``s`` rescaled (``normalise``). ``F`` is not reset between tasks: EWC++ keeps
    one moving average over the whole run.

    Where the references (the authors' code in facebookresearch/agem ``model/model.py``,
    Avalanche's ``RWalkPlugin``) differ besides the keys of :class:`RWalkParams`, the paper is
    followed: its 1/2 in the denominator is kept (the authors' code drops it: a factor 2 the
    normalisation cancels); the averaging is its assignment (the authors' ``assign_add`` gives
    ``1.5 s + 0.5 s_task``); the score divides by the Fisher at the window's start, the paper's
    ``F^t``, as the authors' code does (Avalanche's, updated every step, includes the window; the
    authors' starts from ``F = 0``, whose first window scores ``dL / eps`` and, once rescaled,
    drowns all later ones: here the first window uses its own mean ``g^2``); the Fisher takes
    each window's mean ``g^2`` (the authors' accumulator of ``g^2`` is reset only at a task's
    end; Avalanche takes each step's); negative scores are clamped per window (the authors';
    Avalanche clamps the averaged score); the steps after the last full window count (both
    drop them; the paper sums over the whole trajectory). ``g`` is the task-loss gradient for
    both the Fisher and the score, as in both references. The Fisher is the squared mini-batch
    gradient, as in both (not per-sample): the normalisation makes its scale irrelevant. Under
    16-bit mixed precision the gradients seen here are loss-scaled: use 32-bit or bf16.
    """

    name = "rwalk"

    def __init__(self, params: RWalkParams) -> None:
        super().__init__(params)
        self._names: list[str] = []
        #: The running Fisher (EWC++) and the scores averaged over the finished tasks, in the
        #: order of ``self._names``.
        self.fisher: list[Tensor] | None = None
        self.scores: list[Tensor] | None = None
        # Per-task accumulators (None between tasks): the task's score, the window's loss
        # change and squared gradients, the window's start, the last weights, the last gradient.
        self._score: list[Tensor] | None = None
        self._loss: list[Tensor] = []
        self._sq: list[Tensor] = []
        self._start: list[Tensor] = []
        self._prev: list[Tensor] = []
        self._grad: list[Tensor] | None = None
        self._steps = 0  # steps in the current window

    @classmethod
    @override
    def check_config(cls, params: RWalkParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        require(params.lam >= 0, cls.name, "lam", f"must be >= 0, got {params.lam}")
        require(0 < params.alpha <= 1, cls.name, "alpha", f"must be in (0, 1], got {params.alpha}")
        require(
            params.fisher_update_after >= 1,
            cls.name,
            "fisher_update_after",
            f"must be >= 1, got {params.fisher_update_after}",
        )
        require(params.eps > 0, cls.name, "eps", f"must be > 0, got {params.eps}")
        require(
            params.normalise in NORMALISATIONS,
            cls.name,
            "normalise",
            f"must be one of {', '.join(NORMALISATIONS)}, got '{params.normalise}'",
        )

    @property
    @override
    def scale(self) -> float:
        return float(self.params.lam)

    def _params(self, model: nn.Module) -> list[Tensor]:
        """The tracked parameters, with the state moved to their device if needed (restored
        from a CPU checkpoint, trained on a GPU)."""
        named = dict(model.named_parameters())
        params: list[Tensor] = [named[n] for n in self._names]
        device = params[0].device
        for group in ("fisher", "scores", "_score", "_loss", "_sq", "_start", "_prev"):
            tensors = getattr(self, group)
            if tensors and tensors[0].device != device:
                setattr(self, group, [t.to(device) for t in tensors])
        return params

    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        """Start the task's score and the first window at the current weights."""
        params = trainable(ctx.model)
        names = list(params)
        if self.fisher is not None and names != self._names:
            raise RuntimeError(
                f"{self.name}: the model's trainable parameters changed ({sorted(self._names)} "
                f"-> {sorted(names)})"
            )
        self._names = names
        self._start = list(snapshot(params).values())
        self._prev = [t.clone() for t in self._start]
        self._score = [torch.zeros_like(t) for t in self._start]
        self._loss = [torch.zeros_like(t) for t in self._start]
        self._sq = [torch.zeros_like(t) for t in self._start]
        self._grad, self._steps = None, 0
        self._params(ctx.model)

    @override
    def after_backward(self, model: nn.Module) -> None:
        """Keep the task-loss gradient (the total minus RWalk's own penalty's); add its
        square to the window's."""
        if self._score is None:
            return
        params = self._params(model)
        with torch.no_grad():
            grad = [
                p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for p in params
            ]
            if not self.quad.empty:
                torch._foreach_sub_(grad, self.quad.gradient(model, self.scale))
            torch._foreach_addcmul_(self._sq, grad, grad)
        self._grad = grad

    @override
    def after_optimizer_step(self, model: nn.Module) -> None:
        """``dL -= g * (theta_new - theta_old)``; close the window every ``Delta t`` steps."""
        if self._score is None or self._grad is None:
            return
        with torch.no_grad():
            params = [p.detach() for p in self._params(model)]
            delta = torch._foreach_sub(params, self._prev)
            torch._foreach_addcmul_(self._loss, self._grad, delta, value=-1.0)
            torch._foreach_copy_(self._prev, params)
        self._grad = None
        self._steps += 1
        if self._steps == self.params.fisher_update_after:
            self._close_window()

    def _close_window(self) -> None:
        """Score the window with the Fisher at its start, then update the Fisher with it."""
        assert self._score is not None
        with torch.no_grad():
            window = [s / self._steps for s in self._sq]
            fisher = self.fisher if self.fisher is not None else window
            for score, loss, f, theta, start in zip(
                self._score, self._loss, fisher, self._prev, self._start, strict=True
            ):
                distance = 0.5 * f * (theta - start).square() + self.params.eps
                score.add_((loss / distance).clamp_(min=0.0))
            a = self.params.alpha
            self.fisher = (
                window
                if self.fisher is None
                else [(1 - a) * f + a * w for f, w in zip(self.fisher, window, strict=True)]
            )
            for t in (*self._loss, *self._sq):
                t.zero_()
            torch._foreach_copy_(self._start, self._prev)
        self._steps = 0

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        """Average the task's score into the scores; importance ``F + s``, rescaled; anchor at
        the weights the task ended with."""
        if self._score is None:
            raise RuntimeError(f"{self.name}: on_task_end without on_task_start")
        params = trainable(ctx.model)
        self._params(ctx.model)
        if self._steps:
            self._close_window()  # the steps after the last full window count too
        assert self.fisher is not None
        with torch.no_grad():
            self.scores = (
                self._score
                if self.scores is None
                else [(s + n) / 2 for s, n in zip(self.scores, self._score, strict=True)]
            )
            how = self.params.normalise
            importance = torch._foreach_add(rescaled(self.fisher, how), rescaled(self.scores, how))
        self.quad.set(dict(zip(self._names, importance, strict=True)), snapshot(params))
        self._score, self._grad = None, None
        self._loss, self._sq, self._start, self._prev = [], [], [], []
        self._steps = 0
        self.tasks_seen += 1

    @override
    def state_dict(self) -> dict[str, Any]:
        """Importance and anchor, the running Fisher and the averaged scores; mid-task also the
        task's score and the open window."""
        state = super().state_dict()
        state["names"] = list(self._names)
        for key, tensors in (("fisher", self.fisher), ("scores", self.scores)):
            if tensors is not None:
                state[key] = dict(zip(self._names, tensors, strict=True))
        if self._score is not None:
            groups = {"score": self._score, "loss": self._loss, "sq": self._sq}
            groups |= {"start": self._start, "prev": self._prev}
            state["walk"] = {k: dict(zip(self._names, v, strict=True)) for k, v in groups.items()}
            state["walk"]["steps"] = self._steps
        return state

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._names = [str(n) for n in state.get("names", [])]

        def tensors(group: dict[str, Tensor]) -> list[Tensor]:
            return [group[n].clone() for n in self._names]

        self.fisher = tensors(state["fisher"]) if "fisher" in state else None
        self.scores = tensors(state["scores"]) if "scores" in state else None
        walk = state.get("walk")
        self._score, self._grad = (tensors(walk["score"]) if walk else None), None
        self._loss = tensors(walk["loss"]) if walk else []
        self._sq = tensors(walk["sq"]) if walk else []
        self._start = tensors(walk["start"]) if walk else []
        self._prev = tensors(walk["prev"]) if walk else []
        self._steps = int(walk["steps"]) if walk else 0
