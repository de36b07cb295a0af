"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic
Intelligence", ICML)."""

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


@dataclass
class SIParams:
    """Hyperparameters of SI.

    Attributes:
        c: strength of the penalty ``c * sum_i Omega_i (theta_i - theta*_i)^2`` (no 1/2). On
            quick_forgetting (validation MNIST / Fashion-MNIST): 1 gives 55.4 / 84.0, 10 gives
            58.3 / 81.9.
        xi: damping of the importance's denominator ``(Delta theta)^2 + xi`` (> 0); 1e-3 is
            Zenke et al.'s Split MNIST value.
        gradient: which gradient the path integral follows. ``task`` (the default): the task
            loss's, SI's own penalty's taken out, as Zenke et al.'s code (ganguli-lab/pathint,
            ``unreg_grads``); ``total``: the total loss's, SI's penalty in it, as van de Ven
            and Tolias's code (GMvandeVen/continual-learning).
        clamp: clamp each task's path integral at 0 (Zenke et al.'s ``relu``, the default);
            False: keep negative contributions, as van de Ven and Tolias's code does.
    """

    c: float = 1.0
    xi: float = 1e-3
    gradient: str = "task"
    clamp: bool = True


@register
class SI(AnchorStrategy[SIParams]):
    """Synaptic Intelligence: importance from each weight's contribution to the drop in loss
    along the training trajectory, computed online while the task trains.

    Every step ``k`` of task ``mu``: ``omega_i += -g_i(k) * (theta_i(k+1) - theta_i(k))``, the
    path integral of the gradient along the actual (Adam, clipped...) update. At the end of the
    task, with ``Delta_i = theta_i(end) - theta_i(start)``:

        Omega_i += max(omega_i, 0) / (Delta_i^2 + xi),    theta* <- theta(end),

    and while learning later tasks ``penalty = c * sum_i Omega_i (theta_i - theta*_i)^2``.

    Which gradient: the hooks see the gradient of the total loss (task loss + every penalty).
    SI's own penalty gradient ``2 c Omega (theta - theta*)`` is known in closed form, so it is
    subtracted in ``after_backward``: ``g`` is the gradient of the task loss, as in Zenke's
    reference code (``unreg_grads`` in ganguli-lab/pathint), so the pull back to the old anchor
    is not credited as importance for the new task. (Several re-implementations use the total
    gradient; that inflates the importance of weights the penalty holds.) Penalties of other
    strategies listed with SI stay in ``g``. ``omega`` is clamped at 0 per task, as the
    reference code clamps (``relu``), so importances are never negative. Under 16-bit mixed
    precision the gradient seen here is loss-scaled: use 32-bit or bf16 with SI.
    """

    name = "si"

    def __init__(self, params: SIParams) -> None:
        super().__init__(params)
        # Per-task accumulators, in the order of ``self._names`` (None between tasks).
        self._names: list[str] = []
        self._start: list[Tensor] | None = None
        self._prev: list[Tensor] | None = None
        self._omega: list[Tensor] | None = None
        self._grad: list[Tensor] | None = None

    @classmethod
    @override
    def check_config(cls, params: SIParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        require(params.c >= 0, cls.name, "c", f"must be >= 0, got {params.c}")
        require(params.xi > 0, cls.name, "xi", f"must be > 0, got {params.xi}")
        require(
            params.gradient in ("task", "total"),
            cls.name,
            "gradient",
            f"must be task or total, got {params.gradient!r}",
        )

    @property
    @override
    def scale(self) -> float:
        return float(self.params.c)

    def _params(self, model: nn.Module) -> list[Tensor]:
        """The tracked parameters, with the accumulators moved to their device if needed (a
        mid-task state restored from a CPU checkpoint, trained on a GPU)."""
        named = dict(model.named_parameters())
        params: list[Tensor] = [named[n] for n in self._names]
        if self._prev is not None and self._prev[0].device != params[0].device:
            device = params[0].device
            for acc in (self._start, self._prev, self._omega):
                if acc is not None:
                    acc[:] = [t.to(device) for t in acc]
        return params

    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        """Start a new path integral at the current weights."""
        params = trainable(ctx.model)
        self._names = list(params)
        if not self.quad.empty and list(self.quad.anchor) != self._names:
            raise RuntimeError(
                f"si: the model's trainable parameters changed ({sorted(self.quad.anchor)} "
                f"-> {sorted(self._names)})"
            )
        self._start = list(snapshot(params).values())
        self._prev = [t.clone() for t in self._start]
        self._omega = [torch.zeros_like(t) for t in self._start]
        self._grad = None

    @override
    def after_backward(self, model: nn.Module) -> None:
        """Keep this step's task-loss gradient (total gradient minus SI's own penalty's)."""
        if self._omega is None:
            return
        params = self._params(model)
        with torch.no_grad():
            grad = [
                p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for p in params
            ]
            if not self.quad.empty and self.params.gradient == "task":
                torch._foreach_sub_(grad, self.quad.gradient(model, self.scale))
        self._grad = grad

    @override
    def after_optimizer_step(self, model: nn.Module) -> None:
        """``omega -= g * (theta_new - theta_old)``; remember ``theta_new``."""
        if self._omega is None or self._prev is None or self._grad is None:
            return
        with torch.no_grad():
            params = [p.detach() for p in self._params(model)]
            delta = torch._foreach_sub(params, self._prev)
            torch._foreach_addcmul_(self._omega, self._grad, delta, value=-1.0)
            torch._foreach_copy_(self._prev, params)
        self._grad = None

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        """Turn the path integral into importance; anchor at the weights the task ended with."""
        if self._omega is None or self._start is None:
            raise RuntimeError("si: on_task_end without on_task_start")
        model = ctx.model
        params = trainable(model)
        old = self.quad.importance
        importance: dict[str, Tensor] = {}
        with torch.no_grad():
            for name, start, omega in zip(self._names, self._start, self._omega, strict=True):
                theta = params[name].detach()
                omega = omega.to(theta).clamp(min=0.0) if self.params.clamp else omega.to(theta)
                omega_t = omega / ((theta - start.to(theta)).square() + self.params.xi)
                importance[name] = omega_t if old is None else old[name].to(theta) + omega_t
        self.quad.set(importance, snapshot(params))
        self._start = self._prev = self._omega = self._grad = None
        self.tasks_seen += 1

    @override
    def state_dict(self) -> dict[str, Any]:
        """Importance and anchor; mid-task also the path integral's accumulators."""
        state = super().state_dict()
        if self._omega is not None and self._start is not None and self._prev is not None:
            state["path"] = {
                "names": list(self._names),
                "omega": dict(zip(self._names, self._omega, strict=True)),
                "start": dict(zip(self._names, self._start, strict=True)),
                "prev": dict(zip(self._names, self._prev, strict=True)),
            }
        return state

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        path = state.get("path")
        self._start = self._prev = self._omega = self._grad = None
        if path:
            self._names = list(path["names"])
            self._omega = [path["omega"][n].clone() for n in self._names]
            self._start = [path["start"][n].clone() for n in self._names]
            self._prev = [path["prev"][n].clone() for n in self._names]
