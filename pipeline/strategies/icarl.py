"""iCaRL: herding exemplars, binary cross-entropy with distillation, nearest-mean-of-exemplars.

Rebuffi et al. 2017, "iCaRL: Incremental Classifier and Representation Learning", as van de
Ven and Tolias 2019 ("Three scenarios for continual learning") ran it on Split MNIST with their
code (GMvandeVen/continual-learning's ``--icarl``: prototypes, add_buffer, bce, bce_distill).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from pipeline import distributed
from pipeline.config.schema import ExperimentConfig
from pipeline.data.tasks import Batch, normalise
from pipeline.errors import ConfigError
from pipeline.models import Classifier
from pipeline.strategies._frozen import frozen_copy
from pipeline.strategies.base import Retention, Strategy, TaskContext, register, tensor_bytes

#: Samples per forward pass of the end-of-task passes (herding's features, the class means).
CHUNK = 256
#: What a stored sample holds besides its image: target, task, id and herding rank (int64).
_FIELDS = ("labels", "tasks", "ids", "order")


@dataclass
class ICaRLParams:
    """Hyperparameters of iCaRL.

    Attributes:
        budget: exemplars per class with ``memory=per_class`` (100: van de Ven's later code
            for Split MNIST); with ``memory=total``, the memory's size ``K`` (2000: Rebuffi et
            al.'s, and the code of van de Ven and Tolias's 2019 paper).
        memory: ``per_class`` (the default, van de Ven's later code): every class keeps
            ``budget`` exemplars; ``total`` (Rebuffi et al.'s, and the 2019 paper's code):
            the ``t`` classes seen share ``K``, ``m = floor(K / t)`` each, and each earlier
            class's set is cut to its first ``m`` when classes arrive.
        temperature: the distillation targets of the old classes are
            ``sigmoid(old logits / temperature)``; 2, van de Ven and Tolias's ``--temp``
            (their BCE distillation divides by it); Rebuffi et al.'s targets are the plain
            sigmoid outputs, ``temperature=1``.
    """

    budget: int = 100
    memory: str = "per_class"
    temperature: float = 2.0


def herding(features: Tensor, m: int) -> Tensor:
    """Rows of ``features`` (n x D) that iCaRL's herding picks, in the order picked.

    Features and their mean are L2-normalised (``f_i``, ``mu``); pick ``k`` (from 0) is the
    unpicked row whose addition brings the mean of the picked closest to ``mu``:
    ``argmin_i || mu - (S + f_i) / (k + 1) ||``, ``S`` the sum of the rows picked so far (ties:
    the first row). Computed in float64 as ``||f_i||^2 - 2 f_i . ((k + 1) mu - S)``, the same
    order of distances.

    Returns:
        ``min(m, n)`` distinct row indices (int64, on ``features``' device).
    """
    f = F.normalize(features.double(), dim=1)
    mu = F.normalize(f.mean(0), dim=0)
    squares, total = (f * f).sum(1), torch.zeros_like(mu)
    free = torch.ones(f.shape[0], dtype=torch.bool, device=f.device)
    picked = []
    for k in range(min(m, f.shape[0])):
        distance = (squares - 2 * (f @ ((k + 1) * mu - total))).masked_fill(~free, float("inf"))
        i = int(distance.argmin())
        picked.append(i)
        free[i] = False
        total += f[i]
    return torch.tensor(picked, dtype=torch.long, device=f.device)


def nearest_mean_scores(features: Tensor, means: Tensor, present: Tensor) -> Tensor:
    """Minus the squared distance of each L2-normalised feature to each class mean (batch x
    classes): the argmax is the nearest mean; a class without exemplars (``present`` False)
    scores ``-inf``."""
    f = F.normalize(features.float(), dim=1)
    distance = (f * f).sum(1, keepdim=True) - 2 * f @ means.T + (means * means).sum(1)
    return (-distance).masked_fill(~present, float("-inf"))


def bce_distillation(logits: Tensor, y: Tensor, old: Tensor | None, temperature: float) -> Tensor:
    """iCaRL's loss of each sample: binary cross-entropy summed over the active outputs, against
    a one-hot target whose first ``old.shape[1]`` columns (the classes of earlier tasks) are the
    previous model's ``sigmoid(old / temperature)`` instead (van de Ven and Tolias's
    ``binary_targets[:, :old] = sigmoid(scores / KD_temp)``)."""
    target = F.one_hot(y, logits.shape[1]).float()
    if old is not None:
        target[:, : old.shape[1]] = torch.sigmoid(old.float() / temperature)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return bce.sum(1)


def _eval_features(model: Classifier, batches: list[Tensor]) -> list[Tensor]:
    """The backbone's features of each input batch (eval mode, float32, no gradients)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = [model.backbone(x).float() for x in batches]
    model.train(was)
    return out


@register
class ICaRL(Strategy[ICaRLParams]):
    """iCaRL in the class-incremental scenario.

    Exemplars: at each task's end, per class of the task, ``m`` training samples picked by
    :func:`herding` on the trained backbone's features (``m = budget``; ``budget / classes seen``
    with ``memory=total``, which cuts the earlier sets to their first ``m``), kept raw (uint8).

    Training: each batch is extended with exemplars in the proportion of the union ``task data
    + exemplars`` Rebuffi et al. train on (van de Ven and Tolias add the memory to the task's
    dataset): step ``i`` appends ``floor((i + 1) r) - floor(i r)``, ``r = batch_size * |P| /
    |D_t|``, walking seeded permutations of the memory (an epoch shows each about once). The
    loss (:meth:`task_loss`, in place of the cross-entropy) is :func:`bce_distillation` with
    the frozen previous model's targets for the old classes, averaged over the step's samples.

    Prediction (:meth:`predict`): once a task has ended, the nearest mean of exemplars (each
    class's mean of its exemplars' L2-normalised features, renormalised); during a task, the
    logits (its classes have no exemplars yet). The means are computed at the task's end (each
    process a share of the exemplars, gathered: identical everywhere), and again where a
    prediction finds the weights or the memory changed (a checkpoint loaded, an erasure).

    Refuses the task- and domain-incremental scenarios, as van de Ven and Tolias's code refuses
    ``--bce-distill`` outside class-incremental learning: the old classes need outputs of their
    own.
    """

    name = "icarl"
    keeps_raw_data = True
    scenarios = ("class",)
    labels: Tensor  # the exemplars' targets, tasks, ids and herding ranks, set by name: _FIELDS
    tasks: Tensor
    ids: Tensor
    order: Tensor

    def __init__(self, params: ICaRLParams) -> None:
        super().__init__(params)
        seed = (torch.initial_seed() + zlib.crc32(self.name.encode())) % (1 << 62)
        self.generator = torch.Generator().manual_seed(seed)
        self.images: Tensor | None = None  # uint8 exemplars, by (class, herding rank)
        for name in _FIELDS:
            setattr(self, name, torch.zeros(0, dtype=torch.long))
        self.mean, self.std = torch.zeros(0, 0), torch.zeros(0, 0)  # tasks x channels
        self.task_names: list[str] = []
        self.old: Classifier | None = None
        self.old_state: dict[str, Tensor] | None = None  # restored, awaiting a model to fill
        self.old_active = 0  # the old model's outputs: the classes distilled
        self.ctx: TaskContext | None = None
        self.step, self.queue = 0, torch.zeros(0, dtype=torch.long)  # this task's replay walk
        self.changes = 0  # counts the changes of the memory (the class means' cache key)
        self._means: tuple[Any, Tensor, Tensor] | None = None  # (key, means, present)

    @classmethod
    @override
    def check_config(cls, params: ICaRLParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        for bad, why in (
            (params.budget < 1, f"budget: must be >= 1, got {params.budget}"),
            (
                params.memory not in ("per_class", "total"),
                f"memory: must be per_class or total, got {params.memory!r}",
            ),
            (params.temperature <= 0, f"temperature: must be > 0, got {params.temperature}"),
        ):
            if bad:
                raise ConfigError(f"strategies.icarl.{why}")

    # -- training ---------------------------------------------------------------------------
    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        self.ctx, self.step, self.queue = ctx, 0, torch.zeros(0, dtype=torch.long)
        tasks = ctx.datamodule.tasks
        self.task_names = [t.name for t in tasks]
        self.mean = torch.tensor([t.mean for t in tasks], device=ctx.device)
        self.std = torch.tensor([t.std for t in tasks], device=ctx.device)
        self._move(ctx.device)
        if self.old is None and self.old_state is not None:  # restored: the live architecture
            self.old = frozen_copy(ctx.model)
            self.old.load_state_dict(self.old_state)
            self.old_state = None
        if self.old is not None:
            self.old.to(ctx.device)

    @override
    def transform_batch(self, batch: Batch, ctx: TaskContext) -> Batch:
        stored, step = int(self.labels.numel()), self.step
        self.step += 1
        if not stored:
            return batch
        # this step's share of the union: every process the same count, then its own slice
        rate, seen = ctx.datamodule.cfg.batch_size * stored, len(ctx.task.train)
        k = ((step + 1) * rate) // seen - (step * rate) // seen
        while self.queue.numel() < k:
            self.queue = torch.cat([self.queue, torch.randperm(stored, generator=self.generator)])
        rows, self.queue = self.queue[:k], self.queue[k:]
        rows = distributed.my_slice(rows).to(self.labels.device)
        memory = self._batch(rows)
        pairs = zip(batch, memory, strict=True)
        return Batch(*(torch.cat([new, old.to(new.device)]) for new, old in pairs))

    @override
    def task_loss(self, model: nn.Module, batch: Batch, logits: Tensor) -> Tensor | None:
        old = None
        if self.old is not None and self.old_active:
            if next(self.old.parameters()).device != logits.device:
                self.old.to(logits.device)
            with torch.no_grad():
                old = self.old(batch.x, batch.task)[:, : self.old_active]
        per_sample = bce_distillation(logits, batch.y, old, self.params.temperature)
        # The mean over the step's samples of every process: DDP averages the processes'
        # gradients, and a process's slice of the exemplars may be one sample shorter.
        rows = distributed.sum_int(int(per_sample.shape[0]), per_sample.device)
        return per_sample.sum() * (distributed.world() / rows)

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        model = ctx.model
        self.ctx = None
        features, labels, rows = self._task_features(ctx)
        classes = model.head.num_active
        m = self.params.budget
        if self.params.memory == "total":
            m = self.params.budget // classes
            self._keep(self._ranks() < m)
        picked = [
            rows[labels == c][herding(features[labels == c], m)] for c in torch.unique(labels)
        ]
        self._add(ctx, picked)
        self.old, self.old_active = frozen_copy(model), classes
        if self.labels.numel():  # the same memory on every process: all or none call it
            self._class_means(model, share=True)

    # -- the memory -------------------------------------------------------------------------
    def _task_features(self, ctx: TaskContext) -> tuple[Tensor, Tensor, Tensor]:
        """The trained backbone's features of the task's training samples, their targets and
        rows in the split, in row order (each process computes its share; gathered)."""
        model, dev = ctx.model, ctx.device
        feats = [torch.zeros(0, model.feature_dim, device=dev)]  # a process may read none
        labels = ids = [torch.zeros(0, dtype=torch.long, device=dev)]
        for b in ctx.datamodule.loader(ctx.task, "train", batch_size=CHUNK):
            feats += _eval_features(model, [b.x.to(dev)])
            labels, ids = [*labels, b.y.to(dev)], [*ids, b.id.to(dev)]
        f, y, i = (distributed.gather_rows(torch.cat(t)) for t in (feats, labels, ids))
        split_ids = ctx.task.train.ids.to(ctx.device)
        by_id = split_ids.argsort()
        rows = by_id[torch.searchsorted(split_ids[by_id], i)]
        order = rows.argsort()  # the split's order, whatever order the processes read it in
        return f[order], y[order], rows[order]

    def _add(self, ctx: TaskContext, picked: list[Tensor]) -> None:
        """Store the picked rows of the task's training split (one tensor per class, in herding
        order), then order the memory by (class, herding rank)."""
        if not picked:
            return
        split, dev = ctx.task.train, ctx.device
        rows = torch.cat(picked)
        images = split.images[rows.to(split.images.device)].to(dev)
        new = {
            "labels": split.labels.to(dev)[rows],
            "tasks": torch.full_like(rows, ctx.index),
            "ids": split.ids.to(dev)[rows],
            "order": torch.cat([torch.arange(len(p), device=dev) for p in picked]),
        }
        self._move(dev)
        self.images = images if self.images is None else torch.cat([self.images, images])
        for name in _FIELDS:
            setattr(self, name, torch.cat([getattr(self, name), new[name]]))
        if self.labels.numel():
            key = self.labels * (int(self.order.max()) + 1) + self.order
            self._keep(key.argsort())

    def _keep(self, index: Tensor) -> None:
        """Keep the exemplars ``index`` selects (a mask or rows), in that order."""
        if self.images is not None:
            self.images = self.images[index]
        for name in _FIELDS:
            setattr(self, name, getattr(self, name)[index])
        self.changes += 1

    def _ranks(self) -> Tensor:
        """Each exemplar's rank within its class (the memory is ordered by class and rank)."""
        first = torch.searchsorted(self.labels, self.labels)  # where each class starts
        return torch.arange(self.labels.numel(), device=self.labels.device) - first

    def _move(self, device: torch.device) -> None:
        """Hold the exemplars on ``device``."""
        if self.images is not None:
            self.images = self.images.to(device)
        for name in _FIELDS:
            setattr(self, name, getattr(self, name).to(device))

    def _batch(self, rows: Tensor) -> Batch:
        """The exemplars ``rows`` as a normalised batch (each with its task's statistics)."""
        assert self.images is not None
        tasks = self.tasks[rows]
        mean, std = self.mean.to(tasks.device), self.std.to(tasks.device)
        x = normalise(self.images[rows], tasks, mean, std)
        return Batch(x, self.labels[rows], tasks, self.ids[rows])

    # -- prediction -------------------------------------------------------------------------
    @override
    def predict(self, model: nn.Module, x: Tensor, task: Tensor, logits: Tensor) -> Tensor | None:
        if self.ctx is not None or not self.labels.numel():  # in a task: the network's logits
            return None
        classifier = cast(Classifier, model)
        means, present = self._class_means(classifier, share=False)
        features = classifier.backbone(x)
        scores = nearest_mean_scores(features, means.to(x.device), present.to(x.device))
        out = torch.full(logits.shape, float("-inf"), device=logits.device)
        width = min(int(logits.shape[1]), int(scores.shape[1]))
        out[:, :width] = scores[:, :width].to(logits.device)
        return out

    def _class_means(self, model: Classifier, share: bool) -> tuple[Tensor, Tensor]:
        """Each class's mean of its exemplars' normalised features, renormalised (classes x
        D), and which classes have exemplars; cached until the weights or the memory change.

        Args:
            share: each process computes a contiguous share of the chunks and the features
                are gathered (a collective: every process calls it, at a task's end); else
                this process computes them all.
        """
        # every in-place change of a weight bumps its version (an optimizer step, a load)
        tensors = [*model.parameters(), *model.buffers()]
        key = (self.changes, [(id(t), t._version) for t in tensors])
        if self._means is not None and self._means[0] == key:
            return self._means[1], self._means[2]
        chunks = torch.split(torch.arange(self.labels.numel(), device=self.labels.device), CHUNK)
        mine = list(range(len(chunks)))
        if share:
            mine = distributed.my_slice(torch.arange(len(chunks))).tolist()
        dev = next(model.parameters()).device
        feats = _eval_features(model, [self._batch(chunks[c]).x.to(dev) for c in mine])
        f = torch.cat([torch.zeros(0, model.feature_dim, device=dev), *feats])
        f = F.normalize(distributed.gather_rows(f) if share else f, dim=1)
        labels = self.labels.to(dev)
        classes = int(labels.max()) + 1
        sums = torch.zeros(classes, f.shape[1], device=dev).index_add_(0, labels, f)
        counts = torch.bincount(labels, minlength=classes)
        means = F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=1)
        self._means = (key, means, counts > 0)
        return means, counts > 0

    # -- ledger, erasure, checkpoints -------------------------------------------------------
    @override
    def retention(self) -> Retention:
        names, counts = self.task_names, torch.bincount(self.tasks.cpu()).tolist()
        raw = {(names[t] if t < len(names) else f"task{t}"): c for t, c in enumerate(counts) if c}
        per_sample = 8 * len(_FIELDS)  # target, task, id, rank
        if self.images is not None:
            per_sample += self.images.shape[1:].numel() * self.images.element_size()
        state = self.state_dict()
        derived = tensor_bytes({k: state[k] for k in ("old", "mean", "std", "generator")})
        return Retention(raw, int(self.labels.numel()) * per_sample, derived)

    @override
    def erase(self, task: int, ids: Tensor) -> int:
        hit = (self.tasks == task) & torch.isin(self.ids, ids.to(self.ids.device).long())
        self._keep(~hit)
        return int(hit.sum())

    @override
    def stored_ids(self, task: int) -> Tensor | None:
        return self.ids[self.tasks == task].sort().values

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            **{name: getattr(self, name) for name in _FIELDS},
            "mean": self.mean,
            "std": self.std,
            "task_names": list(self.task_names),
            "old": self.old.state_dict() if self.old is not None else self.old_state,
            "old_active": self.old_active,
            "generator": self.generator.get_state(),
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images = state["images"]
        for name in _FIELDS:
            setattr(self, name, state[name])
        self.mean, self.std = state["mean"], state["std"]
        self.task_names = [str(n) for n in state["task_names"]]
        self.old, self.old_state = None, state["old"]
        self.old_active = int(state["old_active"])
        self.generator.set_state(state["generator"].cpu())
        self.ctx, self.changes = None, self.changes + 1
