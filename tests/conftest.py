"""Shared fixtures: the real experiment configs, shrunk to seconds on synthetic tasks."""

from pathlib import Path

import pytest
import torch

from pipeline.config import ExperimentConfig, compose

# Small and fixed: the tests compare numbers across runs in one process.
torch.set_num_threads(1)


def small_synthetic(store: Path, *overrides: str) -> ExperimentConfig:
    """``conf/experiment/synthetic_forgetting.yaml`` with a private MLflow store, no bars."""
    return compose(
        "synthetic_forgetting",
        [
            f"tracking.store={store}",
            "trainer.progress_bar=false",
            "trainer.threads=1",
            *overrides,
        ],
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "mlruns"
