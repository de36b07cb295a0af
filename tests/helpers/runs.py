"""The real experiment configs, shrunk to seconds on synthetic tasks, and a sequence run in a new
run of the config's store (or trained in memory, with no run)."""

import shutil
from pathlib import Path
from typing import Any

import torch

from helpers.stores import empty_store
from pipeline.config.schema import ExperimentConfig
from pipeline.data.datamodule import ContinualDataModule
from pipeline.experiment import compose
from pipeline.module import ContinualModule
from pipeline.results import SequenceResult
from pipeline.runner import Loop, prepare, run_sequence, train_task
from pipeline.store import DB_FILE
from pipeline.tracking import Run

#: Overrides that shrink a synthetic sequence to a second or two (5 batches of 32 a task).
TINY = (
    "trainer.epochs=1",
    "trainer.max_batches=5",
    "data.synthetic.n_train=200",
    "data.synthetic.n_test=100",
    "data.batch_size=32",
)
#: Per strategy, what shrinks it further for the smoke tests: loops of its own sized for real
#: data (GDumb retrains on its memory for the paper's 128 epochs after every task).
SMOKE = {"gdumb": ("strategies.gdumb.epochs=2",)}


def strategy_overrides(name: str) -> tuple[str, ...]:
    """``strategy=[name]`` and its smoke-test shrink (:data:`SMOKE`)."""
    return (f"strategy=[{name}]", *SMOKE.get(name, ()))


def accepted_scenario(name: str, turn: int = 0) -> str:
    """One of the scenarios the strategy works in, taken in turn (``turn``): the domain one,
    the synthetic sequence's own, first where it is one of them."""
    from pipeline.strategies import REGISTRY

    accepted = sorted(REGISTRY[name].scenarios, key=lambda s: s != "domain")
    return accepted[turn % len(accepted)]


#: The audit's setting (tests/test_unlearning.py, tests/test_approximate.py): two synthetic
#: tasks trained long enough to fit 30 canaries planted in the second (the last trained, so
#: the final model still remembers them), audited against two references.
CANARIES = (
    "data.synthetic.n_train=300",
    "trainer.epochs=8",
    "data.batch_size=32",
    "data.canaries=30",
    "data.canary_task=synthetic1",
    "audit.references=2",
)


def small_synthetic(store: Path | str, *overrides: str) -> ExperimentConfig:
    """``conf/experiment/synthetic_forgetting.yaml`` with a private MLflow store (and reports
    beside it), no bars, no figures.

    A local store that does not exist yet starts as a copy of :func:`empty_store`: MLflow
    creates a database by running every schema migration (2.7 s here), which most tests would
    otherwise pay once each. The tests of store creation itself go through the CLI."""
    reports = Path(store).parent / "reports" if "://" not in str(store) else "reports"
    cfg = compose(
        "synthetic_forgetting",
        [
            f"paths.store={store}",
            f"paths.reports={reports}",
            "trainer.progress_bar=false",
            "trainer.threads=1",
            # 0.5 s of matplotlib per run, half a small run's overhead: tests/test_runner.py
            # turns them on where it checks them
            "tracking.figures=false",
            *overrides,
        ],
    )
    folder = Path(store)
    if "://" not in str(store) and not folder.exists():
        folder.mkdir(parents=True)
        shutil.copyfile(empty_store(), folder / DB_FILE)
    return cfg


def run(cfg: ExperimentConfig, parent: str | None = None, **kwargs: Any) -> SequenceResult:
    """``run_sequence`` in a new run of the config's store and experiment."""
    return run_sequence(cfg, Run.of(cfg, parent), **kwargs)


def train_tasks(
    cfg: ExperimentConfig, scratch: Path
) -> tuple[ContinualDataModule, ContinualModule, list[list[float]]]:
    """Train every task of ``cfg``'s sequence as a run does (the runner's ``prepare`` and
    ``train_task``: the strategies' hooks, a Trainer per task, the evaluation after each) with
    no MLflow run, no checkpoint and no figure: a second where :func:`run` takes two or three.

    Returns:
        The tasks, the trained module and the test accuracies after each task.
    """
    data, module, device = prepare(cfg)
    loop = Loop(cfg, None, data, module, device, ("test",), scratch, resumed=False)
    rows = [train_task(loop, task).acc["test"] for task in data.tasks]
    return data, module, rows


def same(a: Any, b: Any) -> bool:
    """Deep equality of nested containers of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
