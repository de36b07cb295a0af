"""Training throughput of the pipeline against a bare PyTorch loop, measured in one run.

Both train the same model (the experiment's, default the founding CNN; ``--model`` picks another
from conf/model/) on the same in-memory task (default MNIST's 54,000 training samples) with the
same optimizer, batch size and thread count.
The pipeline side is the real thing: ``run_sequence`` with its Lightning Trainer, strategy hooks,
MLflow logging and progress bar; its time is the TrainTimer's (validation excluded). The two are
run alternately, ``--repeats`` times each, and the medians compared, so that machine noise hits
both alike. It prints every repeat and the medians, and writes them as
``docs/measured/throughput.md`` (``--measured``; ``benchmarks/record.py``), which the docs
include.

    make bench                       # MNIST, 1 epoch, 3 repeats
    .venv/bin/python benchmarks/throughput.py --dataset synthetic --repeats 1
    # the reduced ResNet-18 on 32x32x3 batches with crop+flip (docs/measured/throughput-resnet.md)
    .venv/bin/python benchmarks/throughput.py --resnet

``--resnet``: the reduced ResNet-18 of ``conf/model/resnet18_reduced.yaml`` on a generated
task of 3x32x32 images, with ``data.augment=crop_flip`` and SGD, as ``split_cifar10`` trains;
the bare loop crops and flips its batches with the same function (:mod:`pipeline.augment`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import record
import torch
import torch.nn.functional as F

from pipeline.augment import crop_flip
from pipeline.data.datamodule import ContinualDataModule
from pipeline.experiment import compose
from pipeline.models import build_model
from pipeline.runner import run_sequence
from pipeline.tracking import Run


def bare_loop(cfg, epochs: int, device: torch.device) -> tuple[float, int]:
    """Plain PyTorch: slice, normalise, forward, backward, step, with the task held on
    ``device`` (as the pipeline holds it on a GPU). Returns (seconds, samples).

    It runs with torch's deterministic algorithms when the pipeline does
    (``trainer.deterministic``, on by default for exact resume): on a CPU they slow a ResNet's
    step measurably, a cost of that setting and not of the pipeline."""
    torch.use_deterministic_algorithms(cfg.trainer.deterministic)
    dm = ContinualDataModule(cfg.data, cfg.seed, root=cfg.paths.data_dir())
    dm.setup()
    task = dm.tasks[0]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, dm.input_shape, dm.classes_per_task).to(device)
    o = cfg.optim
    if o.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    augment = cfg.data.augment == "crop_flip"
    crops = torch.Generator(device).manual_seed(1)
    images, labels = task.train.images.to(device), task.train.labels.to(device)
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (task.mean, task.std))
    g = torch.Generator().manual_seed(0)
    samples = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=g).split(cfg.data.batch_size):
            idx = idx.to(device, non_blocking=True)
            x = (images[idx].float() / 255 - mean) / std
            if augment:  # black, normalised: what the pipeline pads with
                x = crop_flip(x, cfg.data.crop_padding, crops, fill=(-mean / std).view(1, -1))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            samples += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    torch.use_deterministic_algorithms(False)  # the pipeline's Trainer sets its own
    return seconds, samples


def pipeline_run(cfg) -> tuple[float, int]:
    result = run_sequence(cfg, Run.of(cfg))
    return result.train_seconds[0], result.train_samples[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="data")
    parser.add_argument(
        "--dataset", default="mnist", choices=["mnist", "fashion_mnist", "synthetic"]
    )
    parser.add_argument("--experiment", default="lenet_forgetting")
    parser.add_argument(
        "--resnet",
        action="store_true",
        help="the reduced ResNet-18 on generated 3x32x32 tasks with crop+flip and SGD",
    )
    parser.add_argument("--model", default="", help="conf/model/ name (default: the experiment's)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if present"
    )
    record.add_argument(parser)
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    store = tempfile.mkdtemp(prefix="bench-mlruns-")
    resnet = [
        "model=resnet18_reduced",
        "data.augment=crop_flip",
        "data.synthetic.channels=3",
        "data.synthetic.size=32",
        "data.synthetic.n_train=6000",
        "data.batch_size=32",
        "optim.name=sgd",
        "optim.lr=0.05",
        "optim.momentum=0",
    ]
    if args.resnet:
        args.dataset = "synthetic"
    cfg = compose(
        args.experiment,
        [
            f"paths.data={Path(args.root).resolve()}",
            f"data.tasks=[{{dataset: {args.dataset}}}]",
            *([f"model={args.model}"] if args.model else []),
            f"trainer.epochs={args.epochs}",
            f"trainer.threads={args.threads}",
            f"trainer.accelerator={args.device}",
            "trainer.validate_every_epoch=false",
            "tracking.log_checkpoints=false",
            f"paths.store={store}",
            "data.synthetic.n_train=60000",
            *(resnet if args.resnet else []),
        ],
    )
    bare, pipe = [], []
    for r in range(args.repeats):
        s, n = bare_loop(cfg, args.epochs, device)
        bare.append(n / s)
        s, n = pipeline_run(cfg)
        pipe.append(n / s)
        print(f"repeat {r + 1}: bare {bare[-1]:,.0f} samples/s, pipeline {pipe[-1]:,.0f} samples/s")
    b, p = statistics.median(bare), statistics.median(pipe)
    net = (
        f"reduced ResNet-18 (width {cfg.model.width}), 3x32x32, crop+flip, SGD"
        if args.resnet
        else f"CNN {cfg.model.channels} ({args.experiment})"
    )
    what = (
        f"{args.dataset} ({len(cfg.data.tasks)} task of {cfg.data.synthetic.n_train:,} "
        f"generated samples less validation)"
        if args.resnet
        else args.dataset
    )
    what += (
        f", {net}, batch {cfg.data.batch_size}, {args.epochs} epoch(s), on {args.device}, "
        f"{args.threads} threads"
        + (", torch's deterministic algorithms on both sides" if cfg.trainer.deterministic else "")
    )
    print(f"\n{what}, median of {args.repeats}:")
    print(f"  bare PyTorch loop  {b:10,.0f} training samples/s")
    print(f"  pipeline           {p:10,.0f} training samples/s")
    print(f"  ratio pipeline/bare  {p / b:.3f}")
    rows = [
        [str(i + 1), f"{x:,.0f}", f"{y:,.0f}"]
        for i, (x, y) in enumerate(zip(bare, pipe, strict=True))
    ]
    rows.append(["**median**", f"**{b:,.0f}**", f"**{p:,.0f}**"])
    body = (
        f"{what}; the bare loop and the pipeline in turn, {args.repeats} repeat(s). Training "
        "samples per second:\n\n"
        + record.table(["repeat", "bare PyTorch loop", "pipeline"], rows)
        + f"\n\nRatio of the medians, pipeline / bare: {p / b:.3f}.\n"
    )
    print()
    record.write("throughput-resnet" if args.resnet else "throughput", body, args.measured)


if __name__ == "__main__":
    main()
