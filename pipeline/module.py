"""The one LightningModule: a classifier trained task after task, hosting strategy plugins."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from pipeline import distributed
from pipeline.augment import apply_crop_flip, draw_crop_flip, step_generator
from pipeline.config.choices import Augment
from pipeline.config.schema import OptimConfig
from pipeline.data.tasks import Batch
from pipeline.errors import RunFailed
from pipeline.metrics import percent
from pipeline.models import Classifier
from pipeline.strategies.base import Strategy, TaskContext, tensors_in


class DivergenceError(RunFailed):
    """The training loss became NaN or infinite."""


class ContinualModule(pl.LightningModule):
    """Trains ``model`` on the current task with the loss shaped by ``strategies``.

    The runner calls :meth:`start_task` before building each task's Trainer and :meth:`end_task`
    after it; inside ``fit`` the strategies see every batch (``transform_batch``), may replace
    the cross-entropy (``task_loss``), add their ``penalty`` to the loss and act after the
    backward pass and the optimizer step, in list order. Every accuracy the module measures
    (:meth:`accuracy`, validation, :meth:`sample_losses`) reads its predictions from
    :meth:`scores` (a strategy's ``predict``, else the logits); losses are the network's. The
    optimizer is built anew by ``configure_optimizers`` at every ``fit``, i.e. per task, so no
    optimizer state (Adam moments) leaks from one task into the next.

    Args:
        model: backbone + head.
        strategies: plugins, applied in order.
        optim: optimizer settings.
        check_finite_every: check the loss for NaN/inf every this many steps (0: never).
        log_every: log the step values (loss, penalties) every this many steps: the Trainer's
            ``log_every_n_steps``, the steps its logger writes.
        augment: ``crop_flip``: every training batch (after the strategies' transforms, so
            replayed samples too) is randomly cropped and flipped, per sample, on its device
            (:mod:`pipeline.augment`); validation, evaluation and what strategies store never.
        crop_padding: the zero padding of ``crop_flip``, in pixels.
        seed: the experiment seed; each step's draws are seeded from it, the task and the step.
    """

    def __init__(
        self,
        model: Classifier,
        strategies: Sequence[Strategy[Any]],
        optim: OptimConfig,
        check_finite_every: int = 10,
        log_every: int = 50,
        augment: Augment = Augment.none,
        crop_padding: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.strategies = list(strategies)
        self.optim = optim
        self.check_finite_every = check_finite_every
        self.log_every = log_every
        self.augment, self.crop_padding, self.seed = Augment(augment), crop_padding, seed
        self._black: Tensor | None = None  # each task's black pixel, normalised (tasks x C)
        self.ctx: TaskContext | None = None
        self.samples_trained = 0  # this task's samples, after the strategies' transforms
        # In a distributed run the logged values are averaged over the processes.
        self.sync = distributed.world() > 1
        # An epoch's accuracy (train, then validation) is counted here and logged once, in
        # percent, at the epoch's end.
        self._correct, self._counted = torch.zeros((), dtype=torch.long), 0
        self._val_correct, self._val_counted = torch.zeros((), dtype=torch.long), 0
        #: The optimizer's state at the end of the last task (``state_dict``), which the next
        #: task's optimizer starts from when ``optim.carry_state``; a resume restores it from
        #: the checkpoint.
        self.carried: dict[str, Any] | None = None

    @override
    def forward(self, x: Tensor, task: Tensor | None = None) -> Tensor:
        logits: Tensor = self.model(x, task)
        return logits

    # -- task boundaries (called by the runner) ---------------------------------------------
    def start_task(self, ctx: TaskContext) -> None:
        """Enter a task: the head makes room for it, then every strategy's ``on_task_start``."""
        self.ctx = ctx
        self.samples_trained = 0
        self._black = None
        self.model.head.start_task(ctx.index)
        for s in self.strategies:
            s.on_task_start(ctx)

    def end_task(self, ctx: TaskContext) -> None:
        """Leave a task: check the weights, then every strategy's ``on_task_end``, in order.

        Raises:
            DivergenceError: a weight is NaN or infinite (the loss is checked every
                ``check_finite_every`` steps, so a few batches can slip through; no checkpoint
                of non-finite weights is ever written).
        """
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise DivergenceError(
                f"weights {', '.join(bad[:3])} are NaN or infinite after task {ctx.index} "
                f"({ctx.task.name}): lower optim.lr or the regularisation strength"
            )
        for s in self.strategies:
            s.on_task_end(ctx)

    # -- training -----------------------------------------------------------------------------
    @override
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        assert self.ctx is not None, "start_task() must be called before fit()"
        for s in self.strategies:
            batch = s.transform_batch(batch, self.ctx)
        if self.augment is Augment.crop_flip:
            batch = batch._replace(x=self._crop_flip(batch))
        self.samples_trained += int(batch.y.shape[0])
        logits = self.model(batch.x, batch.task)
        loss = self._task_loss(batch, logits)
        total = loss
        # Lightning's self.log costs about 0.3 ms a call on a CPU (it walks its result objects),
        # a few percent of a small CNN's step: step values are logged only on the steps the
        # logger writes (every log_every), and the epoch's accuracy is summed
        # here and logged once at the epoch's end.
        write = (self.global_step + 1) % self.log_every == 0
        for s in self.strategies:
            extra = s.penalty(self.model, batch, logits)
            if extra is not None:
                total = total + extra
                if write:
                    self.log(
                        f"train/penalty_{s.name}",
                        extra,
                        on_step=True,
                        on_epoch=False,
                        sync_dist=self.sync,
                    )
        if (
            self.check_finite_every
            and batch_idx % self.check_finite_every == 0
            # every process checks the same steps and stops together (none waits for the others)
            and distributed.any_(~torch.isfinite(total.detach()), total.device)
        ):
            raise DivergenceError(
                f"training loss is {total.item()} at task {self.ctx.index} ({self.ctx.task.name}),"
                f" epoch {self.current_epoch}, batch {batch_idx}: lower optim.lr or the "
                "regularisation strength"
            )
        self._correct += (logits.detach().argmax(1) == batch.y).sum()
        self._counted += int(batch.y.shape[0])
        if write:
            self.log(
                "train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=self.sync
            )
        return total

    def _task_loss(self, batch: Batch, logits: Tensor) -> Tensor:
        """The first strategy's ``task_loss`` that gives one, else the cross-entropy."""
        for s in self.strategies:
            loss = s.task_loss(self.model, batch, logits)
            if loss is not None:
                return loss
        return F.cross_entropy(logits, batch.y)

    def scores(self, x: Tensor, task: Tensor, logits: Tensor) -> Tensor:
        """What a prediction is read from (its argmax): the first strategy's ``predict`` that
        gives scores, else ``logits`` (the model's output on ``x``)."""
        for s in self.strategies:
            scores = s.predict(self.model, x, task, logits)
            if scores is not None:
                return scores
        return logits

    def _crop_flip(self, batch: Batch) -> Tensor:
        """The batch's images cropped and flipped (``data.augment=crop_flip``), with the draws
        of (seed, task, step): the same in a resumed run.

        The images arrive normalised, so the padding is each sample's normalised black (what
        the field's zero padding of raw pixels becomes), from the data's own normalisation.
        In a distributed run every process draws for the whole step's batch (its processes'
        batches in rank order) and keeps its own rows' draws: where each process's batch is
        its slice of one process's batch (:class:`~pipeline.data.tasks.BatchIndices`), the
        processes together crop as that one process would.
        """
        assert self.ctx is not None
        x = batch.x
        if self._black is None or self._black.shape[1] != x.shape[1]:
            self._black = self._normalised_black(int(x.shape[1]), x.device)
        n, total, offset = int(x.shape[0]), int(x.shape[0]), 0
        if distributed.world() > 1:  # a batch that replay extended may differ in size by rank
            sizes = distributed.gather_rows(torch.tensor([n], device=x.device)).tolist()
            total, offset = sum(sizes), sum(sizes[: distributed.rank()])
        generator = step_generator(self.seed, self.ctx.index, self.global_step, x.device)
        shift, flip = draw_crop_flip(total, self.crop_padding, generator, x.device)
        mine = slice(offset, offset + n)
        return apply_crop_flip(x, shift[mine], flip[mine], self._black[batch.task])

    def _normalised_black(self, channels: int, device: torch.device) -> Tensor:
        """Each task's black pixel (raw 0 in every channel) as the data normalises it
        (tasks x channels): asked of the data module, whatever its normalisation."""
        assert self.ctx is not None
        data = self.ctx.datamodule
        n = len(data.tasks)
        black = torch.zeros(n, channels, 1, 1, dtype=torch.uint8, device=device)
        index = torch.arange(n, device=device)
        return data.batch_from(black, index, index, index).x.reshape(n, channels)

    @override
    def on_train_end(self) -> None:
        if self.optim.carry_state:
            self.carried = self.trainer.optimizers[0].state_dict()

    @override
    def on_train_epoch_start(self) -> None:
        self._correct, self._counted = torch.zeros((), dtype=torch.long, device=self.device), 0

    @override
    def on_train_epoch_end(self) -> None:
        acc = self._epoch_percent(self._correct, self._counted)
        self.log("train/acc", acc, on_step=False, on_epoch=True, prog_bar=True, sync_dist=self.sync)

    def _epoch_percent(self, correct: Tensor, counted: int) -> float:
        """An epoch's accuracy over every process's samples, in percent."""
        counts = torch.stack([correct, torch.tensor(counted, device=self.device)])
        distributed.sum_([counts])
        # already the same on every process; sync_dist only tells Lightning so (it warns else)
        return percent(float(counts[0]) / max(float(counts[1]), 1.0))

    @override
    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        # Lightning's default walks any collection generically (about 0.2 ms a step on a CPU);
        # our loaders yield Batch tuples of tensors.
        if isinstance(batch, Batch):
            return Batch(*(t.to(device, non_blocking=True) for t in batch))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    @override
    def on_after_backward(self) -> None:
        for s in self.strategies:
            s.after_backward(self.model)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning calls this after the optimizer step of the batch.
        for s in self.strategies:
            s.after_optimizer_step(self.model)

    @override
    def on_validation_epoch_start(self) -> None:
        self._val_correct = torch.zeros((), dtype=torch.long, device=self.device)
        self._val_counted = 0

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self.model(batch.x, batch.task)
        self.log(
            "val/loss",
            F.cross_entropy(logits, batch.y),
            on_epoch=True,
            prog_bar=False,
            sync_dist=self.sync,
            batch_size=int(batch.y.shape[0]),
        )
        self._val_correct += (self.scores(batch.x, batch.task, logits).argmax(1) == batch.y).sum()
        self._val_counted += int(batch.y.shape[0])

    @override
    def on_validation_epoch_end(self) -> None:
        acc = self._epoch_percent(self._val_correct, self._val_counted)
        self.log("val/acc", acc, on_epoch=True, prog_bar=True, sync_dist=self.sync)

    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        o = self.optim
        optimizer: torch.optim.Optimizer
        if o.name == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
            )
        else:
            cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
            optimizer = cls(params, lr=o.lr, weight_decay=o.weight_decay)
        if o.carry_state and self.carried is not None:
            # The moments and step counts only: lr and the rest are this task's (the groups
            # of the fresh optimizer). The parameters are the same on every task (the heads
            # are built whole), in the same order, which is how a state_dict matches them.
            fresh = optimizer.state_dict()["param_groups"]
            optimizer.load_state_dict({"state": self.carried["state"], "param_groups": fresh})
        if o.schedule == "constant":
            return optimizer
        # Cosine to 0 over this task's steps (the Trainer is per task, so is the schedule).
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

    # -- evaluation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def accuracy(self, loader: Any, device: torch.device) -> float:
        """Accuracy of the model on every batch of ``loader`` (eval mode, no gradients); in a
        distributed run, over every process's share of the loader's samples."""
        was_training = self.training
        self.eval()
        counts = torch.zeros(2, dtype=torch.long, device=device)  # correct, total
        for batch in loader:
            x, y, task = (t.to(device, non_blocking=True) for t in batch[:3])
            counts[0] += (self.scores(x, task, self.model(x, task)).argmax(1) == y).sum()
            counts[1] += y.numel()
        self.train(was_training)
        distributed.sum_([counts])
        return int(counts[0]) / max(int(counts[1]), 1)

    @torch.no_grad()
    def sample_losses(self, batch: Batch, device: torch.device) -> tuple[Tensor, Tensor]:
        """Each sample's cross-entropy (of the logits) and whether it is classified right (by
        :meth:`scores`), in eval mode: what a membership audit reads
        (:mod:`pipeline.membership`)."""
        was_training = self.training
        self.eval()
        x, y, task = (t.to(device) for t in batch[:3])
        logits = self.model(x, task)
        right = self.scores(x, task, logits).argmax(1) == y
        self.train(was_training)
        return F.cross_entropy(logits, y, reduction="none").cpu(), right.cpu()

    def erase_samples(self, task: int, ids: Tensor) -> int:
        """Remove the stored samples ``ids`` of task ``task`` from every strategy (the right to
        erasure); how many were removed."""
        return sum(s.erase(task, ids) for s in self.strategies)

    def replica_state(self) -> dict[str, list[Tensor]]:
        """What the processes of a distributed run must hold identically: the network's
        weights and every strategy's state (:func:`pipeline.distributed.check_replicas`)."""
        named = {"weights": list(self.model.state_dict().values())}
        for s in self.strategies:
            named[f"{s.name}'s state"] = tensors_in(s.state_dict())
        return named

    # -- strategy state (checkpoints: pipeline.runfiles) ----------------------------------------
    def strategy_states(self) -> dict[str, dict[str, Any]]:
        """Every strategy's ``state_dict()``, by strategy name."""
        return {s.name: s.state_dict() for s in self.strategies}

    def load_strategy_states(self, states: dict[str, dict[str, Any]]) -> None:
        """Restore what :meth:`strategy_states` returned.

        Raises:
            KeyError: a strategy of this module has no state in ``states``.
        """
        for s in self.strategies:
            if s.name not in states:
                raise KeyError(
                    f"checkpoint has no state for strategy '{s.name}' (it holds {sorted(states)})"
                )
            s.load_state_dict(states[s.name])
