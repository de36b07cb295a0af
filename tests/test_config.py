"""Config composition: the real files, overrides, and every kind of bad input (exit code 2)."""

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, available, compose, flatten, to_dict


def test_every_experiment_composes():
    assert "seed_forgetting" in available("experiment")
    for name in available("experiment"):
        cfg = compose(name)
        assert cfg.name == name
        assert cfg.strategy and all(s in cfg.strategies for s in cfg.strategy)


def test_seed_forgetting_is_the_thread_setting():
    cfg = compose("seed_forgetting")
    assert [t.dataset for t in cfg.data.tasks] == ["mnist", "fashion_mnist"]
    assert [t.name for t in cfg.data.tasks] == ["mnist", "fashion_mnist"]
    assert cfg.scenario == "domain" and cfg.strategy == ["naive"]
    assert cfg.model.name == "cnn" and cfg.optim.name == "adam" and cfg.optim.lr == 1e-3
    assert cfg.data.batch_size == 128 and cfg.data.val_fraction == 0.1


def test_overrides_and_group_choice():
    cfg = compose(
        "seed_forgetting",
        [
            "trainer.epochs=1",
            "model=mlp",
            "optim.lr=0.01",
            "data.tasks=[{dataset: fashion_mnist}, {dataset: mnist}]",
        ],
    )
    assert cfg.trainer.epochs == 1 and cfg.optim.lr == 0.01
    assert cfg.model.name == "mlp" and cfg.model.hidden == [256, 256]
    assert [t.name for t in cfg.data.tasks] == ["fashion_mnist", "mnist"]


def test_flatten_for_mlflow_params():
    cfg = compose("seed_forgetting", ["trainer.epochs=4"])
    flat = flatten(to_dict(cfg))
    assert flat["trainer.epochs"] == 4
    assert flat["data.tasks.0.dataset"] == "mnist"
    assert flat["strategy"] == ["naive"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.epochz=1"], "unknown key 'trainer.epochz'"),
        (["trainer.epochs=abc"], "trainer.epochs"),
        (["trainer.epochs=0"], "trainer.epochs: must be >= 1"),
        (["optim.name=rmsprop"], "optim.name"),
        (["data.val_fraction=1.5"], "data.val_fraction"),
        (["data.tasks=[{dataset: mnist}, {dataset: mnist}]"], "task names must be unique"),
        (["data.tasks=[{dataset: cifar}]"], "data.tasks.dataset"),
        (["model=resnet"], "conf/model/resnet.yaml"),
        (["strategy=[nope]"], "conf/strategy/nope.yaml"),
        (["strategies.naive.lam=3"], "strategies.naive"),
        (["scenario=continual"], "scenario"),
        (["epochs"], "expected key=value"),
    ],
)
def test_bad_input_is_one_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        compose("seed_forgetting", overrides)


def test_missing_experiment_names_the_file():
    with pytest.raises(ConfigError, match=r"conf/experiment/nope.yaml.*seed_forgetting"):
        compose("nope")


def test_cli_exit_2_one_line_and_no_run(tmp_path: Path, capsys):
    store = tmp_path / "store"
    code = main(["run", "synthetic_forgetting", f"tracking.store={store}", "trainer.epochs=-1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: trainer.epochs") and "\n" not in err
    assert not store.exists()  # no MLflow run, not even a store
