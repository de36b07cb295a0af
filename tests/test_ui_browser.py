"""`make test-ui`: the MLflow UI as a user sees it, in headless Chromium (Debian's package).

One finished run of the founding experiment (1 epoch per task; the synthetic experiment when
the MNIST files are absent) in a scratch store, `make ui` over it (``python -m pipeline ui``),
then the links the pipeline prints, each loaded in a fresh browser profile, as a new user's:
- the experiment without ``?workflowType``: the runs table of the model-training view (not
  MLflow's GenAI overview), with the description, user, source, commit, strategy, scenario,
  each task's final accuracy, average accuracy and BWT, in percent;
- the list of experiments, without the column set-up's raw JSON tag;
- the run link: its metrics and source;
- the run's artifacts: the accuracy-along-the-sequence figure and the heatmap.
Assertions read the DOM after the page's scripts ran. ``UI_SCREENSHOTS=<folder>`` also saves
the screenshots there (`make test-ui` writes docs/img/, which docs/tracking.md shows).

Marked ``browser``: not part of `make test` (it takes about 4 minutes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.catalogue import dataset
from pipeline.config.paths import REPO_ROOT
from pipeline.data.provision import problem
from pipeline.provenance import git_commit
from pipeline.server.common import end_session, free_port

pytestmark = pytest.mark.browser

REAL = ["trainer.epochs=1", "trainer.threads=2"]
TINY = ["trainer.epochs=1", "data.synthetic.n_train=400", "data.synthetic.n_test=100"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if exe := shutil.which(name):
            return exe
    pytest.fail("no Chromium: `apt-get install chromium` (make test-ui installs it as root)")


def _browse(url: str, profile: Path, shot: Path | None = None) -> str:
    """The DOM of ``url`` after its scripts ran (20 s of virtual time), in a fresh profile."""
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    args += [f"--user-data-dir={profile}", "--virtual-time-budget=20000"]
    args += ["--window-size=1600,900"]
    if shot is not None:
        subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=120)
        assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {url}"
        shutil.rmtree(profile)  # the DOM below comes from a new user's profile too
    done = subprocess.run([*args, "--dump-dom", url], capture_output=True, timeout=120, text=True)
    return done.stdout


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, list[str]]]:
    """``make ui`` over a store with one finished run: (base URL, printed run link, run id,
    task names)."""
    store = tmp_path_factory.mktemp("store")
    data = REPO_ROOT / "data"
    real = all(not problem(dataset(n), data) for n in ("mnist", "fashion_mnist"))
    exp, args = ("seed_forgetting", REAL) if real else ("synthetic_forgetting", TINY)
    run = [sys.executable, "-m", "pipeline", "run", exp, f"paths.store={store}", *args]
    out = subprocess.run(run, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    link = re.search(r"http://127\.0\.0\.1:5000/\S+", out.stdout)
    assert link, out.stdout[-1000:]
    run_id = link.group(0).split("/runs/")[1].split("?")[0]
    tasks = ["mnist", "fashion_mnist"] if real else ["synthetic0", "synthetic1"]
    port = free_port()
    cmd = [sys.executable, "-m", "pipeline", "ui", f"paths.store={store}", "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=REPO_ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/health", server)
        yield base, link.group(0).replace(":5000/", f":{port}/"), run_id, tasks
    finally:
        end_session(server)


def _wait(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"make ui did not answer at {url}")


def _shot(name: str) -> Path | None:
    folder = os.environ.get("UI_SCREENSHOTS")
    if not folder:
        return None
    path = Path(folder) if Path(folder).is_absolute() else REPO_ROOT / folder
    path.mkdir(parents=True, exist_ok=True)
    return path / name


def test_the_experiment_opens_on_the_runs_table_with_our_columns(
    ui: tuple[str, str, str, list[str]], tmp_path: Path
) -> None:
    base, _, _, tasks = ui
    # No ?workflowType: the experiments list's own link, as a new user's browser opens it.
    dom = _browse(f"{base}/#/experiments/1", tmp_path / "p", _shot("ui-runs-table.png"))
    assert "Evaluation runs" not in dom and "Model training" in dom
    for column in ["strategy", "scenario", "test/avg_acc", "test/bwt"]:
        assert column in dom, column
    for task in tasks:
        assert f"test/{task}" in dom
    assert not re.search(r">0\.\d{3,}<", dom)  # accuracies in percent, rounded (not 0.3553...)
    assert "plain fine-tuning" in dom  # the experiment's description
    assert re.search(r">pipeline run \w+<", dom)  # Source
    assert f">{git_commit()[:6]}<" in dom  # Version: the commit, as MLflow shortens it


def test_the_list_of_experiments_shows_no_raw_column_setup(
    ui: tuple[str, str, str, list[str]], tmp_path: Path
) -> None:
    base = ui[0]
    dom = _browse(f"{base}/#/experiments", tmp_path / "p", _shot("ui-experiments.png"))
    assert re.search(r"(seed|synthetic)_forgetting", dom)
    shown = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # our seed script names them
    assert "pipeline.columns" not in shown and "metrics.`" not in shown  # the tag, hidden


def test_the_printed_run_link_shows_the_run(
    ui: tuple[str, str, str, list[str]], tmp_path: Path
) -> None:
    _, link, run_id, tasks = ui
    assert "workflowType=machine_learning" in link
    dom = _browse(link, tmp_path / "p", _shot("ui-run.png"))
    assert run_id in dom and "Evaluation runs" not in dom
    assert all(f"test/{t}" in dom for t in tasks)


def test_the_run_shows_accuracy_along_the_sequence(
    ui: tuple[str, str, str, list[str]], tmp_path: Path
) -> None:
    _, link, _, _ = ui
    url = link.replace("?", "/artifacts/accuracy_along.png?")
    dom = _browse(url, tmp_path / "p", _shot("ui-accuracy-along.png"))
    for name in ("accuracy_along.png", "accuracy_along.csv", "accuracy_matrix.png"):
        assert name in dom, name
    assert re.search(r"<img[^>]+accuracy_along\.png", dom)  # the figure itself is shown
