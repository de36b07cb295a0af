"""The search behind the founding experiment's setting: MNIST then Fashion-MNIST in a bare
PyTorch loop (no Lightning, no MLflow), for the pipeline's own CNN and optimizers.

The network is the pipeline's: ``pipeline.models.build_model`` from a ``ModelConfig`` (conv,
max-pool, ReLU; channels-last weights) with the shared 10-way head, so accuracies and speed are
those of the model the pipeline trains. Each argument is one setting as JSON; it prints MNIST,
Fashion-MNIST and MNIST-afterwards test accuracies (%), the training wall time and the training
samples/s. Like the pipeline, it trains on 90% of each training set (the rest is its validation
split) and normalises each dataset by its own mean and std.

    .venv/bin/python benchmarks/founding_search.py '{"ch": [32, 64], "e": [3, 3]}' \\
        '{"ch": [32, 64], "e": [3, 3], "lr2": 5e-4, "seeds": [0, 1]}'

Keys: ch (model.channels), k (model.kernel_size, 5), pool (model.pool, each), hidden
(model.hidden, [128]), drop (model.dropout: before each hidden layer), e (epochs on MNIST and
on Fashion-MNIST, [3, 3]; the pipeline's trainer.epochs is one number for both), lr (1e-3),
lr2 (Fashion-MNIST's, else lr; the pipeline has one), wd (weight decay, 0), bs (128), opt
(adam, adamw, or sgd with momentum 0.9), sched (true: cosine decay to 0 over each task's steps,
as optim.schedule=cosine), seeds ([0]).
T=<threads> in the environment (2).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import datasets

from pipeline.config.schema import ModelConfig
from pipeline.config.validation import check_values
from pipeline.models import build_model

Data = tuple[Tensor, Tensor, Tensor, Tensor]


def load(cls: Any, root: str = "data") -> Data:
    train, test = cls(root, train=True), cls(root, train=False)
    xtr, xte = train.data.float().div(255).unsqueeze(1), test.data.float().div(255).unsqueeze(1)
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, train.targets, (xte - mean) / std, test.targets


def net(channels: list[int], k: int, hidden: list[int], drop: float, pool: str) -> nn.Module:
    """The pipeline's model for MNIST-shaped images and one shared 10-way head."""
    cfg = ModelConfig(
        name="cnn", channels=channels, kernel_size=k, pool=pool, hidden=hidden, dropout=drop
    )
    check_values(cfg)
    return build_model(cfg, (1, 28, 28), [10])


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    right = sum(
        int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum())
        for i in range(0, len(x), 1000)
    )
    return 100 * right / len(x)


def train(
    model: nn.Module, x: Tensor, y: Tensor, c: dict[str, Any], epochs: int, lr: float, seed: int
) -> None:
    bs = c.get("bs", 128)
    name, wd = c.get("opt", "adam"), c.get("wd", 0.0)
    opt: torch.optim.Optimizer
    if name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    else:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
        opt = cls(model.parameters(), lr=lr, weight_decay=wd)
    n = int(len(x) * 0.9)  # as the pipeline, which holds 10% out for validation
    steps = epochs * ((n + bs - 1) // bs)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if c.get("sched") else None
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if cosine:
                cosine.step()


def main() -> None:
    torch.set_num_threads(int(os.environ.get("T", "2")))
    mnist, fashion = load(datasets.MNIST), load(datasets.FashionMNIST)
    for spec in sys.argv[1:]:
        c = json.loads(spec)
        for seed in c.get("seeds", [0]):
            torch.manual_seed(seed)
            hidden, drop = c.get("hidden", [128]), c.get("drop", 0.0)
            model = net(c["ch"], c.get("k", 5), hidden, drop, c.get("pool", "each"))
            e1, e2 = c.get("e", [3, 3])
            lr = c.get("lr", 1e-3)
            start = time.time()
            train(model, mnist[0], mnist[1], c, e1, lr, seed)
            spent = time.time() - start
            a = accuracy(model, mnist[2], mnist[3])
            start = time.time()
            train(model, fashion[0], fashion[1], c, e2, c.get("lr2", lr), seed + 1)
            spent += time.time() - start
            b, after = accuracy(model, fashion[2], fashion[3]), accuracy(model, mnist[2], mnist[3])
            samples = (e1 * int(len(mnist[0]) * 0.9) + e2 * int(len(fashion[0]) * 0.9)) / spent
            print(
                f"{spec} seed {seed}: MNIST {a:.1f} Fashion {b:.1f} MNIST after {after:.1f}"
                f"  train {spent:.0f}s, {samples:.0f} samples/s",
                flush=True,
            )


if __name__ == "__main__":
    main()
