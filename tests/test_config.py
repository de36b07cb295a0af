"""Config composition: the real files, overrides, and every kind of bad input (exit code 2)."""

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config.compose import available, compose_paths
from pipeline.config.paths import REPO_ROOT, PathsConfig, redact
from pipeline.config.schema import to_dict
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.tracking import flatten


def test_every_experiment_composes():
    assert "seed_forgetting" in available("experiment")
    for name in available("experiment"):
        cfg = compose(name)
        assert cfg.name == name
        assert cfg.strategy and all(s in cfg.strategies for s in cfg.strategy)


@pytest.mark.parametrize("name", ["seed_forgetting", "lenet_forgetting", "quick_forgetting"])
def test_the_founding_experiment_and_its_other_versions(name):
    cfg = compose(name)
    assert [t.dataset for t in cfg.data.tasks] == ["mnist", "fashion_mnist"]
    assert [t.name for t in cfg.data.tasks] == ["mnist", "fashion_mnist"]
    assert cfg.scenario == "domain" and cfg.strategy == ["naive"]
    assert cfg.model.name == "cnn" and cfg.optim.name == "adam"
    assert cfg.data.batch_size == 128 and cfg.data.val_fraction == 0.1
    # the story's numbers need the example's layout (one pooling, 3x3); LeNets forget more
    layout = {
        "seed_forgetting": ([16, 32], 3, "last", 3),
        "lenet_forgetting": ([32, 64], 5, "each", 3),
        "quick_forgetting": ([16, 32], 5, "each", 5),
    }[name]
    m = cfg.model
    assert (m.channels, m.kernel_size, m.pool, cfg.trainer.epochs) == layout


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
        (["trainer.epochs=0"], "trainer.epochs: must be in 1..10000"),
        (["optim.name=rmsprop"], "optim.name"),
        (["data.val_fraction=1.5"], "data.val_fraction"),
        (["data.tasks=[{dataset: mnist}, {dataset: mnist}]"], "task names must be unique"),
        (["data.tasks=[{dataset: cifar}]"], "data.tasks.dataset"),
        (["model=resnet"], "conf/model/resnet.yaml"),
        (["strategy=[nope]"], "unknown strategy 'nope'"),
        (["paths.store=ftp://host/x"], "paths.store: 'ftp://host/x' is not a folder"),
        (["paths.store=README.md"], "paths.store: 'README.md' is a file"),
        (["paths.store=sqlite://"], "paths.store"),
        (["paths.studies=conf"], "paths.studies: 'conf' is a directory"),
        (["paths.studies=mysql://u:secret@h/db"], "paths.studies: 'mysql://u:\\*\\*\\*@h/db'"),
        (["paths.nope=1"], "unknown key 'paths.nope'"),
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
    code = main(["run", "synthetic_forgetting", f"paths.store={store}", "trainer.epochs=-1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: trainer.epochs") and "\n" not in err
    assert not store.exists()  # no MLflow run, not even a store


def test_paths_are_relative_to_the_repository_and_read_the_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.chdir("/")  # not the working directory
    paths = PathsConfig()
    assert paths.store_uri() == str(REPO_ROOT / "mlruns")
    assert paths.studies_uri() == str(REPO_ROOT / "mlruns" / "optuna" / "journal.log")
    assert paths.reports_dir() == REPO_ROOT / "reports" and paths.data_dir() == REPO_ROOT / "data"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://u@db/optuna")
    assert PathsConfig().store_uri() == "http://tracker:5000"
    assert PathsConfig().studies_uri() == "postgresql://u@db/optuna"
    # the config wins over the environment; a remote store keeps the journal in mlruns/
    assert PathsConfig(store="/x/store").store_uri() == "/x/store"
    monkeypatch.delenv("OPTUNA_STORAGE")
    assert PathsConfig().studies_uri() == str(REPO_ROOT / "mlruns" / "optuna" / "journal.log")
    assert PathsConfig(store="/x/s").studies_uri() == "/x/s/optuna/journal.log"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "gopher://x")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI: .gopher://x."):
        compose_paths()


def test_credentials_are_never_logged_as_params():
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("http://host:5000") == "http://host:5000"
    cfg = compose("seed_forgetting", ["paths.studies=postgresql://me:s3cret@db/optuna"])
    from pipeline.tracking import Run

    logged: list = []

    class Fake:
        def log_batch(self, run_id, params=()):
            logged.extend(params)

    run = Run.__new__(Run)
    run.client, run.run_id = Fake(), "r"
    run.log_params(flatten(to_dict(cfg)))
    assert not [p for p in logged if "s3cret" in p.value]
    assert any(p.value == "postgresql://me:***@db/optuna" for p in logged)


def test_a_folder_named_like_a_config_is_not_one(tmp_path, monkeypatch):
    import shutil

    from pipeline.config import compose as conf

    shutil.copytree(conf.CONF_DIR, tmp_path / "conf")
    (tmp_path / "conf" / "experiment" / "folder.yaml").mkdir()
    monkeypatch.setattr(conf, "CONF_DIR", tmp_path / "conf")
    assert "folder" not in available("experiment")
    with pytest.raises(ConfigError, match=r"no such experiment config \(available: ") as e:
        compose("folder")
    assert "folder," not in str(e.value)


def test_a_config_in_a_sub_folder_is_found_by_its_path_and_no_name_leaves_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make best` writes conf/experiment/best/<study>.yaml: `EXP=best/<study>` runs it, but
    `EXP=../x` never reads a file outside the group's folder, even a valid config."""
    import shutil

    from pipeline.config import compose as conf

    shutil.copytree(conf.CONF_DIR, tmp_path / "conf")
    quick = (tmp_path / "conf" / "experiment" / "quick_forgetting.yaml").read_text()
    (tmp_path / "conf" / "experiment" / "best").mkdir()
    (tmp_path / "conf" / "experiment" / "best" / "study.yaml").write_text(quick)
    (tmp_path / "conf" / "outside.yaml").write_text(quick)
    monkeypatch.setattr(conf, "CONF_DIR", tmp_path / "conf")
    assert "best/study" in available("experiment")
    assert compose("best/study").name == "best/study"
    for name in ("../outside", str(tmp_path / "conf" / "outside"), "best/../../outside"):
        with pytest.raises(ConfigError, match=r"not a file of conf/experiment/"):
            compose(name)
