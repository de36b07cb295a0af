"""A reservoir buffer of raw training samples, shared by the rehearsal strategies.

:class:`ReservoirBuffer` keeps at most ``capacity`` raw samples: a copy of each uint8 image
with its target, task index, sample id (and, for DER++, the logits the model gave it when it
was stored). It is shared by ``replay``, ``agem`` and ``derpp`` through their base class
:class:`~pipeline.strategies._rehearsal.Rehearsal`.

Sampling policy
    Reservoir sampling (Vitter 1985, algorithm R) keeps, after ``n`` samples were offered, a
    uniform random subset of ``min(n, capacity)`` of them: every sample is kept with
    probability ``capacity / n``. The buffer computes that same distribution with random
    priorities: every offered sample draws ``u ~ U(0, 1)`` once, from the buffer's own seeded
    generator, and the buffer holds the ``capacity`` samples of smallest ``u`` ("reservoir
    sampling with random sort", the form Avalanche's ``ReservoirSamplingBuffer`` uses). Both
    give each k-subset of the stream the same probability; the priority form takes a whole
    batch (or a whole task) in one vectorised step instead of a Python loop over samples, makes
    the class-balanced variant the same rule applied per class, and makes erasure a plain drop.

Class balance (``class_balanced=True``)
    A class is a ``(task, target)`` pair, so MNIST's "3" and Fashion-MNIST's "dress" (both
    target 3 in the domain scenario) are two classes. Every class seen so far gets an equal
    share of the capacity; a class with fewer samples than its share leaves the unused room
    to the others (water-filling, :func:`water_fill`), and the ``capacity mod K`` slots left
    over go one each to the classes first in ``(task, target)`` order that can use one. Within
    its quota a class keeps its samples of smallest priority, i.e. a uniform sample of that
    class's samples seen. Quotas shrink as new classes arrive; the excess samples of a class
    (those of largest priority) are evicted, which leaves a uniform sample of the class.

Placement
    The stored tensors live on the model's device (:meth:`ReservoirBuffer.to`, called at each
    task start), so replaying costs no host-to-device copy per step. The random priorities
    and the sampling permutations are drawn on the CPU from CPU generators whose states are
    saved with the buffer: the same seed gives the same buffer on the CPU and on CUDA, and a
    restored run continues identically.

Erasure
    :meth:`ReservoirBuffer.erase` zeroes and frees the slots of the given samples and records
    their ``(task, id)`` pairs, so a sample offered again later (its task's data is still in
    memory) is refused: an erased sample is never replayed again and never in a later
    ``state_dict``. The free slots are refilled by the next samples offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pipeline.data.shards import StreamedImages
from pipeline.strategies._reservoir import pair_key, water_fill
from pipeline.strategies.base import Retention

# Priority of a free slot or a refused sample: never among the smallest.
_NEVER = float("inf")


class ReservoirBuffer:
    """At most ``capacity`` raw samples, a uniform (or class-balanced) sample of those offered.

    Storage is preallocated in ``capacity`` slots; ``valid`` marks the occupied ones. Images
    are allocated at the first :meth:`add` (their shape and dtype are the source's), logits
    at the first add that has some (and widened if a later add brings wider ones).

    Args:
        capacity: slots.
        class_balanced: keep per-class quotas (see the module docstring).
        seed: seed of the generator that draws the priorities.
        device: where the stored tensors live.
    """

    def __init__(
        self,
        capacity: int,
        *,
        class_balanced: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.class_balanced = class_balanced
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = 0  # samples offered so far
        dev = self.device
        self.labels = torch.zeros(capacity, dtype=torch.long, device=dev)
        self.tasks = torch.zeros(capacity, dtype=torch.long, device=dev)
        self.ids = torch.zeros(capacity, dtype=torch.long, device=dev)
        self.widths = torch.zeros(capacity, dtype=torch.long, device=dev)  # logits per sample
        self.keys = torch.full((capacity,), _NEVER, dtype=torch.float64, device=dev)
        self.valid = torch.zeros(capacity, dtype=torch.bool, device=dev)
        self.images: Tensor | None = None
        self.logits: Tensor | None = None
        # pair_key of every erased sample (sorted): refused if offered again.
        self.erased = torch.zeros(0, dtype=torch.long, device=dev)
        self._slots: Tensor | None = None  # cache of valid.nonzero()

    # -- queries --------------------------------------------------------------------------
    def slots(self) -> Tensor:
        """Indices of the occupied slots, ascending (cached until the next change)."""
        if self._slots is None:
            self._slots = self.valid.nonzero().squeeze(1)
        return self._slots

    def __len__(self) -> int:
        return int(self.slots().numel())

    def stored_ids(self, task: int) -> Tensor:
        """The ids of the samples of task ``task`` held now, ascending."""
        return self.ids[self.valid & (self.tasks == task)].sort().values

    @property
    def empty(self) -> bool:
        return len(self) == 0

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Slot indices of ``min(n, len(self))`` distinct stored samples, uniformly at random.

        Args:
            n: samples wanted.
            generator: a CPU generator (the caller's: its state is the caller's to save).
        """
        slots = self.slots()
        pick = torch.randperm(slots.numel(), generator=generator)[:n]
        return slots[pick.to(slots.device)]

    def get(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Images (uint8), targets, task indices and sample ids of these slots."""
        assert self.images is not None, "the buffer is empty"
        return self.images[index], self.labels[index], self.tasks[index], self.ids[index]

    def stored_logits(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Logits stored with these slots (zero-padded to the widest) and each one's width."""
        assert self.logits is not None, "no logits were stored"
        return self.logits[index], self.widths[index]

    def bytes_per_sample(self) -> int:
        """Bytes stored per sample: image, target, task, id, priority (and logits, width)."""
        n = 4 * 8  # labels, tasks, ids (int64) and the float64 priority
        if self.images is not None:
            n += self.images[0].numel() * self.images.element_size()
        if self.logits is not None:
            n += self.logits.shape[1] * self.logits.element_size() + 8
        return n

    def retention(self, task_names: Sequence[str]) -> Retention:
        """Raw samples kept per task name and their bytes; the generator and the erasure
        list are derived state."""
        counts = torch.bincount(self.tasks[self.slots()]).tolist()
        raw = {
            (task_names[t] if t < len(task_names) else f"task{t}"): int(c)
            for t, c in enumerate(counts)
            if c
        }
        return Retention(
            raw_samples=raw,
            raw_bytes=len(self) * self.bytes_per_sample(),
            state_bytes=int(self.generator.get_state().numel()) + self.erased.numel() * 8,
        )

    # -- changes --------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> ReservoirBuffer:
        """Move the stored tensors to ``device`` (in place; returns self)."""
        device = torch.device(device)
        if device == self.device:
            return self
        for name in ("labels", "tasks", "ids", "widths", "keys", "valid", "erased"):
            setattr(self, name, getattr(self, name).to(device))
        if self.images is not None:
            self.images = self.images.to(device)
        if self.logits is not None:
            self.logits = self.logits.to(device)
        self.device, self._slots = device, None
        return self

    def add(
        self,
        source: Tensor | StreamedImages,
        rows: Tensor,
        labels: Tensor,
        tasks: Tensor,
        ids: Tensor,
        logits: Tensor | None = None,
        widths: Tensor | None = None,
    ) -> int:
        """Offer samples to the reservoir; copy the kept ones in.

        The candidates' images are ``source[rows]``; only the kept ones are gathered, so a
        whole task can be offered at once without copying it. Candidates already stored or
        erased are refused (they still draw a priority, so the stream of draws does not depend
        on erasures).

        Args:
            source: uint8 images (N x C x H x W), e.g. a task's training split, any device.
            rows: index into ``source`` of each candidate (on ``source``'s device or the CPU).
            labels, tasks, ids: target, task index and sample id of each candidate.
            logits: the model's logits for each candidate (DER++), stored with it.
            widths: how many of each candidate's logits are real (default: all).

        Returns:
            How many candidates entered the buffer.
        """
        n = int(labels.shape[0])
        if n == 0:
            return 0
        self.seen += n
        dev = self.device
        labels, tasks, ids = labels.to(dev), tasks.to(dev), ids.to(dev)
        new_keys = self._draw_keys(tasks, ids)

        keep = self._select(
            torch.cat([self.keys.masked_fill(~self.valid, _NEVER), new_keys]),
            torch.cat([pair_key(self.tasks, self.labels), pair_key(tasks, labels)]),
        )
        keep_old, keep_new = keep[: self.capacity], keep[self.capacity :]
        free = (~keep_old).nonzero().squeeze(1)
        enter = keep_new.nonzero().squeeze(1)
        slots = free[: enter.numel()]  # free >= enter: the selection keeps <= capacity

        evicted = self.valid & ~keep_old
        self._store_images(slots, source, rows[enter.to(rows.device)])
        self.labels[slots], self.tasks[slots], self.ids[slots] = (
            labels[enter],
            tasks[enter],
            ids[enter],
        )
        self.keys[slots] = new_keys[enter]
        if logits is not None:
            self._store_logits(slots, logits[enter.to(logits.device)], widths, enter)
        self.valid = keep_old.clone()  # a view would pin the whole pool
        self.valid[slots] = True
        self._wipe(evicted & ~self.valid)  # evicted and not refilled: hold no stale copy
        self._slots = None
        return int(enter.numel())

    def _draw_keys(self, tasks: Tensor, ids: Tensor) -> Tensor:
        """A reservoir priority per candidate; a candidate already stored or erased gets one
        that never wins (it still draws, so the stream of draws does not depend on erasures)."""
        n, dev = int(ids.shape[0]), self.device
        keys = torch.rand(n, generator=self.generator, dtype=torch.float64).to(dev)
        who = pair_key(tasks, ids)
        refused = torch.isin(who, self.erased)
        if not self.empty:
            refused |= torch.isin(who, pair_key(self.tasks, self.ids)[self.slots()])
        return keys.masked_fill(refused, _NEVER)

    def _store_images(self, slots: Tensor, source: Tensor | StreamedImages, rows: Tensor) -> None:
        """Copy ``source[rows]`` into ``slots`` (a copy: later changes to ``source`` do not
        reach it); the pool is allocated at the first images, in their shape and type."""
        images = source[rows.to(source.device)].to(self.device)
        if self.images is None:
            self.images = torch.zeros(
                (self.capacity, *images.shape[1:]), dtype=images.dtype, device=self.device
            )
        self.images[slots] = images

    def _store_logits(
        self, slots: Tensor, logits: Tensor, widths: Tensor | None, enter: Tensor
    ) -> None:
        """Store the entering candidates' ``logits`` (DER++) in ``slots``; ``widths``: how many
        of each candidate's logits are real (default: all), indexed by ``enter``."""
        dev = self.device
        logits = logits.detach().to(dev, torch.float32)
        self._fit_logits(logits.shape[1])
        assert self.logits is not None
        row = torch.zeros((logits.shape[0], self.logits.shape[1]), device=dev)
        row[:, : logits.shape[1]] = logits
        self.logits[slots] = row
        if widths is not None:
            self.widths[slots] = widths.to(dev)[enter]
        else:
            self.widths[slots] = torch.full_like(slots, logits.shape[1], dtype=self.widths.dtype)

    def erase(self, task: int, ids: Tensor) -> int:
        """Remove the stored samples of task ``task`` with these ids, now and for good.

        Their slots are zeroed and freed (the next samples offered refill them), and their
        ``(task, id)`` pairs are recorded so that they are refused if offered again.

        Returns:
            How many stored samples were removed.
        """
        ids = ids.to(self.device).long().flatten()
        hit = self.valid & (self.tasks == task) & torch.isin(self.ids, ids)
        removed = int(hit.sum())
        self._wipe(hit)
        self.valid &= ~hit
        self._slots = None
        self.erased = torch.unique(
            torch.cat([self.erased, pair_key(torch.full_like(ids, task), ids)])
        )
        return removed

    def _wipe(self, mask: Tensor) -> None:
        """Zero every stored field of the masked slots (their data must not linger)."""
        if self.images is not None:
            self.images[mask] = 0
        if self.logits is not None:
            self.logits[mask] = 0
        for t in (self.labels, self.tasks, self.ids, self.widths):
            t[mask] = 0
        self.keys[mask] = _NEVER

    def _fit_logits(self, width: int) -> None:
        """Allocate the logits storage, or widen it (zero columns) for wider logits."""
        if self.logits is None:
            self.logits = torch.zeros((self.capacity, width), device=self.device)
        elif self.logits.shape[1] < width:
            pad = self.logits.new_zeros((self.capacity, width - self.logits.shape[1]))
            self.logits = torch.cat([self.logits, pad], dim=1)

    def _select(self, keys: Tensor, classes: Tensor) -> Tensor:
        """Which of the pooled samples (stored slots, then candidates) the buffer keeps.

        A pooled sample with priority ``inf`` (a free slot, a refused candidate) is never
        kept. Without class balance every real sample is one class: the ``capacity`` smallest
        priorities are kept. With it, class ``c`` keeps its ``quota[c]`` smallest.
        """
        real = torch.isfinite(keys)
        if self.class_balanced:
            # Fake samples form one last class of quota 0 (sentinel key sorts after all).
            cls_key = classes.masked_fill(~real, torch.iinfo(torch.long).max)
            _, cls = torch.unique(cls_key, return_inverse=True)
        else:
            cls = (~real).long()
        counts = torch.bincount(cls)
        k_real = counts.numel() - (0 if bool(real.all()) else 1)
        quota = torch.zeros_like(counts)
        quota[:k_real] = torch.tensor(
            water_fill(counts[:k_real].tolist(), self.capacity),
            dtype=torch.long,
            device=keys.device,
        )
        # Rank of each sample among its class by priority: sort by priority, then stably by
        # class, so each class's run is in priority order.
        order = torch.argsort(keys, stable=True)
        order = order[torch.argsort(cls[order], stable=True)]
        start = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=keys.device) - start[cls[order]]
        return rank < quota[cls]

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The occupied slots (with their positions), the generator, the erasure list."""
        slots = self.slots()
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "class_balanced": self.class_balanced,
            "seen": self.seen,
            "generator": self.generator.get_state(),
            "erased": self.erased.clone(),
            "slots": slots.clone(),
        }
        for name in ("labels", "tasks", "ids", "widths", "keys"):
            state[name] = getattr(self, name)[slots]
        if self.images is not None:
            state["images"] = self.images[slots]
        if self.logits is not None:
            state["logits"] = self.logits[slots]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (onto this buffer's device)."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"buffer state has capacity {state['capacity']}, this buffer {self.capacity}"
            )
        # Start from an empty buffer on this device, then fill the saved slots.
        fresh = ReservoirBuffer(
            self.capacity, class_balanced=bool(state["class_balanced"]), device=self.device
        )
        self.__dict__.update(fresh.__dict__)
        self.seen = int(state["seen"])
        self.generator.set_state(state["generator"].cpu())
        self.erased = state["erased"].to(self.device)
        slots = state["slots"].to(self.device)
        for name in ("labels", "tasks", "ids", "widths", "keys"):
            getattr(self, name)[slots] = state[name].to(self.device)
        if "images" in state:
            images = state["images"].to(self.device)
            self.images = torch.zeros(
                (self.capacity, *images.shape[1:]), dtype=images.dtype, device=self.device
            )
            self.images[slots] = images
        if "logits" in state:
            self._fit_logits(state["logits"].shape[1])
            assert self.logits is not None
            self.logits[slots] = state["logits"].to(self.device)
        self.valid[slots] = True
