"""The search behind the founding experiment's setting: MNIST then Fashion-MNIST in a bare
PyTorch loop (no Lightning, no MLflow), for CNNs of the pipeline's shape and a few optimizers.

Each argument is one setting as JSON; it prints MNIST, Fashion-MNIST and MNIST-afterwards test
accuracies (%) and the wall time. Like the pipeline, it trains on 90% of each training set
(the rest is its validation split) and normalises each dataset by its own mean and std.

    .venv/bin/python benchmarks/founding_search.py '{"ch": [32, 64], "e": [3, 3]}' \\
        '{"ch": [32, 64], "e": [3, 3], "lr2": 5e-4, "seeds": [0, 1]}'

Keys: ch (conv channels), k (kernel, 5), hidden ([128]), drop (dropout before each hidden
layer), e (epochs on MNIST and on Fashion-MNIST), lr (1e-3), lr2 (Fashion-MNIST's, else lr),
bs (128), opt (adam or sgd with momentum 0.9), sched (cos: cosine decay per task), seeds ([0]).
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

Data = tuple[Tensor, Tensor, Tensor, Tensor]


def load(cls: Any, root: str = "data") -> Data:
    train, test = cls(root, train=True), cls(root, train=False)
    xtr, xte = train.data.float().div(255).unsqueeze(1), test.data.float().div(255).unsqueeze(1)
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, train.targets, (xte - mean) / std, test.targets


def net(channels: list[int], k: int, hidden: list[int], drop: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    c, h = 1, 28
    for out in channels:
        layers += [nn.Conv2d(c, out, k), nn.ReLU(), nn.MaxPool2d(2)]
        c, h = out, (h - k + 1) // 2
    layers.append(nn.Flatten())
    features = c * h * h
    for width in hidden:
        if drop:
            layers.append(nn.Dropout(drop))
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, 10))


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
    if c.get("opt", "adam") == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
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
            model = net(c["ch"], c.get("k", 5), c.get("hidden", [128]), c.get("drop", 0.0))
            start = time.time()
            e1, e2 = c.get("e", [3, 3])
            lr = c.get("lr", 1e-3)
            train(model, mnist[0], mnist[1], c, e1, lr, seed)
            a = accuracy(model, mnist[2], mnist[3])
            train(model, fashion[0], fashion[1], c, e2, c.get("lr2", lr), seed + 1)
            b, after = accuracy(model, fashion[2], fashion[3]), accuracy(model, mnist[2], mnist[3])
            print(
                f"{spec} seed {seed}: MNIST {a:.1f} Fashion {b:.1f} MNIST after {after:.1f}"
                f"  {time.time() - start:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
