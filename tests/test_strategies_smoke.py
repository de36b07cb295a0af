"""Every registered strategy in every scenario, on two tiny synthetic tasks, and the round trip
of its state through the per-task checkpoint."""

from pathlib import Path

import numpy as np
import pytest
from helpers.runs import accepted_scenario, run, same, small_synthetic, strategy_overrides
from helpers.stores import checkpoint

from pipeline.config.schema import SCENARIOS
from pipeline.errors import ConfigError
from pipeline.strategies import REGISTRY

TINY = (
    "trainer.epochs=1",
    "trainer.max_batches=3",
    "data.synthetic.n_train=200",
    "data.synthetic.n_test=100",
    "data.batch_size=32",
)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_strategy_runs_and_its_state_round_trips(name: str, scenario: str, tmp_path: Path):
    store = tmp_path / "mlruns"
    try:
        cfg = small_synthetic(store, *strategy_overrides(name), f"scenario={scenario}", *TINY)
    except ConfigError as e:  # refused before training, with its reason
        assert "does not work in" in str(e)
        assert not store.exists()
        return
    result = run(cfg)
    R = result.matrix["test"]
    assert R.shape == (2, 2) and np.isfinite(R).all()
    module, _, _ = checkpoint(store, result.run_id, 1)
    (strategy,) = module.strategies
    state = strategy.state_dict()
    fresh = REGISTRY[name](strategy.params)
    fresh.load_state_dict(state)
    assert same(fresh.state_dict(), state)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_strategy_trains_in_bf16_mixed_precision(name: str, tmp_path: Path):
    """``trainer.precision=bf16-mixed`` (autocast on a GPU, and on a CPU as here): the hooks
    see bf16 activations and float32 weights and gradients."""
    store = tmp_path / "mlruns"
    scenario = f"scenario={accepted_scenario(name)}"
    cfg = small_synthetic(
        store, *strategy_overrides(name), scenario, "trainer.precision=bf16-mixed", *TINY
    )
    result = run(cfg)
    R = result.matrix["test"]
    assert np.isfinite(R).all() and R[0, 0] > 0.2  # it learned the first task
