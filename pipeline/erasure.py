"""The right to erasure: remove given training samples from everything a run stored.

A deletion request names samples of one task by id (their index in the dataset split). Every
per-task checkpoint of the run is rewritten with those samples removed from each strategy's
state (a replay buffer drops them and refuses them later; a strategy that keeps no raw data has
nothing to remove). Each file is written under a temporary name and moved into place, so a crash
leaves either the old or the new file, never half of one. The run records every request in
``erasures.json`` and the ``retention/erased_samples`` metric.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.runner import load_checkpoint
from pipeline.tracking import client_for, local_path

ERASURES = "erasures.json"


class ErasureError(ValueError):
    """The request cannot be carried out (unknown run or task, no checkpoints)."""


def erase(store: str | Path, run_id: str, task: str, ids: Sequence[int]) -> dict[str, Any]:
    """Remove samples ``ids`` of task ``task`` from every checkpoint of run ``run_id``.

    Returns:
        The record appended to the run's ``erasures.json``: time, task, ids and the samples
        removed from each checkpoint.

    Raises:
        ErasureError: unknown run or task name, or a run without checkpoints.
    """
    client = client_for(store)
    try:
        run = client.get_run(run_id)
    except Exception as e:  # MlflowException: the id is not in this store
        raise ErasureError(f"no run {run_id} in the store {store}/") from e
    art = local_path(run.info.artifact_uri)
    paths = sorted((art / "checkpoints").glob("*.ckpt"))
    if not paths:
        raise ErasureError(f"run {run_id} has no checkpoints to erase from")
    wanted = torch.tensor(list(ids), dtype=torch.long)
    removed: dict[str, int] = {}
    for path in paths:
        module, cfg, _ = load_checkpoint(path)
        names = [t.name for t in cfg.data.tasks]
        if task not in names:
            raise ErasureError(f"task '{task}' is not in run {run_id} (tasks: {', '.join(names)})")
        n = sum(s.erase(names.index(task), wanted) for s in module.strategies)
        removed[path.name] = n
        if n:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            ckpt["strategies"] = {s.name: s.state_dict() for s in module.strategies}
            tmp = path.with_name(f".{path.name}.erasing")
            torch.save(ckpt, tmp)
            os.replace(tmp, path)
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": task,
        "ids": [int(i) for i in ids],
        "removed": removed,
    }
    log_path = art / ERASURES
    history = json.loads(log_path.read_text()) if log_path.exists() else []
    history.append(record)
    client.log_text(run_id, json.dumps(history, indent=2), ERASURES)
    total = sum(sum(r["removed"].values()) for r in history)
    client.log_metric(run_id, "retention/erased_samples", total, step=len(history))
    client.set_tag(run_id, "erasures", str(len(history)))
    return record
