"""One run on several processes: Lightning's launch, and the few collectives the pipeline needs.

``trainer.devices=N`` (and ``trainer.num_nodes=M``) with ``trainer.strategy=ddp`` trains one
sequence on ``N * M`` processes with Lightning's DDP (gloo on CPUs, NCCL on GPUs). The
processes are started by Lightning (:func:`launch`: Fabric's launcher re-runs the same command
once per extra device, with ``LOCAL_RANK`` set; on several machines the user starts one command
per node with ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK``). Nothing here coordinates: the
functions below are thin wrappers over ``torch.distributed`` that are no-ops in one process, so
the strategies and the runner call them unconditionally.

Every process holds the whole data and identical weights. What the processes split:

- training: each global batch of ``data.batch_size`` samples is cut into one slice per rank
  (:class:`pipeline.data.tasks.BatchIndices`), so a 2-process step sees exactly the samples a
  1-process step sees, and DDP's gradient average is the 1-process gradient;
- evaluation and the end-of-task passes (Fisher, MAS, GPM's representations): each rank takes
  a contiguous share of the samples and the sums are reduced here;
- rehearsal: the buffer is one global buffer, identical on every rank (what a rank's slice
  offers is gathered, in rank order, before it enters); a replay draw is drawn whole on every
  rank with the same generator and each rank takes its slice.

Only the main process (global rank 0) opens the MLflow run and writes to it; the others print
nothing. After each task :func:`check_replicas` compares every rank's weights and strategy
states with rank 0's: replicas that drift apart stop the run with an error instead of
silently training different models.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from pipeline.errors import RunFailed

if TYPE_CHECKING:
    from pipeline.config.schema import TrainerConfig

_launcher: Any = None  # Fabric's launcher in the process that started the others


class ReplicaDrift(RunFailed):
    """The processes of a distributed run no longer hold the same weights or strategy state."""


def world_size_of(cfg: TrainerConfig) -> int:
    """How many processes ``cfg`` trains on."""
    return cfg.devices * cfg.num_nodes


def started_as_replica() -> bool:
    """Whether the environment makes this process one that does not write the run: a copy
    Lightning started (``LOCAL_RANK`` > 0) or the process of a node other than the first."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def launch(cfg: TrainerConfig) -> None:
    """Start the other processes of a distributed run and join the process group (no-op for one
    process, or when the group exists).

    Lightning's launcher re-runs this process's command line once per extra local device; each
    copy calls :func:`launch` again and joins. Processes other than rank 0 write nothing to
    stdout from here on (the main process prints the run's output once).
    """
    global _launcher
    if world_size_of(cfg) == 1 or initialized():
        return
    from lightning.fabric import Fabric

    accelerator = "gpu" if cfg.accelerator in ("gpu", "cuda") else cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    fabric = Fabric(
        accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy="ddp"
    )
    fabric.launch()
    _launcher = fabric.strategy.launcher
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def leave() -> None:
    """End this process's part in the process group, once every process has arrived: what the
    main process does after the run (a landscape, a report) is its own, with no collective."""
    if initialized():
        dist.barrier()
        dist.destroy_process_group()


def stop_others() -> None:
    """Kill the processes this one launched (the main process failed: they would wait in a
    collective for it)."""
    for proc in getattr(_launcher, "procs", []):
        if proc.poll() is None:
            proc.kill()


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 in one process)."""
    return dist.get_rank() if initialized() else 0


def world() -> int:
    """Number of processes of the run (1 in one process)."""
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """Whether this process writes the run (global rank 0)."""
    return rank() == 0


def sum_(tensors: Sequence[Tensor]) -> None:
    """Sum each tensor over the processes, in place."""
    if world() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def sum_int(value: int, device: torch.device | None = None) -> int:
    """``value`` summed over the processes."""
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device or _device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def any_(flag: bool | Tensor, device: torch.device | None = None) -> bool:
    """Whether ``flag`` is true on any process (every process gets the same answer)."""
    if world() == 1:
        return bool(flag)
    t = torch.as_tensor(flag, device=device or _device()).to(torch.int32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def or_(mask: Tensor) -> None:
    """Element-wise OR of a boolean mask over the processes, in place."""
    if world() > 1:
        as_int = mask.to(torch.uint8)
        dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
        mask.copy_(as_int.bool())


def broadcast_(tensors: Sequence[Tensor]) -> None:
    """Give every process rank 0's values, in place."""
    if world() > 1:
        for t in tensors:
            dist.broadcast(t, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` (any picklable value) on every process."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(t: Tensor) -> Tensor:
    """Every process's ``t`` concatenated along dim 0, in rank order (sizes may differ)."""
    if world() == 1:
        return t
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    padded = t.new_zeros((max(counts), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def my_slice(t: Tensor) -> Tensor:
    """This process's contiguous share of ``t``'s rows (the shares of all ranks are ``t``)."""
    if world() == 1:
        return t
    return t.tensor_split(world())[rank()]


def fingerprint(tensors: Sequence[Tensor]) -> Tensor:
    """A small float64 vector that changes when any value of ``tensors`` changes: per tensor,
    its sum and its sum weighted by position (a swap of two values changes the second)."""
    out = []
    for t in tensors:
        v = t.detach().reshape(-1).to(torch.float64)
        w = torch.arange(1, v.numel() + 1, dtype=torch.float64, device=v.device)
        out += [v.sum(), (v * w).sum() / max(v.numel(), 1)]
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def check_replicas(named: Mapping[str, Sequence[Tensor]], device: torch.device) -> None:
    """Compare every process's ``named`` groups of tensors (weights, each strategy's state)
    with rank 0's, exactly (identical replicas are bit-for-bit equal: DDP averages the
    gradients into one buffer and every rank applies the same step).

    Raises:
        ReplicaDrift: on every process, one line naming the groups that differ and the ranks.
    """
    if world() == 1:
        return
    names = list(named)
    prints = [fingerprint([t.to(device) for t in named[n]]).to(device) for n in names]
    sizes = [p.numel() for p in prints]
    mine = torch.cat(prints) if prints else torch.zeros(0, dtype=torch.float64, device=device)
    ref = mine.clone()
    dist.broadcast(ref, src=0)
    same = torch.isclose(mine, ref, rtol=0.0, atol=0.0, equal_nan=True)
    flags = torch.stack([~part.all() for part in torch.split(same, sizes)]).to(torch.int32)
    table = gather_rows(flags.unsqueeze(0))  # ranks x names
    if bool(table.any()):
        drifted = [
            f"{n} (rank {', '.join(str(int(r)) for r in table[:, i].nonzero().flatten())})"
            for i, n in enumerate(names)
            if bool(table[:, i].any())
        ]
        raise ReplicaDrift(
            f"the {world()} processes no longer agree with rank 0 on {'; '.join(drifted)}: "
            "a strategy is not reduced across processes"
        )


def _device() -> torch.device:
    """Where collectives' small tensors live: NCCL needs them on this process's GPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
