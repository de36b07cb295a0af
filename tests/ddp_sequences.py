"""Run several small task sequences as one distributed job (tests/test_distributed.py).

``PYTHONPATH=. python tests/ddp_sequences.py STORE OUT CASE...`` starts with ``--devices``
processes (2: Lightning's launcher re-runs this script once more, with ``LOCAL_RANK=1``) and
trains, in that process group, one sequence per CASE (``strategy:scenario``, or
``strategy:scenario:augment``) on the synthetic tasks into the MLflow store STORE. The runner
itself compares the processes' weights and strategy states after every task
(``pipeline.distributed.check_replicas``) and fails the sequence if they differ. Rank 0 writes
OUT (JSON): each case's run id, and whether a deliberate drift (rank 1's weights nudged after
the last case) was caught.

The shapes are shared with the test (:func:`overrides`), which trains the same cases in one
process and compares the weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from pipeline import distributed
from pipeline.experiment import compose
from pipeline.runner import run_sequence
from pipeline.tracking import Run

#: Each strategy's state shrunk to the synthetic tasks (every count divisible by 2 processes).
SHRINK = {
    "replay": ["strategies.replay.size=64"],
    "agem": ["strategies.agem.size=64", "strategies.agem.sample_size=32"],
    "derpp": ["strategies.derpp.size=64"],
    "ewc": ["strategies.ewc.fisher_samples=96"],
    "online_ewc": ["strategies.online_ewc.fisher_samples=96"],
    "mas": ["strategies.mas.samples=96"],
    "gpm": ["strategies.gpm.samples=96"],
    "gem": ["strategies.gem.size=32"],
    "rwalk": ["strategies.rwalk.fisher_update_after=2"],
    "der": ["strategies.der.size=64"],
    "gdumb": ["strategies.gdumb.size=64", "strategies.gdumb.epochs=4"],
    "icarl": ["strategies.icarl.budget=10"],
    "dgr": ["strategies.dgr.hidden=32", "strategies.dgr.latent=8"],
    "dgr_distill": ["strategies.dgr_distill.hidden=32", "strategies.dgr_distill.latent=8"],
}


def overrides(case: str, store: str, devices: int) -> list[str]:
    """The config of one case (``strategy:scenario``, or ``strategy:scenario:augment``, or
    ``strategy:scenario:streamed``) on ``devices`` processes."""
    strategy, scenario, *extra = case.split(":")
    shards = os.environ.get("PIPELINE_TEST_SHARDS", "").split(",")
    streamed = [
        "data.tasks=[" + ",".join(f"{{dataset: shards, path: '{p}'}}" for p in shards) + "]",
        "data.storage=streamed",
    ]
    return [
        f"strategy=[{strategy}]",
        f"scenario={scenario}",
        *(f"data.augment={a}" for a in extra if a != "streamed"),
        *(streamed if "streamed" in extra else []),
        f"paths.store={store}",
        f"trainer.devices={devices}",
        "trainer.accelerator=cpu",
        "trainer.epochs=2",
        "trainer.max_batches=3",
        "trainer.progress_bar=false",
        "trainer.threads=1",
        "trainer.log_every_n_steps=2",
        "tracking.figures=false",
        "data.batch_size=32",
        "data.synthetic.n_train=256",
        "data.synthetic.n_test=64",
        # Plain SGD: the 1-process and 2-process runs differ only by the order of float sums,
        # which Adam's division by a tiny second moment would blow up.
        "optim.name=sgd",
        "optim.lr=0.05",
        "optim.momentum=0",
        *SHRINK.get(strategy, []),
    ]


def main(store: str, out: str, cases: list[str], devices: int) -> None:
    runs = {}
    for case in cases:
        cfg = compose("synthetic_forgetting", overrides(case, store, devices))
        runs[case] = run_sequence(cfg, Run.of(cfg)).run_id
    # The check must be able to fail: nudge one replica and ask again.
    model = torch.nn.Linear(2, 2)
    torch.nn.init.zeros_(model.weight)
    if distributed.rank() == 1:
        with torch.no_grad():
            model.weight[0, 0] += 1e-6
    try:
        distributed.check_replicas({"weights": list(model.parameters())}, torch.device("cpu"))
        caught = ""
    except distributed.ReplicaDrift as e:
        caught = str(e)
    if distributed.is_main():
        report = {"runs": runs, "drift": caught, "world": distributed.world()}
        Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    args = sys.argv[1:]
    devices = 2
    if args[0] == "--devices":
        devices, args = int(args[1]), args[2:]
    main(args[0], args[1], args[2:], devices)
