"""What a task sequence measured, as data: per-task records, the accuracy matrices, and the
metric values logged after each task and at the end. Pure: nothing here reads or writes a run
(:mod:`pipeline.runfiles` does), so a sweep, a comparison and the tests read the same objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline import metrics
from pipeline.data.tasks import Task
from pipeline.keys import SPLITS, acc_key, init_key, summary_key
from pipeline.strategies import Strategy


@dataclass
class TaskRecord:
    """What training one task cost and what the strategies kept afterwards.

    Attributes:
        train_seconds: training time (validation excluded).
        samples: samples trained on, after the strategies' transforms (replay adds some).
        wall_seconds: the whole task: training, validation, hooks, evaluation of every task.
        retention: the retention ledger after the task (:func:`ledger`).
    """

    train_seconds: float
    samples: int
    wall_seconds: float
    retention: dict[str, Any]

    @property
    def samples_per_second(self) -> float:
        """Training throughput of the task."""
        return self.samples / max(self.train_seconds, 1e-9)


@dataclass
class SequenceResult:
    """What a finished sequence measured.

    Attributes:
        run_id, experiment_id: the MLflow run.
        tasks, displays: task keys and display names, in sequence order.
        matrix: per split, the accuracy matrix ``R[i][j]`` (after task i, on task j).
        init: per split, the untrained model's accuracy on each task (for FWT).
        summary: per split, the summary metrics of :func:`pipeline.metrics.summarize`.
        records: per task, its cost and retention ledger.
    """

    run_id: str
    experiment_id: str
    tasks: list[str]
    displays: list[str]
    matrix: dict[str, np.ndarray]
    init: dict[str, list[float]]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    records: list[TaskRecord] = field(default_factory=list)

    @property
    def train_seconds(self) -> list[float]:
        return [r.train_seconds for r in self.records]

    @property
    def train_samples(self) -> list[int]:
        return [r.samples for r in self.records]

    def finish(self, rows: dict[str, list[list[float]]]) -> None:
        """Set the matrices from the rows evaluated after each task, and their summaries."""
        self.matrix = {s: np.array(r) for s, r in rows.items()}
        self.summary = {s: metrics.summarize(self.matrix[s], self.init[s]) for s in rows}

    def final_metrics(self) -> dict[str, float]:
        """The run's closing metrics, in percent: each split's summary (but ``avg_acc``, whose
        running value :func:`task_metrics` logged after the last task is the final one), the
        untrained accuracies, and the total training time."""
        splits = list(self.matrix)
        return (
            {
                summary_key(s, k): metrics.percent(v)
                for s in splits
                for k, v in self.summary[s].items()
                if k != "avg_acc"
            }
            | {
                init_key(n, s): metrics.percent(self.init[s][j])
                for s in splits
                for j, n in enumerate(self.tasks)
            }
            | {"time/train_total_s": round(sum(self.train_seconds), 3)}
        )

    def matrix_record(self, scenario: str) -> dict[str, Any]:
        """The accuracy matrices as one JSON-able record (what :mod:`pipeline.runfiles`
        writes and reads back)."""
        return {
            "rows": "after training task i",
            "columns": "accuracy on task j",
            "scenario": scenario,
            "tasks": self.tasks,
            "display": self.displays,
            **{
                s: {
                    "matrix": self.matrix[s].tolist(),
                    "init": self.init[s],
                    "summary": self.summary[s],
                }
                for s in self.matrix
            },
        }

    @classmethod
    def from_records(
        cls, run_id: str, experiment_id: str, acc: dict[str, Any], kept: list[dict[str, Any]]
    ) -> SequenceResult:
        """The result written as :meth:`matrix_record` and the ledger records.

        Raises:
            KeyError, TypeError, ValueError: the records are not of that shape.
        """
        splits = [s for s in SPLITS if s in acc]
        return cls(
            run_id,
            experiment_id,
            list(acc["tasks"]),
            list(acc["display"]),
            {s: np.array(acc[s]["matrix"], dtype=float) for s in splits},
            {s: list(acc[s]["init"]) for s in splits},
            {s: dict(acc[s]["summary"]) for s in splits},
            [TaskRecord(**{k: v for k, v in r.items() if k != "task"}) for r in kept],
        )


@dataclass(frozen=True)
class AccuracyAlong:
    """Each task's accuracy along the sequence, on one split, in % rounded to 2 decimals.

    Attributes:
        split: the split evaluated (``test`` or ``val``).
        tasks: the task keys, in sequence order: the rows' labels (the task just trained) and
            the columns' (the task evaluated).
        rows: ``rows[i][j]``, the accuracy on task j after training task i (``R[i][j]``).
        init: the untrained model's accuracy on each task.
    """

    split: str
    tasks: list[str]
    rows: list[list[float]]
    init: list[float]


def accuracy_along(result: SequenceResult) -> list[AccuracyAlong]:
    """Each task's accuracy along the sequence, per split the run evaluated, test first (the
    split that is reported; a sweep's trials have only val)."""
    return [
        AccuracyAlong(
            s,
            list(result.tasks),
            [[metrics.percent(a) for a in row] for row in result.matrix[s]],
            [metrics.percent(a) for a in result.init[s]],
        )
        for s in sorted(result.matrix, key=lambda s: (s != "test", s))
    ]


def ledger(strategies: Sequence[Strategy[Any]]) -> dict[str, Any]:
    """The retention ledger: raw samples kept (per task), their bytes, derived-state bytes."""
    raw: dict[str, int] = {}
    raw_bytes = state_bytes = 0
    for s in strategies:
        r = s.retention()
        for name, n in r.raw_samples.items():
            raw[name] = raw.get(name, 0) + n
        raw_bytes += r.raw_bytes
        state_bytes += r.state_bytes
    return {
        "raw_samples": sum(raw.values()),
        "raw_from": raw,
        "raw_bytes": raw_bytes,
        "state_bytes": state_bytes,
    }


def task_metrics(
    task: Task, tasks: Sequence[Task], rows: dict[str, list[list[float]]], record: TaskRecord
) -> dict[str, float]:
    """Everything known after ``task`` (logged at step = its index): accuracy on every task
    and the running average accuracy (percent), time and samples, the retention ledger.

    ``time/train_s`` is training alone; ``time/task_wall_s`` adds the per-epoch validation, the
    strategies' task hooks and the evaluation of every task.
    """
    values: dict[str, float] = {}
    for s in rows:
        values |= {acc_key(t.name, s): metrics.percent(rows[s][-1][t.index]) for t in tasks}
        values[summary_key(s, "avg_acc")] = metrics.percent(
            metrics.average_accuracy(np.array(rows[s]), task.index)
        )
    kept = record.retention
    return values | {
        # rounded as MLflow shows them: to the millisecond, and one sample a second
        "time/train_s": round(record.train_seconds, 3),
        "time/task_wall_s": round(record.wall_seconds, 3),
        "train/samples": record.samples,
        "train/samples_per_s": round(record.samples_per_second, 1),
        "retention/raw_samples": kept["raw_samples"],
        "retention/raw_bytes": kept["raw_bytes"],
        "retention/state_bytes": kept["state_bytes"],
        **{f"retention/raw_from/{t.name}": kept["raw_from"].get(t.name, 0) for t in tasks},
    }


@dataclass
class Progress:
    """Where a sequence stands after a task: what a resumed run needs to carry on exactly.

    Attributes:
        next_task: the index of the task to train next.
        rows: per split, the accuracy rows evaluated after each task so far.
        init: per split, the untrained model's accuracies.
        records: per task so far, its cost and retention ledger.
        rng: the random number generators' states after the task (:func:`pipeline.runner`'s
            ``rng_state``).
        logged: the metric records of the last task (values and training curves): logged
            right after its checkpoint, so a resumed run logs those of them that are missing.
    """

    next_task: int
    rows: dict[str, list[list[float]]]
    init: dict[str, list[float]]
    records: list[TaskRecord] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    logged: list[list[Any]] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        """As plain containers (for a checkpoint)."""
        return {
            "next_task": self.next_task,
            "rows": self.rows,
            "init": self.init,
            "records": [asdict(r) for r in self.records],
            "rng": self.rng,
            "logged": self.logged,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Progress:
        return cls(
            int(record["next_task"]),
            {s: [list(map(float, r)) for r in rows] for s, rows in record["rows"].items()},
            {s: list(map(float, v)) for s, v in record["init"].items()},
            [TaskRecord(**r) for r in record["records"]],
            dict(record["rng"]),
            [list(m) for m in record["logged"]],
        )
