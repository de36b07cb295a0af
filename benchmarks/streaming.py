"""Streaming a dataset larger than memory: peak memory and training throughput, against the same
network on data held in memory.

Generates datasets of random 3x32x32 uint8 images (CIFAR's shape) of ``--sizes`` GB each, written
once as litdata shards (``pipeline.data.shards``, kept in ``--dir`` for the next run), then
trains one task on each for ``--batches`` batches of 32 in the shuffled order litdata reads the
shards in (the order of the chunks shuffled, then the samples within them), each run in a
process of its own so that its peak RSS is its own:

- the largest dataset and the smallest, streamed (``data.storage=streamed``): peak RSS must
  not grow with the data;
- the smallest held in memory (``data.storage=memory``): the throughput streaming is held to.

The network is the founding CNN (``conf/model/cnn.yaml``) widened to three input channels: a
small network, so that reading the data, not the arithmetic, would show. The result goes to
``docs/measured/streaming.md``.

    .venv/bin/python benchmarks/streaming.py                   # 8 GB and 1 GB, 2,000 batches
    .venv/bin/python benchmarks/streaming.py --sizes 1,0.25 --batches 200   # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import record

from pipeline.data.shards import (
    MANIFEST,
    SPLITS,
    Manifest,
    write_items,
    write_manifest,
    write_rows,
)

SHAPE = (3, 32, 32)
PER_CHUNK = 8192  # samples a writer input holds (24 MB)
HELD_OUT = 2048  # validation and test samples of each dataset


def labels_of(start: int, size: int, seed: int) -> np.ndarray:
    """The labels of the chunk at ``start``: their own random stream, so that the parent can
    write every label without making any image."""
    return np.random.default_rng([seed, start, 1]).integers(0, 10, size)


def items(spec: tuple[int, int, int]) -> Iterator[dict[str, object]]:
    """The items of one chunk of a split (run by litdata's writer process)."""
    start, size, seed = spec
    images = np.random.default_rng([seed, start, 0]).integers(0, 256, (size, *SHAPE), np.uint8)
    for i, (image, label) in enumerate(zip(images, labels_of(start, size, seed), strict=True)):
        yield {"image": image, "label": int(label), "id": start + i, "row": start + i}


def generate(where: Path, gigabytes: float) -> None:
    """The shards of a generated dataset of ``gigabytes`` GB of training images, written one
    chunk at a time (reused when ``where`` holds them already)."""
    n = int(gigabytes * 2**30 / np.prod(SHAPE))
    sizes = {"train": n, "val": HELD_OUT, "test": HELD_OUT}
    if (where / MANIFEST).is_file() and json.loads((where / MANIFEST).read_text())[
        "sizes"
    ] == sizes:
        return
    started = time.perf_counter()
    for seed, split in enumerate(SPLITS):
        specs = [
            (i, min(PER_CHUNK, sizes[split] - i), seed) for i in range(0, sizes[split], PER_CHUNK)
        ]
        write_items(str(where / split), items, specs)
        labels = np.concatenate([labels_of(*spec) for spec in specs])
        write_rows(str(where / split), labels, np.arange(sizes[split]))
    # the statistics of uniform random bytes: mean 127.5/255, std 73.9/255
    manifest = Manifest(SHAPE, 10, (0.5,) * 3, (0.2898,) * 3, sizes, 0.0, 0, f"random-{n}")
    write_manifest(str(where), manifest)
    print(f"wrote {gigabytes:g} GB ({n:,} images) in {time.perf_counter() - started:.0f} s")


def child(shards: str, storage: str, batches: int, threads: int) -> None:
    """One measured run (in its own process): prints a JSON line."""
    from pipeline.experiment import compose
    from pipeline.runner import run_sequence
    from pipeline.tracking import Run

    store = tempfile.mkdtemp(prefix="bench-mlruns-")
    cfg = compose(
        "lenet_forgetting",
        [
            f"data.tasks=[{{dataset: shards, path: '{shards}'}}]",
            f"data.storage={storage}",
            "data.batch_size=32",
            "data.eval_batch_size=512",
            "trainer.epochs=1",
            f"trainer.max_batches={batches}",
            f"trainer.threads={threads}",
            "trainer.validate_every_epoch=false",
            "trainer.progress_bar=false",
            "tracking.log_checkpoints=false",
            f"paths.store={store}",
        ],
    )
    result = run_sequence(cfg, Run.of(cfg))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = {"samples_per_s": result.train_samples[0] / result.train_seconds[0], "peak": peak}
    print("RESULT " + json.dumps(report), flush=True)


def measure(shards: Path, storage: str, batches: int, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(shards), storage, str(batches), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        shards, storage, batches, threads = sys.argv[2:6]
        child(shards, storage, int(batches), int(threads))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="8,1", help="GB of training images, largest first")
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "pipeline-bench-shards"))
    record.add_argument(parser)
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    folders = {g: Path(args.dir) / f"random-{g:g}gb" for g in sizes}
    for g, where in folders.items():
        generate(where, g)
    big, small = max(sizes), min(sizes)
    runs = [(big, "streamed"), (small, "streamed"), (small, "memory")]
    results = {}
    for g, storage in runs:
        results[(g, storage)] = measure(folders[g], storage, args.batches, args.threads)
        r = results[(g, storage)]
        speed, peak = r["samples_per_s"], r["peak"] / 2**30
        print(f"{g:g} GB {storage}: {speed:,.0f} samples/s, peak RSS {peak:.2f} GiB", flush=True)
    rss = results[(big, "streamed")]["peak"] / results[(small, "streamed")]["peak"]
    memory = results[(small, "memory")]["samples_per_s"]
    speed_big = results[(big, "streamed")]["samples_per_s"] / memory
    speed = results[(small, "streamed")]["samples_per_s"] / memory
    rows = [
        [f"{g:g} GB", storage, f"{r['samples_per_s']:,.0f}", f"{r['peak'] / 2**30:.2f}"]
        for (g, storage), r in results.items()
    ]
    body = (
        f"Random 3x32x32 uint8 images (CIFAR's shape), {args.batches:,} batches of 32 in "
        f"litdata's shuffled order, the founding CNN on 3 channels, {args.threads} threads, "
        "one process per run:\n\n"
        + record.table(["training images", "held", "training samples/s", "peak RSS (GiB)"], rows)
        + f"\n\nPeak RSS streaming {big:g} GB / streaming {small:g} GB: {rss:.3f}. "
        f"Throughput streaming {big:g} GB / {small:g} GB in memory: {speed_big:.3f}; "
        f"streaming {small:g} GB / the same in memory: {speed:.3f}.\n"
    )
    print(body)
    record.write("streaming", body, args.measured)


if __name__ == "__main__":
    main()
