"""Batch augmentation (``data.augment=crop_flip``): every sample cropped and flipped on its own,
the field's zero padding on normalised batches, stateless draws, training batches only, and
runs that stay exactly reproducible and resumable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.runs import run, small_synthetic, train_tasks
from helpers.stores import client
from torch import Tensor

from pipeline import runfiles
from pipeline.augment import crop_flip, draw_crop_flip, step_generator, step_seed
from pipeline.cli import main
from pipeline.config.choices import Augment
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch
from pipeline.models import build_model
from pipeline.module import ContinualModule
from pipeline.store import Store
from pipeline.strategies.base import TaskContext

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
TINY = (
    "trainer.epochs=1",
    "trainer.max_batches=4",
    "data.synthetic.n_train=120",
    "data.synthetic.n_test=40",
    "data.batch_size=16",
)


def generator(seed: int = 0, device: torch.device = CPU) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def reference(image: Tensor, padding: int, fill: Tensor, dy: int, dx: int, flip: bool) -> Tensor:
    """The slow way, one sample: build the padded image, crop at (dy, dx), flip."""
    c, h, w = image.shape
    padded = fill.to(image.dtype).reshape(c, 1, 1).repeat(1, h + 2 * padding, w + 2 * padding)
    padded[:, padding : padding + h, padding : padding + w] = image
    crop = padded[:, dy : dy + h, dx : dx + w]
    return crop.flip(-1) if flip else crop


def images(dtype: torch.dtype, shape: tuple[int, ...], device: torch.device = CPU) -> Tensor:
    g = torch.Generator().manual_seed(1)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
    return torch.randn(shape, generator=g).to(device)


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize(
    ("dtype", "fill"), [(torch.float32, "sample"), (torch.float32, "channel"), (torch.uint8, "0")]
)
def test_each_sample_is_its_own_crop_of_its_padded_image_flipped_or_not(
    dtype: torch.dtype, fill: str, device: torch.device
) -> None:
    b, c, h, w, padding = 600, 2, 5, 7, 2  # not square: rows and columns kept apart
    x = images(dtype, (b, c, h, w), device)
    value: Tensor | float = {
        "sample": torch.randn(b, c, device=device),
        "channel": torch.tensor([-1.5, 2.0], device=device),
        "0": 0.0,
    }[fill]
    out = crop_flip(x, padding, generator(3, device), value)
    assert out.shape == x.shape and out.dtype == dtype and out.device.type == device.type
    shift, flips = draw_crop_flip(b, padding, generator(3, device), device)  # the same draws
    fills = torch.as_tensor(value, device=device).expand(b, c).cpu()
    seen = set()
    for i in range(b):  # the slow reference, sample by sample
        dy, dx, flip = int(shift[i, 0]) + padding, int(shift[i, 1]) + padding, bool(flips[i])
        expected = reference(x[i].cpu(), padding, fills[i], dy, dx, flip)
        assert torch.equal(out[i].cpu(), expected), i
        seen.add((dy, dx, flip))
    # every offset in 0..2*padding on both axes, each with and without a flip
    assert len(seen) == (2 * padding + 1) ** 2 * 2


def test_flips_happen_about_half_the_time_and_per_sample() -> None:
    x = images(torch.float32, (2000, 1, 4, 4))
    out = crop_flip(x, 0, generator(), 0.0)  # no padding: a sample is itself or its mirror
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())
    assert 0.45 < float(flipped.float().mean()) < 0.55
    assert bool(flipped[:16].any()) and bool(kept[:16].any())  # within one batch of 16


def test_the_draws_are_a_function_of_seed_task_and_step() -> None:
    x = images(torch.float32, (64, 3, 8, 8))

    def augmented(seed: int, task: int, step: int) -> Tensor:
        return crop_flip(x, 4, step_generator(seed, task, step, CPU), 0.0)

    assert torch.equal(augmented(0, 1, 5), augmented(0, 1, 5))
    for other in ((0, 1, 6), (0, 2, 5), (1, 1, 5)):
        assert not torch.equal(augmented(0, 1, 5), augmented(*other)), other
    seeds = {step_seed(s, t, k) for s in range(3) for t in range(5) for k in range(200)}
    assert len(seeds) == 3 * 5 * 200 and all(0 <= s < 2**64 for s in seeds)


def test_negative_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="padding"):
        crop_flip(images(torch.float32, (2, 1, 4, 4)), -1, generator())


# -- in the training step -------------------------------------------------------------------------
def three_channel_tasks(tmp_path: Path) -> tuple[ContinualDataModule, Any]:
    cfg = small_synthetic(
        tmp_path / "mlruns",
        *TINY,
        "model=mlp",
        "data.synthetic.channels=3",
        "data.synthetic.size=12",
    )
    data = ContinualDataModule(cfg.data, cfg.seed, scenario=cfg.scenario)
    data.setup()
    return data, cfg


def module_on(
    data: ContinualDataModule, cfg: Any, augment: Augment, padding: int = 3
) -> ContinualModule:
    model = build_model(cfg.model, data.input_shape, data.classes_per_task, cfg.scenario)
    module = ContinualModule(model, [], cfg.optim, augment=augment, crop_padding=padding, seed=7)
    module.start_task(TaskContext(1, data.tasks[1], data, model, CPU))
    return module


def mixed_batch(data: ContinualDataModule) -> tuple[Batch, Tensor]:
    """Ten raw samples of each task, interleaved (as replay mixes tasks), and their batch."""
    first, second = data.tasks[0].train, data.tasks[1].train
    pairs = zip(first.images[:10], second.images[:10], strict=True)
    raw = torch.stack([image for pair in pairs for image in pair])
    task = torch.arange(20) % 2
    return data.batch_from(raw, torch.zeros(20, dtype=torch.long), task, torch.arange(20)), raw


def test_a_normalised_batch_is_padded_with_each_samples_black(tmp_path: Path) -> None:
    """Cropping the normalised batch gives what the field does: crop the raw images, padded
    with black (0), then normalise; each task's black is its own."""
    data, cfg = three_channel_tasks(tmp_path)
    assert data.tasks[0].mean != data.tasks[1].mean  # two normalisations, two blacks
    batch, raw = mixed_batch(data)
    got = module_on(data, cfg, Augment.crop_flip)._crop_flip(batch)
    # the module's draws: experiment seed 7, task 1, step 0 (no Trainer: global_step 0)
    cropped_raw = crop_flip(raw, 3, step_generator(7, 1, 0, CPU), 0)
    expected = data.batch_from(cropped_raw, batch.y, batch.task, batch.id).x
    assert torch.equal(got, expected)
    assert not torch.equal(got, batch.x)


@pytest.mark.parametrize("augment", list(Augment))
def test_the_training_step_augments_only_with_crop_flip(augment: Augment, tmp_path: Path) -> None:
    data, cfg = three_channel_tasks(tmp_path)
    module = module_on(data, cfg, augment)
    seen: list[Tensor] = []
    module.model.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    batch, _ = mixed_batch(data)
    module.training_step(batch, 0)
    module.accuracy([batch], CPU)  # the evaluation: never augmented
    (trained, evaluated) = seen
    assert evaluated is batch.x
    assert (trained is batch.x) == (augment is Augment.none)
    assert trained.shape == batch.x.shape


# -- whole runs -----------------------------------------------------------------------------------
def replay_run(tmp_path: Path, name: str, augment: str) -> tuple[ContinualDataModule, Any]:
    cfg = small_synthetic(
        tmp_path / name / "mlruns", *TINY, "strategy=[replay]", f"data.augment={augment}"
    )
    data, module, _ = train_tasks(cfg, tmp_path / name)
    return data, module


def test_training_with_crop_flip_is_reproducible_and_stores_raw_samples(tmp_path: Path) -> None:
    """Two runs with ``crop_flip`` end with the same weights (and unlike a run without); the
    replay buffer holds the training split's own images, never augmented ones."""
    data, first = replay_run(tmp_path, "a", "crop_flip")
    _, second = replay_run(tmp_path, "b", "crop_flip")
    _, plain = replay_run(tmp_path, "c", "none")
    weights = [m.model.state_dict() for m in (first, second, plain)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    buffer = first.strategies[0].buffer
    slots = buffer.slots()
    assert slots.numel() > 0
    stored, _, tasks, ids = buffer.get(slots)
    for image, task, sample in zip(stored, tasks.tolist(), ids.tolist(), strict=True):
        split = data.tasks[task].train
        (row,) = (split.ids == sample).nonzero().squeeze(1).tolist()
        assert torch.equal(image, split.images[row])


def test_a_resumed_run_crops_as_the_uninterrupted_one(tmp_path: Path) -> None:
    """Killed after its first task's checkpoint and resumed, a ``crop_flip`` run ends with the
    uninterrupted run's accuracy matrix: the draws depend on (seed, task, step) only."""
    store = tmp_path / "mlruns"
    tasks = "data.tasks=[" + ",".join(f"{{dataset: synthetic, seed: {i}}}" for i in range(3)) + "]"
    argv = [tasks, *TINY, "data.augment=crop_flip", "trainer.threads=1"]
    chaos = Path(__file__).with_name("chaos.py")
    start = [
        "run",
        "synthetic_forgetting",
        *argv,
        "trainer.progress_bar=false",
        "tracking.figures=false",
    ]
    killed = subprocess.run(
        [
            *(sys.executable, str(chaos), "pipeline.checkpoints:save_checkpoint", "1", "after"),
            *(*start, f"paths.store={store}", f"paths.reports={tmp_path}"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    c = client(store)
    (dead,) = c.search_runs([c.get_experiment_by_name("synthetic_forgetting").experiment_id])
    run_id = dead.info.run_id
    assert main(["run", "--resume", run_id, "trainer.threads=1", f"paths.store={store}"]) == 0
    expected = run(small_synthetic(tmp_path / "uninterrupted", *argv))
    got = runfiles.read_result(Store.at(store), run_id)
    for split in ("val", "test"):
        np.testing.assert_array_equal(got.matrix[split], expected.matrix[split])
