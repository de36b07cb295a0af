"""Scenarios, benchmarks, joint training, streaming and the retention ledger."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import run, small_synthetic
from helpers.stores import client

from pipeline.data.datamodule import ContinualDataModule
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.models import IncrementalHead, MultiHead, SharedHead, build_model
from pipeline.store import Store
from pipeline.tracking import Run

FAST = (
    "trainer.epochs=1",
    "trainer.max_batches=4",
    "data.synthetic.n_train=200",
    "data.synthetic.n_test=100",
)


def test_multihead_picks_each_samples_task_head():
    head = MultiHead(3, [2, 4])
    feats = torch.randn(4, 3)
    out = head(feats, torch.tensor([0, 1, 0, 1]))
    assert out.shape == (4, 4)
    assert torch.allclose(out[0, :2], head.heads[0](feats[0]))
    assert torch.allclose(out[1], head.heads[1](feats[1]))
    assert (out[0, 2:] == MultiHead.PAD).all()  # task 0 has 2 classes: padding never wins
    with pytest.raises(ValueError, match="task id"):
        head(feats, None)


def test_incremental_head_grows_with_tasks():
    head = IncrementalHead(3, [2, 3, 2])
    feats = torch.randn(5, 3)
    assert head(feats).shape == (5, 2)
    head.start_task(1)
    assert head(feats).shape == (5, 5) and head.num_active == 5
    head.start_task(0)  # never shrinks
    assert head.num_active == 5
    state = head.state_dict()
    fresh = IncrementalHead(3, [2, 3, 2])
    fresh.load_state_dict(state)
    assert fresh.num_active == 5  # the active width travels with checkpoints


@pytest.mark.parametrize(
    ("scenario", "head", "targets"),
    [
        ("task", MultiHead, (range(10), range(10))),
        ("domain", SharedHead, (range(10), range(10))),
        ("class", IncrementalHead, (range(10), range(10, 20))),
    ],
)
def test_scenario_sets_head_and_targets(scenario, head, targets):
    cfg = small_synthetic(Path("/unused"), f"scenario={scenario}")
    dm = ContinualDataModule(cfg.data, scenario=scenario)
    dm.setup()
    for task, expected in zip(dm.tasks, targets, strict=True):
        assert sorted(task.train.labels.unique().tolist()) == list(expected)
    model = build_model(cfg.model, dm.input_shape, dm.classes_per_task, scenario)
    assert isinstance(model.head, head)


def test_class_subsets_map_to_local_or_global_targets():
    overrides = [
        "data.tasks=[{dataset: synthetic, classes: [4, 5]}, "
        "{dataset: synthetic, seed: 1, classes: [7, 2, 9]}]"
    ]
    cfg = small_synthetic(Path("/unused"), *overrides)
    assert [t.name for t in cfg.data.tasks] == ["synthetic0_45", "synthetic1_729"]
    dm = ContinualDataModule(cfg.data, scenario="domain")
    dm.setup()
    assert dm.classes_per_task == [2, 3]
    assert sorted(dm.tasks[1].test.labels.unique().tolist()) == [0, 1, 2]
    dm = ContinualDataModule(cfg.data, scenario="class")
    dm.setup()
    assert sorted(dm.tasks[1].test.labels.unique().tolist()) == [2, 3, 4]
    assert dm.tasks[1].offset == 2


def test_benchmarks_expand_to_task_lists():
    split = compose("seed_forgetting", ["data.tasks=[]", "data.benchmark=split_mnist"])
    assert [t.classes for t in split.data.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert split.data.tasks[2].name == "mnist_45"
    perm = compose(
        "seed_forgetting", ["data.tasks=[]", "data.benchmark=permuted_mnist", "data.n_tasks=3"]
    )
    assert [t.name for t in perm.data.tasks] == ["mnist_perm0", "mnist_perm1", "mnist_perm2"]
    rot = compose(
        "seed_forgetting", ["data.tasks=[]", "data.benchmark=rotated_mnist", "data.n_tasks=4"]
    )
    assert [t.rotation for t in rot.data.tasks] == [0, 45, 90, 135]
    with pytest.raises(ConfigError, match="not both"):
        compose("seed_forgetting", ["data.benchmark=split_mnist"])


def test_permutation_and_rotation_are_fixed_transforms():
    cfg = small_synthetic(
        Path("/unused"),
        "data.tasks=[{dataset: synthetic}, "
        "{dataset: synthetic, permutation: 3}, {dataset: synthetic, rotation: 90}]",
    )
    dm = ContinualDataModule(cfg.data)
    dm.setup()
    plain, perm, rot = (t.test.images for t in dm.tasks)
    assert not torch.equal(plain, perm)
    assert torch.equal(plain.flatten(1).sort(1).values, perm.flatten(1).sort(1).values)
    assert torch.equal(torch.rot90(plain, 1, (2, 3)), rot)


def test_joint_trains_on_everything_seen_and_reports_what_it_keeps(store):
    result = run(small_synthetic(store, "strategy=[joint]"))
    R = result.matrix["test"]
    assert R[1, 0] > 0.8 and R[1, 1] > 0.8  # no forgetting: task 0 is retrained
    first, second = result.records
    assert second.samples == 2 * first.samples  # trains on both tasks' data
    assert second.retention["raw_from"] == {"synthetic0": 900, "synthetic1": 900}
    assert second.retention["raw_bytes"] > 900 * 2 * 784
    info = client(store).get_run(result.run_id)
    assert info.data.metrics["retention/raw_samples"] == 1800
    ledger = Run.get(Store.at(store), result.run_id).read_json("retention.json")
    assert [r["task"] for r in ledger] == ["synthetic0", "synthetic1"]


def test_naive_keeps_nothing(store):
    result = run(small_synthetic(store, *FAST))
    assert all(
        r.retention == {"raw_samples": 0, "raw_from": {}, "raw_bytes": 0, "state_bytes": 0}
        for r in result.records
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["retention=none", "strategy=[joint]"],
        ["data.stream=true", "trainer.epochs=2"],
        ["data.stream=true", "trainer.epochs=1", "strategy=[joint]"],
    ],
)
def test_refused_before_training(overrides):
    with pytest.raises(ConfigError):
        compose("synthetic_forgetting", overrides)


def test_stream_sees_each_sample_once_in_order(store, monkeypatch):
    seen: list[torch.Tensor] = []
    from pipeline.module import ContinualModule

    real = ContinualModule.training_step

    def spy(self, batch, batch_idx):
        seen.append(batch.id.clone())
        return real(self, batch, batch_idx)

    monkeypatch.setattr(ContinualModule, "training_step", spy)
    cfg = small_synthetic(store, "data.stream=true", "trainer.epochs=1")
    result = run(cfg)
    assert result.train_samples == [900, 900]
    first_task = torch.cat(seen[: len(seen) // 2])
    assert len(first_task) == 900 and len(first_task.unique()) == 900
    dm = ContinualDataModule(cfg.data)
    dm.setup()
    assert torch.equal(first_task, dm.tasks[0].train.ids)  # stream order, no shuffling


def test_resolved_benchmark_config_reads_back():
    from pipeline.config.schema import to_dict
    from pipeline.experiment import from_dict

    cfg = compose("split_mnist")
    assert from_dict(to_dict(cfg)).data.tasks == cfg.data.tasks


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_split_mnist_runs_in_every_scenario(scenario, store):
    cfg = compose(
        "split_mnist",
        [
            f"scenario={scenario}",
            f"paths.store={store}",
            "trainer.epochs=1",
            "trainer.max_batches=20",
            "trainer.progress_bar=false",
        ],
    )
    R = run(cfg).matrix["test"]
    assert R.shape == (5, 5)
    assert np.diag(R).min() > (0.6 if scenario != "class" else 0.5)


@pytest.mark.parametrize("pool", ["each", "last"])
@pytest.mark.parametrize(("channels", "kernel"), [([16, 32], 5), ([16, 32], 3), ([8], 3)])
def test_cnn_layout_and_its_parameter_count_agree(pool, channels, kernel):
    from pipeline.config.schema import ModelConfig
    from pipeline.config.validation import check_values
    from pipeline.models import parameter_count

    cfg = ModelConfig(name="cnn", channels=channels, kernel_size=kernel, pool=pool, hidden=[64])
    check_values(cfg)
    model = build_model(cfg, (1, 28, 28), [10])
    assert parameter_count(cfg, (1, 28, 28), 10) == sum(p.numel() for p in model.parameters())
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    pools = sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert pools == (len(channels) if pool == "each" else 1)


def test_founding_cnn_pools_once_after_its_last_convolution():
    """conf/model/cnn_example.yaml: 16 x 26 x 26 -> 32 x 24 x 24 -> pool -> 4,608 features."""
    cfg = compose("seed_forgetting")
    model = build_model(cfg.model, (1, 28, 28), [10])
    (first,) = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][:1]
    assert first.in_features == 32 * 12 * 12
