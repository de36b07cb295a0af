"""The metric keys a run logs to MLflow, in one place (docs/metrics.md lists them all).

Accuracies, and differences of accuracies, are logged in percent
(:func:`pipeline.metrics.percent`). Keys start with the split and stay short, so the runs
table's narrow columns tell them apart: ``test/mnist``, ``test/avg_acc``, ``test/bwt``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipeline.metrics import SUMMARY_NAMES

SPLITS = ("val", "test")  # val: model selection and sweeps; test: reporting only


def acc_key(task: str, split: str) -> str:
    """The metric of ``task``'s accuracy on ``split`` (percent), logged after each task
    (step = the index of the task just trained), so its last value is the final accuracy. A
    task may not be named like a summary metric (:data:`RESERVED_TASK_NAMES`)."""
    return f"{split}/{task}"


def summary_key(split: str, name: str) -> str:
    """The metric of one of a split's summary values (:func:`pipeline.metrics.summarize`),
    in percent. ``avg_acc`` is logged after every task (its running value), the others at
    the end."""
    return f"{split}/{name}"


def init_key(task: str, split: str) -> str:
    """The metric of the untrained model's accuracy on ``task`` (percent; for FWT)."""
    return f"{split}/init/{task}"


def has_accuracies(keys: Iterable[str]) -> bool:
    """Whether metric ``keys`` hold a split's running average accuracy, which is logged after
    every task: whether the run finished a task."""
    logged = set(keys)
    return any(summary_key(s, "avg_acc") in logged for s in SPLITS)


def table_columns(tasks: Sequence[str], split: str = "test") -> list[str]:
    """The runs table's columns to compare runs by (MLflow's column keys): strategy, scenario,
    each task's final accuracy, average accuracy and BWT."""
    tags = [f"tags.`{t}`" for t in ("strategy", "scenario")]
    metrics_ = [acc_key(t, split) for t in tasks] + [
        summary_key(split, k) for k in ("avg_acc", "bwt")
    ]
    return tags + [f"metrics.`{m}`" for m in metrics_]


# A task's accuracy key would be a summary's, or the prefix of the untrained accuracies.
RESERVED_TASK_NAMES = (*SUMMARY_NAMES, "init")
