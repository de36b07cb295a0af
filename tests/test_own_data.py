"""The user's own data as tasks: an image folder and arrays, any size and 1 or 3 channels; a
sequence whose tasks differ converted by the config's rule or refused in one line; broken files
named in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.archives import image_folder, npz_arrays
from helpers.runs import TINY, run, small_synthetic

from pipeline.config.schema import DataConfig, TaskConfig
from pipeline.config.validation import check_values
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.loading import sequence_shape
from pipeline.data.tasks import DataError
from pipeline.errors import ConfigError


def data_config(*tasks: TaskConfig, **kwargs: object) -> DataConfig:
    cfg = DataConfig(tasks=list(tasks), **kwargs)  # type: ignore[arg-type]
    check_values(cfg)
    return cfg


def loaded(cfg: DataConfig) -> ContinualDataModule:
    dm = ContinualDataModule(cfg)
    dm.setup()
    return dm


def test_an_image_folder_is_a_task_with_a_carved_test_split(tmp_path: Path) -> None:
    images, labels = image_folder(
        tmp_path / "pets", ("dog", "cat", "bird"), per_class=10, size=(8, 12)
    )
    cfg = data_config(TaskConfig(dataset="folder", path=str(tmp_path / "pets")))
    assert cfg.tasks[0].name == "pets"
    assert sequence_shape(cfg) == ((3, 8, 12), [3])
    (task,) = loaded(cfg).tasks
    assert len(task.train) + len(task.val) + len(task.test) == 30
    assert len(task.test) == 6  # data.test_fraction: 0.2
    # every sample is one of the folder's images with its class (sorted names: bird, cat, dog)
    everything = torch.cat([task.train.images, task.val.images, task.test.images])
    got = {
        (bytes(x.numpy().tobytes()), int(y))
        for x, y in zip(
            everything,
            torch.cat([task.train.labels, task.val.labels, task.test.labels]),
            strict=True,
        )
    }
    assert got == {(bytes(x.tobytes()), int(y)) for x, y in zip(images, labels, strict=True)}


def test_an_image_folder_with_its_own_train_and_test_folders(tmp_path: Path) -> None:
    image_folder(tmp_path / "own" / "train", ("a", "b"), per_class=6, mode="L")
    image_folder(tmp_path / "own" / "test", ("a", "b"), per_class=2, mode="L", seed=1)
    cfg = data_config(TaskConfig(dataset="folder", path=str(tmp_path / "own")))
    (task,) = loaded(cfg).tasks
    assert (len(task.train) + len(task.val), len(task.test)) == (12, 4)
    assert tuple(task.test.images.shape[1:]) == (1, 8, 8)


def test_an_npz_and_an_npy_pair_are_tasks(tmp_path: Path) -> None:
    images, labels = npz_arrays(tmp_path / "a.npz", n=20, size=8, channels=3, n_classes=4)
    np.save(tmp_path / "x.npy", images[:, :, :, 0])
    np.save(tmp_path / "y.npy", labels)
    cfg = data_config(
        TaskConfig(dataset="arrays", path=str(tmp_path / "a.npz")),
        TaskConfig(dataset="arrays", path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy")),
        channels=3,
    )
    assert sequence_shape(cfg) == ((3, 8, 8), [4, 4])
    first, second = loaded(cfg).tasks
    assert tuple(first.train.images.shape[1:]) == tuple(second.train.images.shape[1:]) == (3, 8, 8)
    # the grey .npy task was replicated to three equal channels
    assert bool((second.train.images[:, 0] == second.train.images[:, 2]).all())


def test_tasks_of_different_sizes_and_channels_need_a_rule_and_follow_it(tmp_path: Path) -> None:
    image_folder(tmp_path / "big", ("a", "b"), per_class=5, size=16)
    npz_arrays(tmp_path / "small.npz", n=10, size=8, n_classes=2)
    tasks = (
        TaskConfig(dataset="folder", path=str(tmp_path / "big")),
        TaskConfig(dataset="arrays", path=str(tmp_path / "small.npz")),
    )
    with pytest.raises(
        ConfigError, match=r"big's images are 3x16x16, small's 1x8x8: set data.image_size"
    ):
        sequence_shape(data_config(*tasks))
    cfg = data_config(*tasks, image_size=[12, 12], channels=1)
    assert sequence_shape(cfg) == ((1, 12, 12), [2, 2])
    for task in loaded(cfg).tasks:
        assert tuple(task.train.images.shape[1:]) == (1, 12, 12)


def test_mnist_and_a_colour_dataset_in_one_sequence_by_the_rule() -> None:
    """The catalogue's shapes are known before any file is read: the check needs no data."""
    tasks = (TaskConfig(dataset="mnist"), TaskConfig(dataset="cifar10"))
    with pytest.raises(ConfigError, match="mnist's images are 1x28x28, cifar10's 3x32x32"):
        sequence_shape(data_config(*tasks))
    assert sequence_shape(data_config(*tasks, image_size=[32, 32], channels=3)) == (
        (3, 32, 32),
        [10, 10],
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "empty").mkdir(), r"empty: Couldn't find any class folder"),
        (lambda d: image_folder(d / "empty", ("only",)), r"empty holds 1 class folder \(only\)"),
    ],
    ids=["no class", "one class"],
)
def test_a_folder_with_one_class_or_none_is_refused_before_any_run(
    tmp_path: Path, make: object, message: str
) -> None:
    make(tmp_path)  # type: ignore[operator]
    cfg = data_config(TaskConfig(dataset="folder", path=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match=message) as info:
        sequence_shape(cfg)
    assert "\n" not in str(info.value)


def test_a_corrupt_image_and_mixed_sizes_are_named(tmp_path: Path) -> None:
    image_folder(tmp_path / "pets", ("a", "b"), per_class=3, size=8)
    bad = tmp_path / "pets" / "b" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cfg = data_config(TaskConfig(dataset="folder", path=str(tmp_path / "pets")))
    with pytest.raises(DataError, match=f"{bad} is not a readable image") as info:
        loaded(cfg)
    assert "\n" not in str(info.value)
    bad.unlink()
    image_folder(tmp_path / "odd", ("b",), per_class=1, size=10, seed=3)
    (tmp_path / "odd" / "b" / "0.png").rename(tmp_path / "pets" / "b" / "zz_odd.png")
    with pytest.raises(DataError, match=r"zz_odd.png is 10x10, .* is 8x8: set data.image_size"):
        loaded(cfg)
    cfg = data_config(TaskConfig(dataset="folder", path=str(tmp_path / "pets")), image_size=[8, 8])
    assert len(loaded(cfg).tasks[0].test) + len(loaded(cfg).tasks[0].train) > 0


def test_bad_arrays_are_named_in_one_line(tmp_path: Path) -> None:
    images = np.zeros((6, 8, 8), np.uint8)
    np.savez(
        tmp_path / "outside.npz",
        images=images,
        labels=np.array([0, 1, 2, 0, 1, 5]),
        classes=np.array(["a", "b", "c"]),
    )
    np.savez(tmp_path / "floats.npz", images=images.astype(np.float32), labels=np.arange(6) % 2)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    for name, message in [
        ("outside.npz", r"outside.npz: label 5 is outside the classes 0..2"),
        ("floats.npz", r"floats.npz: images must be uint8"),
    ]:
        cfg = data_config(TaskConfig(dataset="arrays", path=str(tmp_path / name)))
        with pytest.raises(DataError, match=message):
            loaded(cfg)
    with pytest.raises(ConfigError, match=r"broken.npz is not a readable numpy file"):
        sequence_shape(data_config(TaskConfig(dataset="arrays", path=str(tmp_path / "broken.npz"))))
    with pytest.raises(
        ConfigError, match=r"data.tasks.path: .*missing.npz is not a readable numpy file"
    ):
        sequence_shape(
            data_config(TaskConfig(dataset="arrays", path=str(tmp_path / "missing.npz")))
        )


def test_a_task_without_its_path_or_a_class_beyond_the_dataset_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"data.tasks.path: the path of a folder task's files is needed"
    ):
        data_config(TaskConfig(dataset="folder"))
    with pytest.raises(
        ConfigError, match=r"data.tasks.classes: \[10\]: classes must be distinct labels in 0..9"
    ):
        data_config(TaskConfig(dataset="cifar10", classes=[10]))
    assert data_config(TaskConfig(dataset="cifar100", classes=[99])).tasks[0].name == "cifar100_99"


def test_a_run_trains_on_a_folder_then_an_npz(tmp_path: Path) -> None:
    image_folder(tmp_path / "shapes", ("a", "b", "c"), per_class=20, size=8, mode="L")
    npz_arrays(tmp_path / "digits.npz", n=60, size=8, n_classes=3)
    tasks = (
        f"[{{dataset: folder, path: '{tmp_path / 'shapes'}'}}, "
        f"{{dataset: arrays, path: '{tmp_path / 'digits.npz'}'}}]"
    )
    cfg = small_synthetic(tmp_path / "mlruns", *TINY, f"data.tasks={tasks}", "model=mlp")
    result = run(cfg)
    assert result.tasks == ["shapes", "digits"]
