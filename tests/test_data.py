"""Tasks in memory: validation carving, normalisation, batch slicing, loaders."""

import numpy as np
import pytest
import torch

from pipeline.config.schema import DataConfig, SyntheticConfig, TaskConfig
from pipeline.config.validation import check_values
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.loading import load_task, make_synthetic
from pipeline.data.tasks import (
    BatchIndices,
    DataError,
    Split,
    Task,
    TaskDataset,
    carve_validation,
)
from pipeline.experiment import compose


def split(n: int) -> Split:
    return Split(
        torch.arange(n).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28).clone(),
        torch.arange(n) % 10,
        torch.arange(n),
    )


def test_validation_is_carved_deterministically_and_disjoint():
    train = split(200)
    a_train, a_val = carve_validation(train, 0.1, seed=0)
    b_train, b_val = carve_validation(train, 0.1, seed=0)
    _, c_val = carve_validation(train, 0.1, seed=1)
    assert len(a_val) == 20 and len(a_train) == 180
    assert torch.equal(a_val.images, b_val.images) and torch.equal(a_train.labels, b_train.labels)
    assert not torch.equal(a_val.images, c_val.images)
    ids = torch.cat([a_train.images[:, 0, 0, 0], a_val.images[:, 0, 0, 0]]).sort().values
    assert torch.equal(ids, torch.arange(200).to(torch.uint8))  # disjoint and complete


@pytest.mark.parametrize("fraction", [0.0001, 0.9999])
def test_validation_fraction_that_empties_a_split(fraction):
    with pytest.raises(DataError, match="val_fraction"):
        carve_validation(split(50), fraction, seed=0)


def test_normalisation_uses_the_tasks_own_statistics():
    s = split(10)
    mnist = Task(0, "mnist", "MNIST", 0.1307, 0.3081, s, s, s, {})
    fashion = Task(1, "fashion_mnist", "Fashion-MNIST", 0.2860, 0.3530, s, s, s, {})
    index = torch.tensor([3, 7])
    for task in (mnist, fashion):
        batch = TaskDataset([(s, task)], [mnist, fashion])[index]
        expected = (s.images[index].float() / 255 - task.mean) / task.std
        assert torch.allclose(batch.x, expected)
        assert batch.x.dtype == torch.float32 and batch.x.shape == (2, 1, 28, 28)
        assert torch.equal(batch.y, s.labels[index])
        assert batch.task.tolist() == [task.index] * 2
        assert torch.equal(batch.id, s.ids[index])


def test_mixed_tasks_keep_their_own_normalisation():
    s = split(4)
    a = Task(0, "a", "A", 0.1, 0.2, s, s, s, {})
    b = Task(1, "b", "B", 0.5, 0.4, s, s, s, {})
    batch = TaskDataset([(s, a), (s, b)], [a, b])[torch.tensor([1, 5])]
    assert batch.task.tolist() == [0, 1]
    assert torch.allclose(batch.x[0], (s.images[1].float() / 255 - 0.1) / 0.2)
    assert torch.allclose(batch.x[1], (s.images[1].float() / 255 - 0.5) / 0.4)


def test_batch_indices_shuffle_per_epoch_and_cap():
    sampler = BatchIndices(10, 4, shuffle=True, seed=0)
    first, second = torch.cat(list(sampler)), torch.cat(list(sampler))
    assert sorted(first.tolist()) == list(range(10)) and not torch.equal(first, second)
    again = BatchIndices(10, 4, shuffle=True, seed=0)
    assert torch.equal(torch.cat(list(again)), first)
    assert len(sampler) == 3 and [len(b) for b in sampler] == [4, 4, 2]
    assert len(BatchIndices(10, 4, shuffle=True, max_batches=2)) == 2
    ordered = BatchIndices(10, 4, shuffle=False)
    assert torch.cat(list(ordered)).tolist() == list(range(10))


def test_synthetic_tasks_are_fixed_by_seed_and_differ():
    cfg = SyntheticConfig(n_train=100, n_test=50)
    (a, _), (b, _), (c, _) = make_synthetic(0, cfg), make_synthetic(0, cfg), make_synthetic(1, cfg)
    assert a.images.dtype == torch.uint8 and a.images.shape == (100, 1, 28, 28)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [10] * 10


def test_datamodule_serves_current_task_and_all_tasks_for_eval():
    cfg = compose("synthetic_forgetting").data
    dm = ContinualDataModule(cfg, seed=0)
    dm.setup()
    assert [t.name for t in dm.tasks] == ["synthetic0", "synthetic1"]
    dm.set_task(1)
    batch = next(iter(dm.train_dataloader()))
    assert batch.task.unique().tolist() == [1] and len(batch.y) == cfg.batch_size
    val = list(dm.val_dataloader())
    assert sum(len(b.y) for b in val) == len(dm.tasks[1].val) == 100
    tests = dm.eval_loaders("test")
    assert [sum(len(b.y) for b in loader) for loader in tests] == [500, 500]
    with pytest.raises(IndexError):
        dm.set_task(2)


def test_missing_dataset_files_raise_data_error(tmp_path):
    cfg = DataConfig(tasks=[TaskConfig(dataset="mnist", name="mnist")])
    with pytest.raises(DataError, match="make data"):
        load_task(0, cfg.tasks[0], cfg, root=tmp_path)


@pytest.mark.slow
def test_real_tasks_load_with_their_sizes():
    cfg = compose("seed_forgetting").data
    dm = ContinualDataModule(cfg)
    dm.setup()
    for task in dm.tasks:
        assert (len(task.train), len(task.val), len(task.test)) == (54000, 6000, 10000)
        x = TaskDataset([(task.train, task)], dm.tasks)[torch.arange(len(task.train))].x
        assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


def test_a_corrupt_dataset_file_is_named(tmp_path):
    from pipeline.catalogue import dataset

    spec = dataset("mnist")
    raw = spec.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    first, *_ = spec.md5
    (raw / first).write_bytes(b"not the images")
    cfg = DataConfig(tasks=[TaskConfig(dataset="mnist", name="mnist")])
    with pytest.raises(DataError, match=f"{raw / first} fails its MD5 check"):
        load_task(0, cfg.tasks[0], cfg, root=tmp_path)


def test_a_loader_over_one_split_shares_its_images():
    """Loaders are built per fit and per evaluation: one split's images are used in place (the
    process holds each image once); only a joint loader concatenates."""
    dm = ContinualDataModule(compose("synthetic_forgetting").data, seed=0)
    dm.setup()
    one = TaskDataset([(dm.tasks[0].train, dm.tasks[0])], dm.tasks)
    assert one.images.data_ptr() == dm.tasks[0].train.images.data_ptr()
    both = TaskDataset([(t.train, t) for t in dm.tasks], dm.tasks)
    assert len(both) == len(dm.tasks[0].train) + len(dm.tasks[1].train)
    assert both.task.unique().tolist() == [0, 1]


def test_a_test_only_load_never_reads_a_training_file(tmp_path, monkeypatch):
    """The landscape evaluates test samples only: reading both datasets' training files again
    was the last memory peak of `make forget`. Only MNIST's test files exist here: a test-only
    load reads them, a full load fails on the missing training file."""
    from pipeline.catalogue import dataset
    from pipeline.data import loading as tasks_module
    from pipeline.data.sources import write_idx

    raw = dataset("mnist").raw_dir(tmp_path)
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", (np.arange(20) % 10).astype(np.uint8))
    monkeypatch.setattr(tasks_module, "verify", lambda spec, root: {"fake": "0"})
    tasks_module.release_raw_datasets()
    cfg = DataConfig(tasks=[TaskConfig(dataset="mnist")])
    check_values(cfg)
    dm = ContinualDataModule(cfg, root=tmp_path, test_only=True)
    dm.setup()
    (task,) = dm.tasks
    assert len(task.train) == len(task.val) == 0 and len(task.test) == 20
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        ContinualDataModule(cfg, root=tmp_path).setup()
