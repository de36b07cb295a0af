"""The settings published protocols fix: training counted in iterations per task, images padded
(MNIST's 28x28 to 32x32), pixels not normalised, the class order shuffled per seed."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers.runs import run, same, small_synthetic, train_tasks

from pipeline.data.tasks import TaskDataset
from pipeline.experiment import compose

TINY = ("data.synthetic.n_train=200", "data.synthetic.n_test=50", "data.batch_size=32")


def test_iterations_count_optimizer_steps_across_epochs(tmp_path: Path):
    # 180 training samples (10% held out) in batches of 32: an epoch is 6 steps
    one_epoch = small_synthetic(tmp_path / "a", *TINY, "trainer.epochs=1")
    six = small_synthetic(tmp_path / "b", *TINY, "trainer.iterations=6", "trainer.epochs=50")
    seven = small_synthetic(tmp_path / "c", *TINY, "trainer.iterations=7")
    _, a, _ = train_tasks(one_epoch, tmp_path)
    _, b, _ = train_tasks(six, tmp_path)
    assert same(a.state_dict(), b.state_dict())  # 6 iterations are that epoch, not 50 of them
    result = run(seven)
    # the seventh step opens a second, reshuffled epoch: one more full batch
    assert [r.samples for r in result.records] == [180 + 32, 180 + 32]


def test_padding_surrounds_every_image_with_zeros(tmp_path: Path):
    cfg = small_synthetic(tmp_path / "s", *TINY, "data.pad=2", "trainer.epochs=1")
    data, _, rows = train_tasks(cfg, tmp_path)
    assert data.input_shape == (1, 32, 32)  # the synthetic tasks are 28x28
    for task in data.tasks:
        images = task.train.images
        inner = images[:, :, 2:-2, 2:-2]
        assert images.sum() == inner.sum() and bool((inner > 0).any())
    assert all(0 <= acc <= 1 for row in rows for acc in row)


def test_pixels_are_only_scaled_when_normalisation_is_off(tmp_path: Path):
    plain = small_synthetic(tmp_path / "s", *TINY, "data.normalise=false", "trainer.epochs=1")
    data, _, _ = train_tasks(plain, tmp_path)
    task = data.tasks[0]
    batch = TaskDataset([(task.train, task)], data.tasks)[torch.arange(16)]  # type: ignore[list-item]
    assert torch.allclose(batch.x, task.train.images[:16].float() / 255)
    normalised = small_synthetic(tmp_path / "t", *TINY, "trainer.epochs=1")
    data, _, _ = train_tasks(normalised, tmp_path)
    assert abs(data.tasks[0].mean[0]) > 0.01  # the default normalises: its mean is not 0


def test_the_class_order_can_follow_the_run_seed():
    def order(seed: int) -> list[list[int]]:
        cfg = compose("split_mnist", ["data.class_order_seed=${seed}", f"seed={seed}"])
        return [t.classes for t in cfg.data.tasks]

    one, two = order(1), order(2)
    assert one != two and order(1) == one
    assert sorted(c for task in one for c in task) == list(range(10))
    assert order(1) != [t.classes for t in compose("split_mnist", ["seed=1"]).data.tasks]


def test_permuted_mnist_may_keep_its_first_task_the_plain_images():
    """``data.permute_first=false``: van de Ven and Tolias's Permuted MNIST, whose first task is
    MNIST itself; the default permutes every task (Avalanche's, Mammoth's)."""
    every = compose("permuted_mnist", ["data.n_tasks=3", "data.benchmark_seed=7"]).data.tasks
    plain = compose(
        "permuted_mnist", ["data.n_tasks=3", "data.benchmark_seed=7", "data.permute_first=false"]
    ).data.tasks
    assert [t.permutation for t in every] == [7, 8, 9]
    assert [t.permutation for t in plain] == [-1, 8, 9]
    assert len({t.name for t in plain}) == 3  # still three tasks told apart
