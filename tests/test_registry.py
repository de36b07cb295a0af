"""The Model Registry (`make register`, pipeline.registry) on two tiny synthetic runs: a run's
final model registered as a pyfunc model with alias champion, loaded back through MLflow and
served by `mlflow models serve` (a real server on loopback) with the predictions of the
pipeline's own module; its lineage tags; an erasure followed (the alias moves to the new run's
version, the old one is tagged and its weights deleted); bad inputs refused before anything is
logged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from helpers.runs import TINY, run, small_synthetic
from helpers.stores import checkpoint, client

from pipeline import runfiles
from pipeline.checkpoints import read_checkpoint
from pipeline.cli import main
from pipeline.registry import CHAMPION, follow_erasure, lineage, versions
from pipeline.server.common import end_session, free_port
from pipeline.store import Store
from pipeline.tracking import Run

MODEL = "synthetic_forgetting"  # the default name: the runs' MLflow experiment


class Runs:
    """Two finished tiny runs of one store: ``a`` (replay, so its checkpoints hold training
    samples) registered through the CLI, ``b`` (a sweep's trial, with erasures on record)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.a = run(small_synthetic(store, "strategy=[replay]", *TINY)).run_id
        self.b = run(small_synthetic(store, "seed=1", *TINY)).run_id
        self.uri = Store.at(store).uri
        self.where = f"paths.store={store}"

    def batch(self) -> np.ndarray:
        shape = read_meta(self, self.a)["input_shape"]
        return np.random.default_rng(0).standard_normal((5, *shape)).astype(np.float32)

    def module_logits(self, run_id: str, x: np.ndarray) -> np.ndarray:
        """What the pipeline's own module of the run's last checkpoint outputs."""
        module = checkpoint(self.store, run_id, 1).module
        with torch.inference_mode():
            out: np.ndarray = module(torch.from_numpy(x), torch.ones(len(x), dtype=torch.long))
        return out.numpy()

    def champion_run(self) -> str:
        return str(client(self.store).get_model_version_by_alias(MODEL, CHAMPION).run_id)


def read_meta(runs: Runs, run_id: str) -> dict[str, Any]:
    return dict(checkpoint(runs.store, run_id, 1).meta)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    made = Runs(tmp_path_factory.mktemp("registry") / "mlruns")
    b = Run.get(Store.at(made.store), made.b)
    b.set_tags({"sweep.study": "tiny-study", "sweep.trial": "3", "kind": "trial"})
    runfiles.write_erasures(
        b,
        [
            {"request": "feedface00000000", "unlearned_from": made.a, "unlearned_run": made.b},
            {"task": "synthetic0", "ids": [3, 1], "removed": {}},
            {"request": "0123456789abcdef", "unlearned_from": made.b, "unlearned_run": "x"},
        ],
    )
    assert main(["register", made.a, made.where]) == 0  # the default name, alias champion
    return made


@pytest.fixture
def tracking(runs: Runs, monkeypatch: pytest.MonkeyPatch) -> str:
    """MLflow's global URIs (what ``models:/`` and ``mlflow models serve`` read): the store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs.uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return runs.uri


def test_the_champion_loads_and_predicts_as_the_pipeline_module(runs: Runs, tracking: str) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CHAMPION}")
    inputs = model.metadata.signature.inputs.to_dict()
    assert inputs[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 1, 28, 28)}
    x = runs.batch()
    out = model.predict(x)
    expected = runs.module_logits(runs.champion_run(), x)
    np.testing.assert_allclose(out["logits"], expected, rtol=0, atol=1e-6)
    assert out["class"].tolist() == expected.argmax(1).tolist()


def test_the_registered_files_hold_weights_but_no_training_sample(
    runs: Runs, tmp_path: Path
) -> None:
    folder = client(runs.store).download_artifacts(runs.a, runfiles.MODEL_DIR, str(tmp_path))
    (ckpt,) = Path(folder).rglob("*.ckpt")
    raw = read_checkpoint(ckpt)
    assert raw["strategies"] == {} and raw["optimizer_states"] == []
    source = checkpoint(runs.store, runs.a, 1).module
    assert any("buffer" in k for s in source.strategy_states().values() for k in s)  # replay's
    for key, value in source.state_dict().items():
        assert torch.equal(raw["state_dict"][key], value), key


def test_lineage_tags(runs: Runs) -> None:
    c = client(runs.store)
    (version,) = [v for v in c.search_model_versions(f"run_id = '{runs.a}'") if v.name == MODEL]
    tags = c.get_model_version(MODEL, version.version).tags
    run_tags = c.get_run(runs.a).data.tags
    config = (Path(c.download_artifacts(runs.a, runfiles.CONFIG_FILE))).read_bytes()
    assert tags["pipeline.run_id"] == runs.a
    assert tags["pipeline.config"] == f"runs:/{runs.a}/config.yaml"
    assert tags["pipeline.config_sha256"] == hashlib.sha256(config).hexdigest()
    assert tags["pipeline.git_commit"] == run_tags["mlflow.source.git.commit"]
    md5 = {k: v for k, v in run_tags.items() if k.startswith("md5.")}
    assert md5 and all(tags[k] == v for k, v in md5.items())
    assert tags["pipeline.tasks"] == run_tags["tasks"] == "synthetic0 -> synthetic1"
    assert tags["pipeline.retention"] == "any" and tags["pipeline.strategy"] == "replay"
    assert tags["pipeline.erased_samples"] == "{}"
    assert tags["pipeline.erasure_requests"] == "none"
    assert "pipeline.study" not in tags and "pipeline.trial" not in tags


def test_erasure_lineage_agrees_with_the_unlearning() -> None:
    from pipeline.unlearning import FROM_TAG, Request

    assert lineage.FROM_TAG == FROM_TAG
    record = {"task": "t", "ids": [5, 2, 5]}
    assert lineage._applied_key(record, "r", own=True) == f"buffers:{Request({'t': [2, 5]}).key}"


def test_follow_erasure_moves_the_alias_and_deletes_the_old_weights(
    runs: Runs, tracking: str
) -> None:
    store, c = Store.at(runs.store), client(runs.store)
    source = Path(c.get_model_version(MODEL, "1").source.removeprefix("file://"))
    assert (source / "MLmodel").is_file()
    lines = follow_erasure(store, runs.a, runs.b, "feedface00000000")
    assert any("alias champion moved to version 2" in line for line in lines), lines
    new = c.get_model_version_by_alias(MODEL, CHAMPION)
    assert (str(new.version), new.run_id) == ("2", runs.b)
    old = c.get_model_version(MODEL, "1")
    assert old.aliases == [] and "withdrawn" in old.description
    assert old.tags["pipeline.erased"] == "feedface00000000"
    assert old.tags["pipeline.superseded_by"] == runs.b
    assert not source.exists()  # the old weights are gone: no file of version 1 is left
    assert runfiles.MODEL_DIR not in Run.get(store, runs.a).list_files()
    with pytest.raises(Exception):  # noqa: B017 (MLflow's error for missing files varies)
        mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    tags = c.get_model_version(MODEL, "2").tags
    assert tags["pipeline.erasure_request"] == "feedface00000000"
    assert tags["pipeline.supersedes"] == "1" and tags["pipeline.run_id"] == runs.b
    assert (tags["pipeline.study"], tags["pipeline.trial"]) == ("tiny-study", "3")
    buffers = lineage._applied_key({"task": "synthetic0", "ids": [1, 3]}, runs.b, own=True)
    assert tags["pipeline.erasure_requests"] == f"feedface00000000,{buffers}"
    x = runs.batch()
    out = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CHAMPION}").predict(x)
    np.testing.assert_allclose(out["logits"], runs.module_logits(runs.b, x), rtol=0, atol=1e-6)
    # again (a crash, a second call): nothing new; a run with no version: nothing at all
    again = follow_erasure(store, runs.a, runs.b, "feedface00000000")
    assert any("registered already" in line for line in again), again
    assert len(c.search_model_versions(f"name = '{MODEL}'")) == 2
    assert follow_erasure(store, "0" * 32, runs.b, "x") == []


@pytest.fixture
def served(runs: Runs, tracking: str) -> Iterator[str]:
    """``mlflow models serve`` of the champion on a free loopback port, in the project's
    environment (``--env-manager local``: no conda, no virtualenv built); stopped after."""
    port = free_port()
    venv = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}"}
    uri = f"models:/{MODEL}@{CHAMPION}"
    command = [str(venv / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local"]
    server = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its uvicorn child too is stopped with its group
    )
    try:
        yield _wait_until_up(server, f"http://127.0.0.1:{port}")
    finally:
        end_session(server, timeout=20)


def _wait_until_up(server: subprocess.Popen[bytes], url: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            assert server.stderr is not None
            raise AssertionError(f"mlflow models serve ended: {server.stderr.read()[-3000:]!r}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow models serve did not answer {url}/ping in {timeout:.0f} s")


def test_mlflow_models_serve_answers_the_champions_predictions(runs: Runs, served: str) -> None:
    x = runs.batch()
    request = urllib.request.Request(
        f"{served}/invocations",
        data=json.dumps({"inputs": x.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        predictions = json.loads(r.read())["predictions"]
    expected = runs.module_logits(runs.champion_run(), x)
    np.testing.assert_allclose(np.array(predictions["logits"]), expected, rtol=0, atol=1e-5)
    assert predictions["class"] == expected.argmax(1).tolist()


def test_bad_input_registers_and_logs_nothing(
    runs: Runs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    c = client(runs.store)
    experiment = c.get_run(runs.a).info.experiment_id
    running = c.create_run(experiment).info.run_id
    bare = c.create_run(experiment).info.run_id
    c.set_terminated(bare, "FINISHED")
    failed = c.create_run(experiment).info.run_id
    c.set_terminated(failed, "FAILED")

    def logged(*args: object) -> str:
        raise AssertionError("a model was logged")

    monkeypatch.setattr(versions, "log_model", logged)
    before = len(c.search_model_versions())
    cases = {
        "a/b": ["register", runs.a, "--name", "a/b"],
        "would break its URI": ["register", runs.a, "--name", "x?y"],
        "no MLflow run": ["register", "0" * 32],
        "still running": ["register", running],
        "no checkpoints": ["register", bare],
        "ended FAILED": ["register", failed],
    }
    for why, argv in cases.items():
        assert main([*argv, runs.where]) == 2, why
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and why in err, err
    assert len(c.search_model_versions()) == before
    assert {m.name for m in c.search_registered_models()} == {MODEL}
