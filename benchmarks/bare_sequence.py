"""The founding sequence as a bare PyTorch script: what the pipeline is measured against.

It does the work the pipeline's run does, without Lightning, MLflow or the config system:
read MNIST and Fashion-MNIST (torchvision's readers, the pipeline's data folder), hold out the
same 10% of each training set for validation, train the same network (built by
``pipeline.models.build_model``, so the layers and memory layout are the pipeline's) with Adam,
one task after the other, and after each task (and before the first: the untrained network that
forward transfer needs) evaluate every task on its validation and test splits. It prints the test
accuracy matrix. ``benchmarks/overhead.py`` runs it in turn with ``python -m pipeline run``.

    .venv/bin/python benchmarks/bare_sequence.py --epochs 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from torch import Tensor, nn

from pipeline.config.schema import ModelConfig
from pipeline.models import build_model

# Each dataset's mean and std (the pipeline's DATASETS table holds the same values).
NORMALISE = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}


Split = tuple[Tensor, Tensor, float, float]  # uint8 images, labels, mean, std


def load(name: str, root: str, val_fraction: float = 0.1) -> dict[str, Split]:
    """train/val/test as uint8 images (held once, normalised per batch like the pipeline's),
    labels and the normalisation; validation carved like the pipeline's (seed 0)."""
    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    mean, std = NORMALISE[name]
    splits = {}
    for split, train in (("train", True), ("test", False)):
        ds = cls(root, train=train, download=False)
        splits[split] = (ds.data.unsqueeze(1), ds.targets, mean, std)
    x, y = splits["train"][:2]
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = round(len(y) * val_fraction)
    keep, val = perm[n_val:].sort().values, perm[:n_val].sort().values
    splits["train"], splits["val"] = (x[keep], y[keep], mean, std), (x[val], y[val], mean, std)
    return splits


def normalised(images: Tensor, mean: float, std: float) -> Tensor:
    return (images.float() / 255 - mean) / std


@torch.inference_mode()
def accuracy(model: nn.Module, split: Split, batch: int = 1000) -> float:
    x, y, mean, std = split
    model.eval()
    right = sum(
        int((model(normalised(xb, mean, std)).argmax(1) == yb).sum())
        for xb, yb in zip(x.split(batch), y.split(batch), strict=True)
    )
    model.train()
    return right / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--channels", default="32,64")
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = [load(name, args.root) for name in ("mnist", "fashion_mnist")]
    torch.manual_seed(args.seed)
    cfg = ModelConfig(
        name="cnn",
        channels=[int(c) for c in args.channels.split(",")],
        kernel_size=args.kernel,
        hidden=[args.hidden],
    )
    model = build_model(cfg, (1, 28, 28), [10, 10])
    rows = [[accuracy(model, t[s]) for t in tasks for s in ("val", "test")]]
    g = torch.Generator().manual_seed(args.seed)
    for task in tasks:
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        x, y, mean, std = task["train"]
        start = time.perf_counter()
        for _ in range(args.epochs):
            for idx in torch.randperm(len(y), generator=g).split(args.batch):
                loss = F.cross_entropy(model(normalised(x[idx], mean, std)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        seconds = time.perf_counter() - start
        rows.append([accuracy(model, t[s]) for t in tasks for s in ("val", "test")])
        print(f"trained {len(y) * args.epochs:,} samples in {seconds:.1f} s")
    for i, row in enumerate(rows):
        print(
            ("init   " if i == 0 else f"after {i}")
            + "  "
            + "  ".join(f"{100 * a:5.1f}" for a in row[1::2])
        )


if __name__ == "__main__":
    main()
