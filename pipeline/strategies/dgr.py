"""Deep Generative Replay: train on each batch plus a batch that a generator of the earlier
tasks' images draws and the previous model labels; with hard labels (DGR) or distilled (DGR+).

Shin et al. 2017, "Continual Learning with Deep Generative Replay" (NeurIPS 2017), as van de
Ven and Tolias 2019, "Three scenarios for continual learning" (arXiv:1904.07734), ran it on
Split MNIST in the three scenarios: their code, GMvandeVen/continual-learning (branch
``preprints``: ``train.py``, ``vae_models.py``, ``encoder.py``, ``main.py``), is what the
defaults and the details follow. The generator is :class:`pipeline.strategies._generative.VAE`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

import torch
from torch import Tensor, nn
from typing_extensions import override

from pipeline.config.schema import ExperimentConfig
from pipeline.data.tasks import Batch
from pipeline.errors import ConfigError
from pipeline.models import Classifier, MultiHead
from pipeline.strategies._frozen import frozen_copy
from pipeline.strategies._generative import (
    VAE,
    Normalisation,
    average_gradients,
    global_rows,
    optimizer_to,
    share_rows,
    target_loss,
)
from pipeline.strategies.base import Strategy, TaskContext, register


@dataclass
class DGRParams:
    """Hyperparameters of DGR; the defaults are van de Ven and Tolias's for Split MNIST
    (``main.py`` of their branch ``preprints``).

    Attributes:
        latent: dimensions of the VAE's latent (their ``--g-z-dim``, 100).
        hidden: units of each hidden layer of the VAE (their ``--g-fc-uni``, which defaults
            to the classifier's ``--fc-units``, 400).
        layers: hidden layers of the VAE's encoder, and of its decoder (their ``--g-fc-lay``,
            which defaults to the classifier's ``--fc-layers 3``: two hidden layers and the
            layer to the latent, mirrored in the decoder).
        lr: the generator's Adam learning rate (betas 0.9, 0.999). Theirs is the
            classifier's (``--lr-gen`` defaults to ``--lr``), 1e-3 on Split MNIST, which is
            this default: a strategy does not see ``optim.lr``, so change the two together.
        weighting: how a step's current and replayed batches share its loss. ``tasks``
            (theirs): ``(1/t) current + (1 - 1/t) replay`` at the ``t``-th task, for the
            classifier and the generator; the classifier's is written as ``t`` times it,
            ``CE + (t - 1) replay`` (the module's cross-entropy is the current batch's):
            Adam's steps do not see the factor ``t``, up to its epsilon (SGD's are ``t`` times
            longer). ``fixed``: Shin et al.'s constant share ``ratio`` of the current batch,
            ``r current + (1 - r) replay``, the classifier's written ``CE + (1 - r)/r replay``.
        ratio: the current batch's share ``r`` under ``fixed``; 0.5 weighs the two batches
            (of equal size) equally. Ignored under ``tasks``.
        targets: ``hard`` (DGR): a replayed sample's target is the previous model's most
            likely class, the loss a cross-entropy; ``soft`` (DGR+distill, their
            ``--distill``): the previous model's outputs softened by ``temperature``,
            distilled.
        temperature: the distillation's ``T`` (their ``--temp``, 2); the loss carries Hinton
            et al.'s ``T^2`` factor, as theirs does. Only for ``soft`` targets.
        outputs: how the distillation adds up over the outputs it compares (``soft``
            targets only), as LwF's key: ``sum`` (the default) the KL divergence; ``mean``
            divided by their number, as their 2019 ``loss_fn_kd`` averages.
        replay_size: generated samples per step, over every process; 0 (the default, van de
            Ven and Tolias's): as many as the step's batch. Avalanche's ``GenerativeReplay``
            draws its own count beside each batch (100 beside 16 in continual-learning-
            baselines). The shares of the loss are ``weighting``'s whatever the sizes.
    """

    latent: int = 100
    hidden: int = 400
    layers: int = 2
    lr: float = 1.0e-3
    weighting: str = "tasks"
    ratio: float = 0.5
    targets: str = "hard"
    temperature: float = 2.0
    outputs: str = "sum"
    replay_size: int = 0


@dataclass
class DGRDistillParams(DGRParams):
    """Hyperparameters of DGR+distill: DGR's, with soft targets (van de Ven and Tolias's
    ``--replay generative --distill``)."""

    targets: str = "soft"


#: The hyperparameters of a generative replay strategy.
GP = TypeVar("GP", bound=DGRParams)


class _Step(NamedTuple):
    """What a training step hands on to the generator's own step after it.

    Attributes:
        current: the step's batch as the classifier saw it, in pixels ([0, 1]).
        replay: the replayed batch (pixels), or None before the first task has ended.
        rows: the step's rows over every process, this process's first one, and its count.
        replay_rows: the same for the replayed batch.
    """

    current: Tensor
    replay: Tensor | None
    rows: tuple[int, int, int]
    replay_rows: tuple[int, int, int]


class GenerativeReplay(Strategy[GP]):
    """Generative replay with a separate VAE, after van de Ven and Tolias's code.

    Every training step of task ``t`` (1-based) once a task has ended:

    1. the previous generator (frozen at the last task's end) decodes ``z ~ N(0, I)`` into a
       replayed batch as large as the current one;
    2. the previous classifier (frozen with it) labels it, and the step's loss is
       ``CE(current) + scale * replay_loss`` (``scale``: ``t - 1`` under ``weighting=tasks``);
    3. after the classifier's optimizer step the generator takes its own Adam step on
       ``(1/t) VAE(current) + (1 - 1/t) VAE(replay)``, the same replayed batch: its loss, its
       backward and its optimizer never touch the classifier's gradients, and the replay is
       drawn without gradients, so the classifier's never reach the generator.

    On the first task only the generator's loss on the current batch is trained. The
    generator and its Adam state carry over from task to task, as theirs do.

    ``replay_loss`` per scenario, with the current model's outputs against the previous
    model's (``targets=hard``: a cross-entropy against their argmax; ``soft``: ``T^2`` times
    the KL divergence from their softened outputs):

    - task: each previous task's own head, the mean over those heads;
    - class: every class active now (the new task's too, as in their code: the replay also
      teaches the new outputs to stay low on old images) against the classes active at the
      previous task's end; soft targets are 0 on the new classes;
    - domain: the shared head.

    Normalisation: the VAE's loss is a Bernoulli likelihood, so it models pixels in [0, 1].
    The classifier's batches are normalised with each task's statistics unless
    ``data.normalise=false`` (van de Ven's protocol). Rather than refuse the default, the
    generator trains on the batch as the classifier saw it (augmented too), un-normalised
    with each sample's task statistics (exact), and a replayed image is normalised again:
    in the task scenario with each head's own task statistics (one forward per distinct
    statistics), in the others, where a generated image has no task, with those of the
    equal mixture of the previous tasks (what the generator models). Where the tasks share
    statistics (any split of one dataset) or are not normalised, this is exact.

    Distributed: every process draws the whole step's latents with one generator in the same
    state and keeps its rows (as rehearsal does), and the VAE's gradients, which DDP does not
    see, are averaged by hand; so every process holds the same generator and state.

    No raw samples are kept: the generator, its Adam state, the previous classifier and the
    random state are derived state (``state_bytes``).
    """

    keeps_raw_data = False

    def __init__(self, params: GP) -> None:
        super().__init__(params)
        self.seed = (torch.initial_seed() + zlib.crc32(self.name.encode())) % (1 << 62)
        self.rng = torch.Generator().manual_seed(self.seed + 1)  # latents and noise, CPU
        self.generator: VAE | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.old: Classifier | None = None
        self.old_generator: VAE | None = None
        self.old_tasks = 0  # tasks the previous copies were trained on: t - 1
        self.restored: dict[str, Any] | None = None  # loaded, awaiting the shapes and device
        self._fresh = True  # the old generator is the live one (nothing trained since)
        self._step: _Step | None = None
        self._device: torch.device | None = None
        self._norm: Normalisation | None = None  # the current task's (on_task_start)

    @classmethod
    @override
    def check_config(cls, params: GP, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        rules = [
            (params.latent >= 1, "latent", "must be >= 1"),
            (params.hidden >= 1, "hidden", "must be >= 1"),
            (params.layers >= 0, "layers", "must be >= 0"),
            (params.lr > 0, "lr", "must be > 0"),
            (params.weighting in ("tasks", "fixed"), "weighting", "must be tasks or fixed"),
            (0 < params.ratio <= 1, "ratio", "must be in (0, 1]"),
            (params.targets in ("hard", "soft"), "targets", "must be hard or soft"),
            (params.temperature > 0, "temperature", "must be > 0"),
            (params.outputs in ("sum", "mean"), "outputs", "must be sum or mean"),
            (params.replay_size >= 0, "replay_size", "must be >= 0 (0: the batch's size)"),
        ]
        for ok, key, rule in rules:
            if not ok:
                raise ConfigError(
                    f"strategies.{cls.name}.{key}: {rule}, got {getattr(params, key)!r}"
                )

    # -- the weighting ----------------------------------------------------------------------
    @property
    def replay_scale(self) -> float:
        """The replayed batch's weight in the classifier's loss, the current batch's being 1."""
        if self.params.weighting == "tasks":
            return float(self.old_tasks)  # t - 1
        return (1.0 - self.params.ratio) / self.params.ratio

    @property
    def current_share(self) -> float:
        """The current batch's share of the generator's loss once there is replay."""
        if self.params.weighting == "tasks":
            return 1.0 / (self.old_tasks + 1)
        return self.params.ratio

    # -- hooks -------------------------------------------------------------------------------
    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        if self.generator is None:
            self._build(ctx)
        self._to(ctx.device)
        self._norm = Normalisation(ctx.datamodule.tasks, self.old_tasks, ctx.device)
        self._step = None

    @override
    def penalty(self, model: nn.Module, batch: Batch, logits: Tensor) -> Tensor | None:
        """The replayed batch's loss times :attr:`replay_scale`; ``None`` on the first task.
        Either way, the batch is kept for the generator's step."""
        assert self.generator is not None, "on_task_start() must be called first"
        if logits.device != self._device:
            self._to(logits.device)
        assert self._norm is not None
        rows = global_rows(batch)
        current = self._norm.pixels(batch)
        if self.old is None:
            self._step = _Step(current, None, rows, rows)
            return None
        replay_rows = share_rows(rows, self.params.replay_size or rows[0])
        replay = self.generate(replay_rows, logits.device)
        self._step = _Step(current, replay, rows, replay_rows)
        return self.replay_scale * self.replay_loss(model, replay)

    @override
    def after_optimizer_step(self, model: nn.Module) -> None:
        """The generator's own Adam step on the batch (and replay) of the step just taken."""
        step, self._step = self._step, None
        if step is None or self.generator is None or self.optimizer is None:
            return
        generator = self.generator.train()
        device = step.current.device
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            loss = generator(step.current, self._latents(step.rows, device))
            if step.replay is not None:
                replayed = generator(step.replay, self._latents(step.replay_rows, device))
                loss = self.current_share * loss + (1.0 - self.current_share) * replayed
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        average_gradients(generator)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # nothing reads them until the next step
        self._fresh = False

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        assert self.generator is not None, "on_task_start() must be called first"
        self.old = frozen_copy(ctx.model)
        self.old_generator = frozen_copy(self.generator)
        self.old_tasks = ctx.index + 1
        self._fresh, self._step = True, None

    # -- replay ------------------------------------------------------------------------------
    def generate(self, rows: tuple[int, int, int], device: torch.device) -> Tensor:
        """This process's rows of a batch the previous generator decodes from fresh latents
        (pixels in (0, 1), no gradient).

        Args:
            rows: the batch's rows over every process, this process's first, its count.
            device: where to put them.
        """
        assert self.old_generator is not None, "no task has ended"
        return self.old_generator.sample(self._latents(rows, device)).float()

    def replay_loss(self, model: nn.Module, replay: Tensor) -> Tensor:
        """The loss of ``model`` on the replayed images (pixels) against the previous model's
        targets, per scenario (see the class docstring), differentiable in ``model``."""
        assert self.old is not None, "no task has ended"
        classifier = cast(Classifier, model)
        if isinstance(classifier.head, MultiHead):
            return self._per_head_loss(classifier, replay)
        assert self._norm is not None
        mean, std = self._norm.pooled
        x = (replay - mean) / std
        with torch.no_grad():
            target = self.old(x)
        return self._target(classifier(x), target)

    def _per_head_loss(self, classifier: Classifier, replay: Tensor) -> Tensor:
        """Task scenario: the mean over the previous tasks' heads, each on the replay as
        normalised for its task."""
        assert self.old is not None
        heads = cast(MultiHead, classifier.head).heads
        old_heads = cast(MultiHead, self.old.head).heads
        terms = []
        assert self._norm is not None
        for mean, std, tasks in self._norm.groups:
            x = (replay - mean) / std
            features = classifier.backbone(x)
            with torch.no_grad():
                old_features = self.old.backbone(x)
            for s in tasks:
                with torch.no_grad():
                    target = old_heads[s](old_features)
                terms.append(self._target(heads[s](features), target))
        return torch.stack(terms).mean()

    def _target(self, new: Tensor, old: Tensor) -> Tensor:
        """:func:`~pipeline.strategies._generative.target_loss` with this strategy's targets."""
        p = self.params
        return target_loss(new, old, p.temperature if p.targets == "soft" else None, p.outputs)

    # -- helpers -----------------------------------------------------------------------------
    def _build(self, ctx: TaskContext) -> None:
        """The generator (seeded: the same on every process, whatever the global random
        state), its optimizer, and what a checkpoint restored."""
        p = self.params
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            generator = VAE(ctx.datamodule.input_shape, p.hidden, p.layers, p.latent)
        self.generator = generator.to(ctx.device)
        self.optimizer = torch.optim.Adam(generator.parameters(), lr=p.lr, betas=(0.9, 0.999))
        self._device = ctx.device
        state, self.restored = self.restored, None
        if state is None or state["generator"] is None:
            return
        generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["old_model"] is not None:
            self.old = frozen_copy(ctx.model)
            self.old.load_state_dict(state["old_model"])
            self.old_generator = frozen_copy(generator)
            if state["old_generator"] is not None:
                self.old_generator.load_state_dict(state["old_generator"])
                self._fresh = False

    def _to(self, device: torch.device) -> None:
        """Move the generator, its optimizer's state and the previous copies to ``device``."""
        if self.generator is not None and self.optimizer is not None:
            self.generator.to(device)
            optimizer_to(self.optimizer, device)
        for module in (self.old, self.old_generator):
            if module is not None:
                module.to(device)
        self._device = device

    def _latents(self, rows: tuple[int, int, int], device: torch.device) -> Tensor:
        """``N(0, I)`` draws for this process's rows: every process draws them all."""
        total, first, n = rows
        z = torch.randn(total, self.params.latent, generator=self.rng)
        return z[first : first + n].to(device)

    # -- checkpoints -------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        if self.restored is not None:
            return self.restored
        old_generator = self.old_generator
        return {
            "generator": None if self.generator is None else self.generator.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "old_model": None if self.old is None else self.old.state_dict(),
            # at a task's end (every checkpoint) the previous generator is the live one
            "old_generator": None
            if old_generator is None or self._fresh
            else old_generator.state_dict(),
            "old_tasks": self.old_tasks,
            "rng": self.rng.get_state(),
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state
        self.rng.set_state(state["rng"].cpu())
        self.old_tasks = int(state["old_tasks"])
        self.generator = self.optimizer = None
        self.old = self.old_generator = None
        self._fresh, self._step = True, None


@register
class DGR(GenerativeReplay[DGRParams]):
    """DGR: replayed samples labelled with the previous model's most likely class."""

    name = "dgr"


@register
class DGRDistill(GenerativeReplay[DGRDistillParams]):
    """DGR+distill: replayed samples distilled from the previous model's softened outputs."""

    name = "dgr_distill"
