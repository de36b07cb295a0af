"""End to end on two synthetic tasks: forgetting shows, and the MLflow run holds what it must."""

import csv
import io
import re
import signal
import subprocess
import sys
import time
from importlib import metadata

import numpy as np
import pytest
import torch
from helpers.runs import run, small_synthetic
from helpers.stores import checkpoint, client

from pipeline import OMP_WAIT_POLICY, runfiles
from pipeline.config.paths import REPO_ROOT
from pipeline.metrics import percent
from pipeline.report import along_sequence
from pipeline.results import SequenceResult, accuracy_along
from pipeline.store import Store
from pipeline.tracking import Run


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    store = tmp_path_factory.mktemp("e2e") / "mlruns"
    cfg = small_synthetic(store, "tracking.figures=true")  # the tests' default is off
    return cfg, store, run(cfg)


def test_forgetting_shows(finished):
    _, _, result = finished
    R = result.matrix["test"]
    assert R.shape == (2, 2)
    assert R[0, 0] > 0.8, "task 0 not learned"
    assert R[1, 1] > 0.8, "task 1 not learned"
    assert R[1, 0] < R[0, 0] - 0.3, f"no forgetting: {R.tolist()}"
    s = result.summary["test"]
    assert s["bwt"] == pytest.approx(R[1, 0] - R[0, 0])
    assert s["forgetting"] == pytest.approx(R[0, 0] - R[1, 0])
    assert s["fwt"] == pytest.approx(R[0, 1] - result.init["test"][1])
    assert all(0.0 <= x <= 1.0 for x in result.init["test"])


def test_mlflow_run_holds_everything(finished):
    cfg, store, result = finished
    client_ = client(store)
    info = client_.get_run(result.run_id)
    assert info.info.status == "FINISHED"
    p, tags, m = info.data.params, info.data.tags, info.data.metrics
    assert p["seed"] == "0" and p["trainer.epochs"] == str(cfg.trainer.epochs)
    assert p["data.tasks.1.name"] == "synthetic1"
    assert tags["mlflow.source.git.commit"]
    assert tags["version.torch"] == metadata.version("torch")
    assert tags["omp_wait_policy"] == (OMP_WAIT_POLICY or "unset")
    assert {"md5.synthetic0.tensors", "md5.synthetic1.tensors"} <= set(tags)
    for name in result.tasks:
        for split in ("test", "val"):
            history = client_.get_metric_history(result.run_id, f"{split}/{name}")
            assert [h.step for h in sorted(history, key=lambda h: h.step)] == [0, 1]
            last = max(history, key=lambda h: h.step).value
            assert last == percent(result.matrix[split][1, result.tasks.index(name)])
        history = client_.get_metric_history(result.run_id, f"{split}/avg_acc")  # running, once
        assert sorted(h.step for h in history) == [0, 1]
    for name in ("bwt", "forgetting", "fwt", "plasticity", "retention"):
        assert m[f"test/{name}"] == percent(result.summary["test"][name])
    assert m["val/avg_acc"] == percent(result.summary["val"]["avg_acc"])
    assert m["test/init/synthetic0"] == percent(result.init["test"][0])
    assert "time/train_total_s" in m
    for t in (0, 1):  # per-task curves, namespaced because global_step restarts per Trainer
        assert client_.get_metric_history(result.run_id, f"t{t}/train/loss")
        for curve in ("train", "val"):  # in percent, rounded, like every accuracy
            values = [
                h.value for h in client_.get_metric_history(result.run_id, f"t{t}/{curve}/acc")
            ]
            assert values and all(10 < v <= 100 and v == round(v, 2) for v in values), values
    for key in ("time/train_s", "time/task_wall_s"):  # one value per task
        assert len(client_.get_metric_history(result.run_id, key)) == 2
    files = {a.path for a in client_.list_artifacts(result.run_id)}
    assert {
        "config.yaml",
        "accuracy_matrix.json",
        "accuracy_matrix.png",
        "data_checksums.json",
        "checkpoints",
    } <= files
    ckpts = sorted(a.path for a in client_.list_artifacts(result.run_id, "checkpoints"))
    assert ckpts == ["checkpoints/task00-synthetic0.ckpt", "checkpoints/task01-synthetic1.ckpt"]
    assert info.info.artifact_uri.startswith(store.resolve().as_uri())
    matrix = Run.get(Store.at(store), result.run_id).read_json("accuracy_matrix.json")
    assert np.allclose(matrix["test"]["matrix"], result.matrix["test"])
    assert matrix["scenario"] == "domain"


def test_accuracy_along_the_sequence_is_logged_beside_the_heatmap(finished, tmp_path):
    _, store, result = finished
    r = Run.get(Store.at(store), result.run_id)
    assert {"accuracy_along.csv", "accuracy_along.png"} <= set(r.list_files())
    plain = run(small_synthetic(tmp_path / "plain", "trainer.epochs=1", "trainer.max_batches=2"))
    files = set(Run.get(Store.at(tmp_path / "plain"), plain.run_id).list_files())
    # tracking.figures off (the tests' default): the data without the pictures
    assert {"accuracy_along.csv", "accuracy_matrix.json"} <= files
    assert not {f for f in files if f.endswith(".png")}
    assert r.download("accuracy_along.png", tmp_path).read_bytes()[:4] == b"\x89PNG"
    text = r.download("accuracy_along.csv", tmp_path).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["split", "after_task", *result.tasks]
    for split in ("test", "val"):  # one row per task trained, the matrix's row in %
        mine = [row for row in rows if row["split"] == split]
        assert [row["after_task"] for row in mine] == result.tasks
        for i, row in enumerate(mine):
            assert all(re.fullmatch(r"\d+\.\d\d", row[t]) for t in result.tasks), row
            got = [float(row[t]) for t in result.tasks]
            np.testing.assert_allclose(got, result.matrix[split][i] * 100, atol=0.005)
    assert rows[0]["split"] == "test" and len(rows) == 2 * len(result.tasks)


def test_accuracy_along_is_the_matrix_in_percent_test_split_first():
    result = SequenceResult(
        "run",
        "0",
        ["mnist", "fashion_mnist"],
        ["MNIST", "Fashion-MNIST"],
        {"val": np.array([[0.5, 0.1], [0.2, 0.9]]), "test": np.array([[0.98765, 0.1], [0.3, 1.0]])},
        {"val": [0.1, 0.1], "test": [0.104, 0.0996]},
    )
    test, val = accuracy_along(result)
    assert (test.split, val.split) == ("test", "val")
    assert test.tasks == ["mnist", "fashion_mnist"]
    assert test.rows == [[98.77, 10.0], [30.0, 100.0]] and test.init == [10.4, 9.96]
    assert runfiles.along_csv([test, val]) == (
        "split,after_task,mnist,fashion_mnist\n"
        "test,mnist,98.77,10.00\ntest,fashion_mnist,30.00,100.00\n"
        "val,mnist,50.00,10.00\nval,fashion_mnist,20.00,90.00\n"
    )
    (only,) = accuracy_along(
        SequenceResult("r", "0", ["a"], ["A"], {"val": np.eye(1)}, {"val": [0.5]})
    )
    assert (only.split, only.rows, only.init) == ("val", [[100.0]], [50.0])  # a sweep's trial
    ax = along_sequence(test.rows, test.tasks, "title", test.split, test.init).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["init", "mnist", "fashion_mnist"]
    assert [line.get_label() for line in ax.get_lines()] == ["mnist", "fashion_mnist"]
    assert list(ax.get_lines()[0].get_ydata()) == [10.4, 98.77, 30.0]
    assert ax.get_ylabel() == "test accuracy (%)"


def test_checkpoint_per_task_reloads(finished):
    _, store, result = finished
    module0, cfg0, meta0 = checkpoint(store, result.run_id, 0)
    module1, _, meta1 = checkpoint(store, result.run_id, 1)
    assert meta0["run_id"] == result.run_id and meta0["task_index"] == 0
    assert meta1["task_index"] == 1 and cfg0.name == "synthetic_forgetting"
    w0, w1 = module0.model.state_dict(), module1.model.state_dict()
    assert not all(torch.equal(w0[k], w1[k]) for k in w0), "task 1 overwrote task 0's file"


def test_same_seed_same_matrix(finished, tmp_path):
    _, _, result = finished
    again = run(small_synthetic(tmp_path / "other"))
    for split in ("test", "val"):
        assert np.array_equal(again.matrix[split], result.matrix[split])


def test_sigterm_ends_the_run_killed_and_exits_143(tmp_path):
    """`kill` unwinds like Ctrl-C: Python's default would leave the MLflow run RUNNING."""
    store = tmp_path / "mlruns"
    cmd = [sys.executable, "-m", "pipeline", "run", "synthetic_forgetting"]
    fast = ["trainer.progress_bar=false", "trainer.threads=1", "trainer.epochs=500"]
    # The test opens the store before the run does (tests/test_tracking.py: either order works).
    client_ = client(store)
    client_.search_experiments()
    proc = subprocess.Popen(
        [*cmd, f"paths.store={store}", *fast], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        run_id = ""
        deadline = time.time() + 120
        while not run_id and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            exp = client_.get_experiment_by_name("synthetic_forgetting")
            runs = client_.search_runs([exp.experiment_id]) if exp else []
            logged = {a.path for a in client_.list_artifacts(runs[0].info.run_id)} if runs else ()
            if "config.yaml" in logged:  # the run has started; its curves are held till task end
                run_id = runs[0].info.run_id
        if run_id:
            time.sleep(3)  # the untrained model's evaluation takes a moment; 500 epochs do not
            proc.send_signal(signal.SIGTERM)
        else:
            proc.kill()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (out + err).decode()
    said = f"exit {proc.returncode}: {text[:4000]} ... {text[-4000:]}"
    assert run_id, f"no run started in 120 s; {said}"
    assert (proc.returncode, client_.get_run(run_id).info.status) == (143, "KILLED"), said
    assert "terminated" in said


def test_runs_are_named_for_what_ran_and_never_alike(tmp_path):
    tiny = ["trainer.epochs=1", "trainer.max_batches=1", "data.synthetic.n_train=60"]
    cfg = small_synthetic(tmp_path / "mlruns", "strategy=[l2]", "seed=3", *tiny)
    names = {client(tmp_path / "mlruns").get_run(run(cfg).run_id).info.run_name for _ in range(2)}
    assert len(names) == 2
    assert all(n.startswith("l2-domain-seed3-") for n in names), names


def test_task_wall_time_includes_the_evaluation_of_every_task(tmp_path, monkeypatch):
    import pipeline.runner

    real = pipeline.runner.evaluate

    def slow(*args, **kwargs):  # a known cost inside each evaluation
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.runner, "evaluate", slow)
    tiny = ["trainer.epochs=1", "trainer.max_batches=1", "data.synthetic.n_train=60"]
    result = run(small_synthetic(tmp_path / "mlruns", *tiny))
    assert all(r.wall_seconds >= r.train_seconds + 0.3 for r in result.records)


def test_the_docs_list_every_metric_key_a_run_logs(finished):
    _, store, result = finished
    logged = client(store).get_run(result.run_id).data.metrics
    listed = (REPO_ROOT / "docs" / "metrics.md").read_text()
    for key in logged:
        generic = re.sub(r"^t\d+/", "t<i>/", key)
        for task in result.tasks:
            generic = re.sub(rf"(?<=/){task}$", "<task>", generic)
        generic = re.sub(r"^(test|val)/", "<split>/", generic)
        assert f"`{generic}`" in listed, f"docs/metrics.md does not list {generic} ({key})"


def test_the_ui_shows_what_runs_are_compared_by(finished, monkeypatch):
    """MLflow's context tags (user, source, commit), the experiment's description, and the
    runs table's columns (part 1 of the UI issue; make test-ui checks them in a browser)."""
    import json

    from pipeline import provenance
    from pipeline.server.ui_app import COLUMNS_TAG, seeded_page

    cfg, store, result = finished
    client_ = client(store)
    tags = client_.get_run(result.run_id).data.tags
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
    exp = client_.get_experiment(result.experiment_id)
    assert exp.tags["mlflow.note.content"] == cfg.description != ""
    columns = json.loads(exp.tags[COLUMNS_TAG])
    assert columns[:2] == ["tags.`strategy`", "tags.`scenario`"]
    for key in ("test/synthetic0", "test/synthetic1", "test/avg_acc", "test/bwt"):
        assert f"metrics.`{key}`" in columns
        assert key in client_.get_run(result.run_id).data.metrics  # a column of a real metric
    url = Store.at(store).ui_url(result.experiment_id, result.run_id, port=5123)
    assert url == (
        f"http://127.0.0.1:5123/#/experiments/{result.experiment_id}/runs/{result.run_id}"
        "?workflowType=machine_learning"
    )
    page = seeded_page("<html><head><title>x</title></head></html>", {"1": ["a</script>"]})
    assert page.startswith("<html><head><script>") and page.count("</script>") == 1
    main = str(provenance.REPO_ROOT / "pipeline" / "__main__.py")
    monkeypatch.setattr(sys, "argv", [main, "run", "seed_forgetting", "paths.store=x"])
    assert provenance.source_name() == "pipeline run seed_forgetting"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])
    assert provenance.source_name() == ""


def test_step_values_are_logged_every_log_interval_and_accuracy_per_epoch(finished):
    """The module logs the loss only on the steps the logger writes (self.log costs ~0.3 ms a
    call) and sums the epoch's training accuracy itself: the same curves, fewer calls."""
    cfg, store, result = finished
    client_ = client(store)
    every = cfg.trainer.log_every_n_steps
    loss = client_.get_metric_history(result.run_id, "t0/train/loss")
    acc = client_.get_metric_history(result.run_id, "t0/train/acc")
    assert loss and all((h.step + 1) % every == 0 for h in loss), [h.step for h in loss]
    assert len(acc) == cfg.trainer.epochs
    assert all(0.0 <= h.value <= 100.0 for h in acc)  # percent
