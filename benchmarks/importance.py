"""The importances' estimate error against its cost: EWC's Fisher and MAS's sensitivity.

Trains the founding CNN on MNIST (1 epoch, Adam), estimates the empirical Fisher and the MAS
importance on the first N training samples for several N, then fine-tunes on Fashion-MNIST
(1 epoch) to get the displacement ``d = theta_B - theta_A`` that the EWC penalty acts on. For
each N it prints, against the estimate on every training sample:

- the relative L1 error of the importance, ``sum |F_N - F| / sum F``;
- the relative error of the penalty ``sum F d^2`` at the displacement, and of its gradient
  ``F * d`` (L2 norm): what the training actually sees;
- the time of the by-layer path and of the ``torch.func`` (vmap) path, and the cost as a
  fraction of one training epoch of the task.

It prints the tables and writes them as ``docs/measured/importance.md`` (``--measured``;
``benchmarks/record.py``), which the docs include.

    .venv/bin/python benchmarks/importance.py                  # founding CNN, 2 threads
    .venv/bin/python benchmarks/importance.py --experiment quick_forgetting
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import record
import torch
import torch.nn.functional as F
from torch import Tensor

import pipeline.strategies._per_sample as per_sample
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Task
from pipeline.experiment import compose
from pipeline.models import Classifier, build_model
from pipeline.strategies.base import TaskContext
from pipeline.strategies.ewc import empirical_fisher
from pipeline.strategies.mas import output_sensitivity

Estimator = Callable[[Classifier, TaskContext, int], dict[str, Tensor]]


def train_epoch(model: Classifier, task: Task, batch_size: int, lr: float) -> float:
    """One epoch of Adam on the task's training split; its wall seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    images, labels = task.train.images, task.train.labels
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (task.mean, task.std))
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    for idx in torch.randperm(len(labels), generator=g).split(batch_size):
        x = (images[idx].float() / 255 - mean) / std
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def timed(
    estimate: Estimator, model: Classifier, ctx: TaskContext, n: int, by_layer: bool
) -> tuple[dict[str, Tensor], float]:
    """The estimate on ``n`` samples and its seconds, on the chosen path."""
    layers = per_sample._layers_by_parameter
    if not by_layer:
        per_sample._layers_by_parameter = lambda *_: None
    try:
        start = time.perf_counter()
        value = estimate(model, ctx, n)
        return value, time.perf_counter() - start
    finally:
        per_sample._layers_by_parameter = layers


def total(values: dict[str, Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1) for v in values.values()])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="lenet_forgetting")
    parser.add_argument("--root", default="data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", default="500,1000,2000,4000,8000")
    record.add_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose(args.experiment, [f"paths.data={Path(args.root).resolve()}"])
    data = ContinualDataModule(cfg.data, cfg.seed, root=cfg.paths.data_dir())
    data.setup()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.classes_per_task)
    epoch = train_epoch(model, data.tasks[0], cfg.data.batch_size, cfg.optim.lr)
    ctx = TaskContext(0, data.tasks[0], data, model, torch.device("cpu"))
    everything = len(data.tasks[0].train)
    sizes = [int(s) for s in args.samples.split(",")]
    results = {}
    for label, estimate in (("EWC Fisher", empirical_fisher), ("MAS", output_sensitivity)):
        full, full_s = timed(estimate, model, ctx, everything, True)
        rows = [
            (n, *timed(estimate, model, ctx, n, True), timed(estimate, model, ctx, n, False)[1])
            for n in sizes
        ]
        results[label] = (full, full_s, rows)
    anchor = total({n: p.detach().clone() for n, p in model.named_parameters()})
    train_epoch(model, data.tasks[1], cfg.data.batch_size, cfg.optim.lr)
    d = total({n: p.detach() for n, p in model.named_parameters()}) - anchor
    intro = (
        f"{args.experiment}: {cfg.model.channels} CNN, {args.threads} threads; one training epoch "
        f"of {data.tasks[0].display} ({everything:,} samples) took {epoch:.1f} s"
    )
    print(intro)
    body = [f"`{args.experiment}`{intro.removeprefix(args.experiment)}."]
    head = ["samples", "L1 err", "penalty err", "grad err", "by layer s", "vmap s", "x epoch"]
    for label, (full, full_s, rows) in results.items():
        f_all = total(full)
        reference = f"reference on all {everything:,} samples ({full_s:.1f} s by layer)"
        print(f"\n{label}: {reference}")
        print(
            f"{'samples':>8} {'L1 err':>7} {'penalty err':>11} {'grad err':>8} "
            f"{'by layer s':>10} {'vmap s':>7} {'x epoch':>7}"
        )
        cells = []
        for n, est, seconds, vmap_s in rows:
            f_n = total(est)
            l1 = float((f_n - f_all).abs().sum() / f_all.abs().sum())
            pen = float((f_n * d.square()).sum() / (f_all * d.square()).sum() - 1)
            grad = float((f_n * d - f_all * d).norm() / (f_all * d).norm())
            print(
                f"{n:8,} {l1:7.3f} {pen:+11.3f} {grad:8.3f} {seconds:10.2f} {vmap_s:7.2f} "
                f"{seconds / epoch:7.2f}"
            )
            cells.append(
                [
                    f"{n:,}",
                    f"{l1:.3f}",
                    f"{pen:+.3f}",
                    f"{grad:.3f}",
                    f"{seconds:.2f}",
                    f"{vmap_s:.2f}",
                    f"{seconds / epoch:.2f}",
                ]
            )
        body += [f"**{label}**: {reference}.", record.table(head, cells)]
    print()
    record.write("importance", "\n\n".join(body), args.measured)


if __name__ == "__main__":
    main()
