"""Hostile input, table-driven: every bad key, value, file, id, name and path a user can type is
refused with one line (`error: ...` on stderr), exit code 2, no traceback, and no new run.
Nothing here trains: every case must fail while validating."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.runs import run, small_synthetic
from helpers.stores import client

from pipeline.cli import main
from pipeline.server.common import free_port

RUN = "<run>"  # replaced by the id of a finished tiny run
STORE = "<store>"  # replaced by that run's store
FRESH = "<fresh>"  # replaced by a store folder of the case's own (it must stay empty)
RUNNING = "<running>"  # replaced by a run of that store still running
BARE = "<bare>"  # replaced by a run of that store that finished without a checkpoint
EXP = ["run", "synthetic_forgetting", f"paths.store={FRESH}"]
SWEEP = ["sweep", "synthetic_forgetting", "--strategy", "ewc", f"paths.store={FRESH}"]
WHERE = f"paths.store={STORE}"

CASES: list[tuple[str, list[str]]] = [
    # keys and values of the experiment config
    ("unknown key", [*EXP, "trainer.epochz=1"]),
    ("wrong type", [*EXP, "trainer.epochs=abc"]),
    ("zero epochs", [*EXP, "trainer.epochs=0"]),
    ("negative epochs", [*EXP, "trainer.epochs=-1"]),
    ("epochs beyond reason", [*EXP, "trainer.epochs=100000000"]),
    ("negative iterations", [*EXP, "trainer.iterations=-1"]),
    ("iterations beyond reason", [*EXP, "trainer.iterations=100000000"]),
    ("padding beyond reason", [*EXP, "data.pad=65"]),
    ("negative padding", [*EXP, "data.pad=-2"]),
    ("normalise not a boolean", [*EXP, "data.normalise=sometimes"]),
    ("unknown optimizer", [*EXP, "optim.name=rmsprop"]),
    ("infinite lr", [*EXP, "optim.lr=inf"]),
    ("huge lr", [*EXP, "optim.lr=1e308"]),
    ("nan lr", [*EXP, "optim.lr=nan"]),
    ("an unknown lr schedule", [*EXP, "optim.schedule=banana"]),
    ("carry_state not a boolean", [*EXP, "optim.carry_state=banana"]),
    ("zero lr", [*EXP, "optim.lr=0"]),
    ("negative lr", [*EXP, "optim.lr=-1"]),
    ("negative weight decay", [*EXP, "optim.weight_decay=-1"]),
    ("infinite weight decay", [*EXP, "optim.weight_decay=inf"]),
    ("momentum of 1", [*EXP, "optim.momentum=1"]),
    ("validation share above 1", [*EXP, "data.val_fraction=1.5"]),
    ("no validation share", [*EXP, "data.val_fraction=0"]),
    ("empty batches", [*EXP, "data.batch_size=0"]),
    ("repeated task names", [*EXP, "data.tasks=[{dataset: mnist}, {dataset: mnist}]"]),
    ("unknown dataset", [*EXP, "data.tasks=[{dataset: cifar}]"]),
    ("no task", [*EXP, "data.tasks=[]"]),
    ("class out of range", [*EXP, "data.tasks=[{dataset: mnist, classes: [11]}]"]),
    ("unknown benchmark", [*EXP, "data.benchmark=split_cifar"]),
    ("too many splits", [*EXP, "data.benchmark=split_mnist", "data.n_tasks=11"]),
    ("a split of more classes than CIFAR-10 has", [*EXP, "data=split_cifar10", "data.n_tasks=6"]),
    ("a split of an unknown dataset", [*EXP, "data=split_cifar10", "data.dataset=cifar11"]),
    ("a split of a folder", [*EXP, "data=split_cifar10", "data.dataset=folder"]),
    ("a CIFAR-10 class beyond 9", [*EXP, "data.tasks=[{dataset: cifar10, classes: [10]}]"]),
    (
        "grey and colour tasks with no rule",
        [*EXP, "data.tasks=[{dataset: mnist}, {dataset: cifar10}]"],
    ),
    ("a folder task without its path", [*EXP, "data.tasks=[{dataset: folder}]"]),
    ("a folder that is not there", [*EXP, "data.tasks=[{dataset: folder, path: /no/such}]"]),
    ("arrays that are not there", [*EXP, "data.tasks=[{dataset: arrays, path: /no/such.npz}]"]),
    ("a path on a catalogue task", [*EXP, "data.tasks=[{dataset: mnist, path: /x}]"]),
    ("an image size of one number", [*EXP, "data.image_size=[32]"]),
    ("two channels", [*EXP, "data.channels=2"]),
    ("an unknown augmentation", [*EXP, "data.augment=mixup"]),
    ("a ResNet of width 0", [*EXP, "model=resnet18", "model.width=0"]),
    ("unknown model file", [*EXP, "model=resnet"]),
    ("kernel larger than the image", [*EXP, "model.kernel_size=29"]),
    ("kernel of 0", [*EXP, "model.kernel_size=0"]),
    ("a network that does not fit memory", [*EXP, "model.hidden=[1000000000]"]),
    ("dropout above 1", [*EXP, "model.dropout=1.5"]),
    ("a conv of no channel", [*EXP, "model.channels=[0]"]),
    ("unknown pooling", [*EXP, "model.pool=middle"]),
    ("one pooling of a 27x27 kernel output", [*EXP, "model.pool=last", "model.kernel_size=28"]),
    ("a device count of 0", [*EXP, "trainer.devices=0"]),
    ("a batch that does not split over processes", [*EXP, "trainer.devices=3"]),
    ("unknown strategy", [*EXP, "strategy=[nope]"]),
    ("unfinished list", [*EXP, "strategy=[ewc,"]),
    ("repeated strategy", [*EXP, "strategy=[ewc,ewc]"]),
    ("a param of a strategy without params", [*EXP, "strategies.naive.lam=3"]),
    ("a strategy configured but not used", [*EXP, "strategies.ewc.lam=3"]),
    ("infinite strength", [*EXP, "strategy=[ewc]", "strategies.ewc.lam=inf"]),
    ("infinite DER++ alpha", [*EXP, "strategy=[derpp]", "strategies.derpp.alpha=inf"]),
    ("negative strength", [*EXP, "strategy=[ewc]", "strategies.ewc.lam=-1"]),
    ("an unknown kind of Fisher label", [*EXP, "strategy=[ewc]", "strategies.ewc.fisher_labels=x"]),
    ("an empty buffer", [*EXP, "strategy=[replay]", "strategies.replay.size=0"]),
    ("a threshold above 1", [*EXP, "strategy=[gpm]", "strategies.gpm.threshold=2"]),
    ("temperature 0", [*EXP, "strategy=[lwf]", "strategies.lwf.temperature=0"]),
    ("unknown scenario", [*EXP, "scenario=continual"]),
    ("raw data where none may be kept", [*EXP, "retention=none", "strategy=[replay]"]),
    ("unknown retention", [*EXP, "retention=maybe"]),
    ("a stream seen twice", [*EXP, "data.stream=true", "trainer.epochs=2"]),
    ("an unknown table", ["reproduce", "no_such_table", f"paths.store={FRESH}"]),
    ("no table named", ["reproduce", "", f"paths.store={FRESH}"]),
    (
        "zero seeds of a table",
        ["reproduce", "vandeven2019-split-mnist", "--seeds", "0", f"paths.store={FRESH}"],
    ),
    (
        "a cell a table lacks",
        ["reproduce", "vandeven2019-split-mnist", "--cells", "domain-ewk", f"paths.store={FRESH}"],
    ),
    (
        "a bad key for a table",
        ["reproduce", "vandeven2019-split-mnist", "trainer.iterationz=3", f"paths.store={FRESH}"],
    ),
    ("a stream counted in iterations", [*EXP, "data.stream=true", "trainer.iterations=5"]),
    ("joint on a stream", [*EXP, "data.stream=true", "trainer.epochs=1", "strategy=[joint]"]),
    ("a GPU that is not there", [*EXP, "trainer.accelerator=gpu"]),
    ("an unknown device", [*EXP, "trainer.accelerator=tpu"]),
    ("an unknown precision", [*EXP, "trainer.precision=banana"]),
    ("the NaN check switched off", [*EXP, "trainer.check_finite_every=0"]),
    ("negative threads", [*EXP, "trainer.threads=-1"]),
    ("infinite clipping", [*EXP, "trainer.gradient_clip_val=inf"]),
    ("negative seed", [*EXP, "seed=-1"]),
    ("seed beyond numpy", [*EXP, "seed=1099511627776"]),
    ("override without =", [*EXP, "epochs"]),
    # names and texts longer than an MLflow store takes (PostgreSQL's columns are the shortest)
    ("an experiment name beyond MLflow's 500", [*EXP, f"tracking.experiment={'e' * 600}"]),
    ("an experiment name beyond PostgreSQL's 256", [*EXP, f"tracking.experiment={'e' * 300}"]),
    ("a run name beyond PostgreSQL's 250", [*EXP, f"tracking.run_name={'r' * 251}"]),
    ("a run name beyond a tag's 8000", [*EXP, f"tracking.run_name={'r' * 9000}"]),
    ("a description beyond an experiment tag's 20000", [*EXP, f"description={'d' * 20001}"]),
    (
        "a task name beyond a metric key",
        [*EXP, f"data.tasks=[{{dataset: mnist, name: {'t' * 300}}}]"],
    ),
    ("a task named like a metric", [*EXP, "data.tasks=[{dataset: mnist, name: bwt}]"]),
    ("override without key", [*EXP, "=3"]),
    ("unknown experiment", ["run", "nope", f"paths.store={FRESH}"]),
    ("unknown experiment to print", ["config", "nope"]),
    # where things are
    ("a store of an unknown scheme", ["run", "synthetic_forgetting", "paths.store=ftp://host/x"]),
    ("a file as the store", ["run", "synthetic_forgetting", "paths.store=README.md"]),
    ("an SQLite URI without a file", ["run", "synthetic_forgetting", "paths.store=sqlite://"]),
    ("a tracking server that is down", ["run", "synthetic_forgetting", "paths.store=<down>"]),
    ("an unknown paths key", [*EXP, "paths.nope=1"]),
    ("a folder as the study journal", [*SWEEP, "paths.studies=<folder>"]),
    ("a study storage of an unknown kind", [*SWEEP, "paths.studies=mysql://u@h/db"]),
    ("a PostgreSQL study storage that is down", [*SWEEP, "paths.studies=<down-pg>"]),
    # sweeps
    ("unknown sweep file", [*SWEEP, "--sweep", "nope"]),
    ("zero trials", [*SWEEP, "--trials", "0"]),
    ("zero trials in the sweep file", [*SWEEP, "--set", "trials=0"]),
    ("unknown objective", [*SWEEP, "--set", "objective=x"]),
    ("unknown strategy to sweep", [*SWEEP[:3], "nope", *SWEEP[4:]]),
    ("a study name that climbs out of reports/", [*SWEEP, "--study", "../../x"]),
    ("a study name with a quote", [*SWEEP, "--study", "it's"]),
    ("no worker", [*SWEEP, "--workers", "0"]),
    ("negative trials", [*SWEEP, "--trials", "-1"]),
    ("negative workers", [*SWEEP, "--workers", "-3"]),
    ("unknown key for every trial", [*SWEEP, "bogus.key=1"]),
    ("a study that is not there", ["best", "no-such-study", WHERE]),
    ("a study that is not there, for the dashboard", ["dashboard", "paths.studies=<nofile>"]),
    # runs that are there, ids and names that are not
    ("a negative sample id", ["erase", RUN, "--task", "synthetic0", "--ids", "-5", WHERE]),
    ("a sample id that is no number", ["erase", RUN, "--task", "synthetic0", "--ids", "a", WHERE]),
    ("a sample id the task lacks", ["erase", RUN, "--task", "synthetic0", "--ids", "99999", WHERE]),
    ("a task the run lacks", ["erase", RUN, "--task", "nope", "--ids", "1", WHERE]),
    ("a run the store lacks", ["erase", "0" * 32, "--task", "synthetic0", "--ids", "1", WHERE]),
    ("an ids file that is not there", ["erase", RUN, "--ids-file", "/no/such/ids", WHERE]),
    ("ids without their task", ["erase", RUN, "--ids", "1", WHERE]),
    ("a landscape of a run the store lacks", ["landscape", "0" * 32, WHERE]),
    ("a landscape of one point", ["landscape", RUN, "--points", "1", WHERE]),
    ("a plane of one cell", ["landscape", RUN, "--vs", RUN, "--grid", "1", WHERE]),
    ("a landscape of an empty store", ["landscape", "abc", "paths.store=<nofile>"]),
    ("a key other than paths", ["landscape", RUN, WHERE, "trainer.epochs=1"]),
    # the Model Registry (make register)
    ("registering a run the store lacks", ["register", "0" * 32, WHERE]),
    ("registering a run still running", ["register", RUNNING, WHERE]),
    ("registering a run without checkpoints", ["register", BARE, WHERE]),
    ("a model name MLflow refuses", ["register", RUN, "--name", "a/b", WHERE]),
    ("a model name that breaks its models:/ URI", ["register", RUN, "--name", "a?b", WHERE]),
    (
        "a comparison of an unknown strategy",
        ["compare", "synthetic_forgetting", "--strategies", "naive,nope", f"paths.store={FRESH}"],
    ),
    ("a comparison of no seed", ["compare", "synthetic_forgetting", "--seeds", "0", WHERE]),
    ("a comparison of -2 seeds", ["compare", "synthetic_forgetting", "--seeds", "-2", WHERE]),
    (
        "resuming a comparison that is not there",
        ["compare", "synthetic_forgetting", "--resume", "feed", WHERE],
    ),
    ("a port that is no port", ["ui", "--port", "99999"]),
    ("a dashboard port of 0", ["dashboard", "--port", "0"]),
    ("a UI host that is no address", ["ui", "--host", "my laptop"]),
    ("a dashboard host that is no address", ["dashboard", "--host", "300.1.1.1"]),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store holding one finished tiny run."""
    store = tmp_path_factory.mktemp("hostile") / "mlruns"
    tiny = ["trainer.epochs=1", "trainer.max_batches=2", "data.synthetic.n_train=100"]
    result = run(small_synthetic(store, "strategy=[replay]", *tiny))
    return store, result.run_id


@pytest.fixture(scope="module")
def unfinished(finished: tuple[Path, str]) -> dict[str, str]:
    """Two more runs of that store: one still running, one finished with no checkpoint."""
    store, run_id = finished
    c = client(store)
    experiment = c.get_run(run_id).info.experiment_id
    running, bare = (c.create_run(experiment).info.run_id for _ in range(2))
    c.set_terminated(bare, "FINISHED")
    return {RUNNING: running, BARE: bare}


def models_in(store: Path) -> int:
    """The model versions of the store's Model Registry."""
    return len(client(store).search_model_versions()) if (store / "mlflow.db").exists() else 0


def runs_in(store: Path) -> int:
    if not (store / "mlflow.db").exists():
        return 0
    c = client(store)
    return sum(len(c.search_runs([e.experiment_id])) for e in c.search_experiments())


def test_there_are_at_least_60_cases() -> None:
    assert len(CASES) >= 60
    assert len({name for name, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "argv"), CASES, ids=[name for name, _ in CASES])
def test_refused_in_one_line_with_exit_2_and_no_run(
    name: str,
    argv: list[str],
    finished: tuple[Path, str],
    unfinished: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, run_id = finished
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    fresh = tmp_path / "fresh"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    names = {
        RUN: run_id,
        STORE: str(store),
        FRESH: str(fresh),
        "<down>": f"http://127.0.0.1:{free_port()}",
        "<down-pg>": f"postgresql://u@127.0.0.1:{free_port()}/optuna",
        "<folder>": str(folder),
        "<nofile>": str(tmp_path / "nothing-here"),
        **unfinished,
    }
    args = []
    for a in argv:
        for key, value in names.items():
            a = a.replace(key, value)
        args.append(a)
    args.append(f"paths.reports={tmp_path / 'reports'}")
    before = runs_in(store)
    code = main(args)
    out = capsys.readouterr()
    assert code == 2, (name, code, out.err[-2000:])
    assert out.err.startswith("error: ") and out.err.count("\n") == 1, (name, out.err)
    assert "Traceback" not in out.err + out.out
    assert not fresh.exists() or runs_in(fresh) == 0, name
    assert runs_in(store) == before, name
    assert models_in(store) == 0, name  # nothing registered
    assert not (tmp_path / "reports").exists(), name
    assert not list(tmp_path.rglob("journal.log")), name


def test_short_texts_are_within_every_mlflow_limit() -> None:
    """Texts up to SHORT_TEXT characters are not measured against MLflow's limits (that would
    import MLflow): none of those limits may be shorter."""
    from pipeline.config.validation import SHORT_TEXT, mlflow_limits

    assert min(mlflow_limits().values()) >= SHORT_TEXT
    assert mlflow_limits()["experiment"] == 256 and mlflow_limits()["run_name"] == 250


def test_help_and_schema_errors_load_no_heavy_module() -> None:
    """`--help` and a config refused by the schema answer at once: nothing heavy is imported
    (torch alone takes 2 to 5 s here)."""
    import subprocess
    import sys

    code = """
import sys
from pipeline.cli import main
heavy = {"torch", "lightning", "mlflow", "optuna", "matplotlib"}
bad = [
    ["run", "seed_forgetting", "trainer.epochz=3"],
    ["run", "seed_forgetting", "optim.lr=-1"],
    ["run", "seed_forgetting", "strategy=[ewc,"],
    ["run", "no_such_experiment"],
    ["config", "seed_forgetting", "model.dropout=2"],
]
codes = [main(argv) for argv in bad]
try:
    main(["--help"])
except SystemExit as e:
    codes.append(e.code)
print(codes, sorted(heavy & set(sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[2, 2, 2, 2, 2, 0] []", done.stdout
