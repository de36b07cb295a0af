"""GDumb: a greedy class-balanced memory, and a network trained from scratch on it alone.

Prabhu, Torr & Dokania 2020, "GDumb: A Simple Approach that Questions Our Progress in Continual
Learning" (ECCV 2020); the authors' code is drimpossible/GDumb (``src/main.py``, ``src/opts.py``,
``scripts/replicate.sh``); Avalanche's ``GDumbPlugin`` is the library form.

Where the learner trains, and why
    The paper's learner never sees the stream: when a prediction is needed, a network is
    re-initialised and trained on the memory alone, with its own optimiser and schedule. Here
    predictions are needed after every task, so :meth:`GDumb.on_task_end` runs that loop itself
    (as EWC runs its own passes for the Fisher). The host's Trainer cannot: its optimiser,
    schedule and batch size are the experiment's and its steps are passes over the stream;
    memory batches chosen in ``transform_batch`` (Avalanche's way) would tie the memory steps
    to the stream's length, with the wrong optimiser. The sampler reads the stream in
    :meth:`GDumb.transform_batch`, each sample the first time a batch shows it: the greedy
    sampler depends on the stream's order, and this is it (held in memory or streamed; in a
    distributed run, one process's order). The batch trains unchanged: the host's steps cost
    their compute and their weights are discarded by the re-initialisation, so the model
    evaluated after a task is a function of the memory, the seed and the task index only
    (``trainer.epochs=1`` wastes least: later epochs offer nothing). The curves logged during a
    task are the discarded network's; ``train/samples`` counts the stream, not the memory.

Distributed runs
    The memory is one global memory, identical on every process (each step's offers gathered in
    rank order). The from-scratch training runs whole on every process, from the same seed on
    the same memory: one process's computation, with no communication in thousands of steps of
    16 samples; rank 0's weights and buffers are then broadcast, so the replicas stay identical
    even where kernels are not deterministic.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from pipeline import distributed
from pipeline.augment import apply_crop_flip, draw_crop_flip
from pipeline.config.choices import Augment
from pipeline.data.shards import StreamedImages
from pipeline.data.tasks import Batch
from pipeline.errors import ConfigError
from pipeline.strategies._rehearsal import TaskSamples
from pipeline.strategies._reservoir import pair_key
from pipeline.strategies.base import Retention, Strategy, StrategyRefused, TaskContext, register

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig


@dataclass
class GDumbParams:
    """Hyperparameters of GDumb (defaults: the authors' MNIST setting, ``scripts/replicate.sh``
    and ``src/opts.py`` of drimpossible/GDumb).

    Attributes:
        size: memory capacity ``k`` (samples, over all tasks): 500, the paper's MNIST memory
            of its Tables 3 and 4 (MNIST-MLP-100 and -400 at k=500; Tables 5-6 use 4400).
        epochs: passes over the memory of each from-scratch training: 128, the authors'
            ``--num_passes`` for every MNIST run (256 for SVHN and CIFAR).
        batch_size: memory samples per step: 16 (``--batch_size``).
        lr: the largest learning rate (``--maxlr``, 0.05): the first epoch warms up at a tenth
            of it, the second runs at it, then cosine warm restarts (:func:`gdumb_lr`).
        min_lr: the floor of the cosine (``--minlr``, 0.0005).
        momentum: SGD momentum: 0.9, fixed in ``src/main.py``.
        weight_decay: SGD weight decay: 1e-6 (``--weight_decay``).
        clip: the gradient's largest L2 norm (``clip_grad_norm_``): 10 (``--clip``).
    """

    size: int = 500
    epochs: int = 128
    batch_size: int = 16
    lr: float = 0.05
    min_lr: float = 0.0005
    momentum: float = 0.9
    weight_decay: float = 1e-6
    clip: float = 10.0


def gdumb_lr(epoch: int, lr: float, min_lr: float) -> float:
    """The learning rate of epoch ``epoch`` (from 0) of GDumb's training.

    The authors' loop sets ``lr / 10`` for epoch 0 and ``lr`` for epoch 1, then steps
    ``CosineAnnealingWarmRestarts(T_0=1, T_mult=2, eta_min=min_lr)`` once per epoch: a cosine
    from ``lr`` to ``min_lr`` restarted at epochs 2, 4, 8, 16, ..., each cycle as long as all
    before it. In closed form, with ``s`` the largest power of 2 not above ``epoch``::

        min_lr + (lr - min_lr) * (1 + cos(pi * (epoch - s) / s)) / 2
    """
    if epoch == 0:
        return lr / 10
    start = 1 << (epoch.bit_length() - 1)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (epoch - start) / start)) / 2


class GreedyMemory:
    """At most ``capacity`` raw samples, chosen by GDumb's greedy class-balancing sampler.

    A class is a ``(task, target)`` pair (as in :mod:`pipeline.strategies.buffer`). Offered in
    stream order, a sample of class ``y`` enters if ``n_y < capacity / |Y|``, with ``n_y`` the
    class's stored samples and ``Y`` the classes seen so far (``y`` included); when the memory
    is full it takes the slot of a sample drawn uniformly from the largest class (the first in
    ``(task, target)`` order on a tie), from a CPU generator saved with the memory. Erased
    samples are zeroed and refused if offered again; every field of a free slot is zero.

    Args:
        capacity: slots.
        seed: seed of the eviction generator.
    """

    FIELDS = ("labels", "tasks", "ids", "valid")

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self.labels, self.tasks, self.ids = (
            torch.zeros(capacity, dtype=torch.long) for _ in range(3)
        )
        self.valid = torch.zeros(capacity, dtype=torch.bool)
        self.images: Tensor | None = None  # allocated at the first sample, in its shape and type
        # on the CPU, sorted: the pair keys of the classes seen and of the erased samples
        self.classes = torch.zeros(0, dtype=torch.long)
        self.erased = torch.zeros(0, dtype=torch.long)

    def slots(self) -> Tensor:
        """Indices of the occupied slots, ascending."""
        return self.valid.nonzero().squeeze(1)

    def get(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Images (uint8), targets, task indices and sample ids of these slots."""
        assert self.images is not None, "the memory is empty"
        return self.images[index], self.labels[index], self.tasks[index], self.ids[index]

    def to(self, device: torch.device) -> None:
        """Hold the samples on ``device`` (the sampler's own lists stay on the CPU)."""
        for name in (*self.FIELDS, *(("images",) if self.images is not None else ())):
            setattr(self, name, getattr(self, name).to(device))

    def offer(self, source: Tensor | StreamedImages, keys: Tensor) -> int:
        """Offer candidates to the sampler, in order; copy in those stored at the end (one may
        enter and be evicted by a later one); how many slots were written.

        Args:
            source: uint8 images (N x C x H x W), e.g. a task's training split.
            keys: one row per candidate: its row in ``source``, target, task index and id.
        """
        classes = pair_key(keys[:, 2], keys[:, 1]).tolist()
        who = pair_key(keys[:, 2], keys[:, 3]).cpu()
        held = pair_key(self.tasks, self.ids)[self.valid].cpu()
        refused = (torch.isin(who, self.erased) | torch.isin(who, held)).tolist()
        valid, stored = self.valid.tolist(), pair_key(self.tasks, self.labels).tolist()
        members: dict[int, list[int]] = {}  # class -> its slots
        for slot in (s for s, v in enumerate(valid) if v):
            members.setdefault(stored[slot], []).append(slot)
        free = [s for s, v in enumerate(valid) if not v][::-1]  # popped: the lowest slot first
        seen = set(self.classes.tolist())
        writes: dict[int, int] = {}  # slot -> the candidate stored there at the end
        for i, c in enumerate(classes):
            if refused[i]:
                continue
            seen.add(c)
            group = members.setdefault(c, [])
            if len(group) * len(seen) >= self.capacity:  # n_y >= k / |Y|: the class has its share
                continue
            slot = free.pop() if free else self._evict(members)
            group.append(slot)
            writes[slot] = i
        self.classes = torch.tensor(sorted(seen), dtype=torch.long)
        if writes:
            self._store(source, keys, writes)
        return len(writes)

    def _evict(self, members: dict[int, list[int]]) -> int:
        """Free the slot of a uniformly drawn sample of the largest class; its index."""
        group = members[max(members, key=lambda c: (len(members[c]), -c))]
        return group.pop(int(torch.randint(len(group), (1,), generator=self.generator)))

    def _store(self, source: Tensor | StreamedImages, keys: Tensor, writes: dict[int, int]) -> None:
        """Copy candidate ``writes[slot]`` into each ``slot`` (a copy: the memory keeps it
        whatever becomes of ``source``)."""
        dev = self.valid.device
        slots = torch.tensor(list(writes), dtype=torch.long, device=dev)
        chosen = keys[torch.tensor(list(writes.values()), device=keys.device)].to(dev)
        images = source[chosen[:, 0].to(source.device)].to(dev)
        if self.images is None:
            self.images = images.new_zeros((self.capacity, *images.shape[1:]))
        self.images[slots] = images
        self.labels[slots], self.tasks[slots], self.ids[slots] = chosen[:, 1:].unbind(1)
        self.valid[slots] = True

    def erase(self, task: int, ids: Tensor) -> int:
        """Remove the stored samples of task ``task`` with these ids, now and for good (zeroed,
        and refused if offered again); how many were removed."""
        ids = ids.long().flatten()
        hit = self.valid & (self.tasks == task) & torch.isin(self.ids, ids.to(self.ids.device))
        for t in (self.images, self.labels, self.tasks, self.ids, self.valid):
            if t is not None:
                t[hit] = 0
        erased = pair_key(torch.full_like(ids, task), ids).cpu()
        self.erased = torch.unique(torch.cat([self.erased, erased]))
        return int(hit.sum())

    def state_dict(self) -> dict[str, Any]:
        """Every slot (a free one is zeros), the generator, the classes seen, the erasures."""
        state = {name: getattr(self, name).clone() for name in (*self.FIELDS, "classes", "erased")}
        if self.images is not None:
            state["images"] = self.images.clone()
        return {**state, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (onto this memory's device)."""
        if state["valid"].numel() != self.capacity:
            raise ValueError(f"a memory state of another size than {self.capacity}")
        dev = self.valid.device
        for name in (*self.FIELDS, "images"):
            setattr(self, name, state[name].to(dev) if name in state else None)
        self.classes, self.erased = state["classes"].cpu(), state["erased"].cpu()
        self.generator.set_state(state["generator"].cpu())


def reinitialise(model: nn.Module) -> None:
    """Draw every parameter afresh, in place, from its module's default initialisation (the
    network's own: :func:`pipeline.models.build_model` adds none) and reset the BatchNorm
    statistics, with the global generators.

    Raises:
        TypeError: a module holds parameters but has no ``reset_parameters``.
    """
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"cannot re-initialise a {type(module).__name__}: no reset_parameters")


@register
class GDumb(Strategy[GDumbParams]):
    """GDumb: a greedy class-balancing sampler (:class:`GreedyMemory`) fills a memory of
    ``size`` samples from the stream, each training sample offered once, the first time a batch
    shows it; after each task (:meth:`relearn`) the weights are drawn afresh and trained for
    ``epochs`` shuffled passes over the memory, in batches of ``batch_size``, on the
    cross-entropy, with SGD (``momentum``, ``weight_decay``), the gradient's norm clipped to
    ``clip`` and the learning rate of :func:`gdumb_lr`; the experiment's ``data.augment``
    applies to memory batches as to any training batch. The heads are the scenario's (a task's
    own head or the classes seen so far: the paper's masking). Why the loop runs in
    ``on_task_end``: the module docstring.
    """

    name = "gdumb"
    keeps_raw_data = True

    def __init__(self, params: GDumbParams) -> None:
        super().__init__(params)
        self.seed = (torch.initial_seed() + zlib.crc32(self.name.encode())) % (1 << 62)
        self.memory = GreedyMemory(params.size, self.seed)
        self.task_names: list[str] = []
        self.current: TaskSamples | None = None

    @classmethod
    @override
    def check_config(cls, params: GDumbParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        p = params
        for key, ok, rule in (
            ("size", p.size >= 1, "must be >= 1"),
            ("epochs", p.epochs >= 1, "must be >= 1"),
            ("batch_size", p.batch_size >= 1, "must be >= 1"),
            ("lr", p.lr > 0, "must be > 0"),
            ("min_lr", 0 <= p.min_lr <= p.lr, "must be in [0, lr]"),
            ("momentum", 0 <= p.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", p.weight_decay >= 0, "must be >= 0"),
            ("clip", p.clip > 0, "must be > 0"),
        ):
            if not ok:
                raise ConfigError(f"strategies.{cls.name}.{key}: {rule}, got {getattr(p, key)}")
        others = [n for n in cfg.strategy if n != cls.name]
        if others:
            raise StrategyRefused(
                f"strategy: '{cls.name}' retrains the network from scratch on its memory after "
                f"every task, which discards what {', '.join(others)} did: run it alone"
            )

    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        self.memory.to(ctx.device)
        self.current = TaskSamples(ctx.task, ctx.device)
        self.task_names = [t.name for t in ctx.datamodule.tasks]

    @override
    def transform_batch(self, batch: Batch, ctx: TaskContext) -> Batch:
        """Offer the batch's samples seen for the first time in this task to the sampler (in a
        distributed run, every process's, in rank order); train on the batch unchanged."""
        assert self.current is not None, "on_task_start() must be called first"
        keys, _ = self.current.first_seen(batch)
        if keys.shape[0]:
            self.memory.offer(self.current.split.images, keys)
        return batch

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        self.current = None  # the id table of a finished task is not kept
        self.relearn(ctx)

    def relearn(self, ctx: TaskContext) -> None:
        """Re-initialise ``ctx.model`` and train it on the memory alone (the class docstring),
        from the seed of this task; then give every process rank 0's weights and buffers."""
        model, p = ctx.model, self.params
        seed = zlib.crc32(f"{self.seed}:{ctx.index}".encode())  # this task's, unrelated to others
        was_training = model.training
        cuda = [ctx.device] if ctx.device.type == "cuda" else []
        # the global generators of the CPU and the model's device (initialisation, dropout) from
        # this task's seed, then as they were: the run's other draws do not depend on GDumb's
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            torch.default_generator.manual_seed(seed)
            for device in cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            reinitialise(model)
            model.train()
            params = [q for q in model.parameters() if q.requires_grad]
            opt = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
            order = torch.Generator().manual_seed(seed)
            crops = torch.Generator(device=ctx.device).manual_seed(seed)
            slots = self.memory.slots()
            for epoch in range(p.epochs):
                for group in opt.param_groups:
                    group["lr"] = gdumb_lr(epoch, p.lr, p.min_lr)
                shuffled = slots[torch.randperm(slots.numel(), generator=order).to(slots.device)]
                for chunk in torch.split(shuffled, p.batch_size):
                    batch = self.memory_batch(ctx, chunk, crops)
                    loss = F.cross_entropy(model(batch.x, batch.task), batch.y)
                    opt.zero_grad(set_to_none=True)
                    torch.autograd.backward(loss)
                    nn.utils.clip_grad_norm_(params, p.clip)
                    opt.step()
        model.train(was_training)
        distributed.broadcast_(list(model.state_dict().values()))

    def memory_batch(self, ctx: TaskContext, slots: Tensor, crops: torch.Generator) -> Batch:
        """The stored samples of ``slots``, normalised, and cropped and flipped if the
        experiment augments its training batches (``data.augment=crop_flip``)."""
        data = ctx.datamodule
        batch = data.batch_from(*self.memory.get(slots))
        if data.cfg.augment is not Augment.crop_flip:
            return batch
        n, c = int(batch.x.shape[0]), int(batch.x.shape[1])
        tasks = torch.arange(len(data.tasks), device=batch.x.device)
        zeros = torch.zeros((tasks.numel(), c, 1, 1), dtype=torch.uint8, device=batch.x.device)
        black = data.batch_from(zeros, tasks, tasks, tasks).x.reshape(-1, c)  # raw 0, normalised
        shift, flip = draw_crop_flip(n, data.cfg.crop_padding, crops, batch.x.device)
        return batch._replace(x=apply_crop_flip(batch.x, shift, flip, black[batch.task]))

    @override
    def retention(self) -> Retention:
        """The memory's samples per task name and their bytes (image, target, task, id); the
        generator and the lists of classes and erasures are derived state."""
        m = self.memory
        counts = torch.bincount(m.tasks[m.valid]).tolist()
        image = 0 if m.images is None else m.images[0].numel() * m.images.element_size()
        derived = m.generator.get_state().numel() + 8 * (m.classes.numel() + m.erased.numel())
        return Retention(
            raw_samples={n: c for n, c in zip(self.task_names, counts, strict=False) if c},
            raw_bytes=int(m.valid.sum()) * (image + 3 * 8),
            state_bytes=derived,
        )

    @override
    def erase(self, task: int, ids: Tensor) -> int:
        return self.memory.erase(task, ids)

    @override
    def stored_ids(self, task: int) -> Tensor | None:
        m = self.memory
        return m.ids[m.valid & (m.tasks == task)].sort().values

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "memory": self.memory.state_dict(),
            "seed": self.seed,
            "task_names": list(self.task_names),
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state["memory"])
        self.seed = int(state["seed"])
        self.task_names = [str(n) for n in state["task_names"]]
