"""Every registered strategy on the ResNet-18 (BatchNorm, bias-free strided convolutions, 1x1
shortcuts, in-place ReLUs): three synthetic tasks of 3x32x32 images, trained as a run trains
them (the runner's hooks and Trainers, without an MLflow run: ``helpers.runs.train_tasks``),
and the round trip of each strategy's state. Each strategy in one scenario, the scenarios taken
in turn: what a scenario changes (the heads, the targets) does not depend on the network, and
every strategy meets every scenario on the CNN (``tests/test_strategies_smoke.py``)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import accepted_scenario, same, small_synthetic, strategy_overrides, train_tasks
from torch import nn

from pipeline.errors import ConfigError
from pipeline.strategies import REGISTRY

TASKS = "data.tasks=[" + ",".join(f"{{dataset: synthetic, seed: {i}}}" for i in range(3)) + "]"
RESNET = (
    "model=resnet18_reduced",
    # the reduced ResNet-18's layers at width 8 (64 features): the same code paths in a third of
    # the time (the channels-last layout, used from width 16, is checked in test_scenarios.py)
    "model.width=8",
    TASKS,
    "data.synthetic.channels=3",
    "data.synthetic.size=32",
    "data.synthetic.n_train=60",
    "data.synthetic.n_test=20",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "trainer.epochs=1",
    "trainer.max_batches=2",
)


@pytest.mark.parametrize(
    ("name", "scenario"),
    [(name, accepted_scenario(name, i)) for i, name in enumerate(sorted(REGISTRY))],
)
def test_strategy_trains_the_resnet_and_its_state_round_trips(
    name: str, scenario: str, tmp_path: Path
) -> None:
    try:
        cfg = small_synthetic(
            tmp_path / "mlruns", *RESNET, *strategy_overrides(name), f"scenario={scenario}"
        )
    except ConfigError as e:  # refused before training, with its reason
        assert "does not work in" in str(e)
        return
    data, module, rows = train_tasks(cfg, tmp_path)
    assert data.input_shape == (3, 32, 32)
    norms = [m for m in module.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 20  # the stem's, two per block and three shortcuts'
    R = np.array(rows)
    assert R.shape == (3, 3) and np.isfinite(R).all()
    assert all(torch.isfinite(t).all() for t in module.model.state_dict().values())
    (strategy,) = module.strategies
    state = strategy.state_dict()
    fresh = REGISTRY[name](strategy.params)
    fresh.load_state_dict(state)
    assert same(fresh.state_dict(), state)
