"""The task lists of the standard benchmarks a config names (``data.benchmark``), expanded
before validation checks each task: Split of any dataset of the catalogue, Permuted and
Rotated MNIST."""

from __future__ import annotations

import numpy as np

from pipeline.config.schema import DataConfig, TaskConfig, dataset_classes


def benchmark_tasks(data: DataConfig) -> list[TaskConfig]:
    """The task list of a standard benchmark (see :class:`DataConfig`)."""
    benchmark, n_tasks, seed = data.benchmark, data.n_tasks, data.benchmark_seed
    if benchmark in ("split", "split_mnist"):
        return split_tasks(
            data.dataset or "mnist", n_tasks, data.classes_per_task, data.class_order_seed
        )
    if benchmark == "permuted_mnist":
        first = 0 if data.permute_first else 1  # the plain images first, where it is false
        return [
            TaskConfig(dataset="mnist", permutation=seed + i if i >= first else -1)
            for i in range(n_tasks)
        ]
    return [TaskConfig(dataset="mnist", rotation=i * 180.0 / n_tasks) for i in range(n_tasks)]


def split_tasks(dataset: str, n_tasks: int, per_task: int, order_seed: int) -> list[TaskConfig]:
    """Class-incremental splits of a dataset: ``n_tasks`` tasks of ``per_task`` classes each
    (0: the classes spread evenly over the tasks), in the labels' order or, with
    ``order_seed >= 0``, in an order shuffled by it (numpy's ``RandomState``, as the field's
    code fixes its class orders). Tasks are named by their classes (``mnist_01``) where every
    class is one digit, else by their position (``cifar100_t0``)."""
    total = dataset_classes(dataset)
    order = np.arange(total)
    if order_seed >= 0:
        order = np.random.RandomState(order_seed).permutation(total)
    if per_task:
        chunks = [order[i * per_task : (i + 1) * per_task] for i in range(n_tasks)]
    else:
        chunks = np.array_split(order, n_tasks)
    named = total <= 10
    return [
        TaskConfig(
            dataset=dataset,
            name="" if named else f"{dataset}_t{i}",
            classes=[int(c) for c in chunk],
        )
        for i, chunk in enumerate(chunks)
    ]
