"""The loss landscape: closed forms on quadratics, the basis, a network's evaluation, and the
CLI end to end on tiny synthetic runs (figures written and logged, clear errors, exit code 2)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.stores import client as client_for
from torch import nn

from pipeline.cli import main
from pipeline.compare.plane import best_raw_free, comparison_plane
from pipeline.compare.table import Comparison, Row
from pipeline.config.paths import PathsConfig
from pipeline.data.tasks import Batch
from pipeline.experiment import compose
from pipeline.landscape.evaluation import (
    Checkpoint,
    ModelLoss,
    Options,
    check_comparable,
)
from pipeline.landscape.geometry import (
    LandscapeError,
    gram_schmidt,
    line_alphas,
    line_values,
    plane_axes,
    plane_coordinates,
    plane_values,
)
from pipeline.landscape.weights import flat_parameters
from pipeline.models import build_model
from pipeline.results import SequenceResult
from pipeline.store import Store
from pipeline.tracking import Run

DATA = PathsConfig().data_dir()  # synthetic tasks read no file

TINY = (
    "trainer.epochs=1",
    "trainer.max_batches=4",
    "data.synthetic.n_train=120",
    "data.synthetic.n_test=40",
    "data.batch_size=32",
)
SMALL = ["--points", "7", "--grid", "4", "--samples", "30"]


def spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    return m @ m.T + d * torch.eye(d, dtype=torch.float64)


def quadratics(h_a, m_a, h_b, m_b):
    """evaluate(theta) = [0.5 (theta - m_A)^T H_A (theta - m_A), same for B]."""

    def evaluate(theta):
        da, db = theta - m_a, theta - m_b
        return [float(0.5 * da @ h_a @ da), float(0.5 * db @ h_b @ db)]

    return evaluate


# -- the math -----------------------------------------------------------------------------------
def test_line_values_equal_the_closed_form():
    d = 7
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g).double()
    h_a, h_b = spd(d, 1), spd(d, 2)
    alphas = line_alphas((-0.25, 1.25), 31)
    got = line_values(a, b, list(alphas), quadratics(h_a, a, h_b, b))
    # theta(alpha) - a = alpha (b - a) and theta(alpha) - b = (alpha - 1)(b - a)
    delta = b - a
    want_a = 0.5 * alphas**2 * float(delta @ h_a @ delta)
    want_b = 0.5 * (1 - alphas) ** 2 * float(delta @ h_b @ delta)
    assert got.shape == (31, 2)
    np.testing.assert_allclose(got[:, 0], want_a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[:, 1], want_b, rtol=1e-12, atol=1e-12)
    assert got[alphas == 0.0, 0] == 0.0 and got[alphas == 1.0, 1] == 0.0  # the bowls' bottoms


def test_line_alphas_hold_both_checkpoints_exactly():
    assert {0.0, 1.0} <= set(line_alphas((-0.25, 1.25), 31).tolist())
    odd = line_alphas((-0.25, 1.25), 9)  # a spacing of 0.1875 misses both
    assert len(odd) == 11 and {0.0, 1.0} <= set(odd.tolist()) and np.all(np.diff(odd) > 0)


def rotated_points(d: int = 6):
    """A, B, S at known plane coordinates (0,0), (3,0), (2,4) in a random rotation of R^d."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    c = torch.randn(d, generator=g, dtype=torch.float64)

    def at(x: float, y: float) -> torch.Tensor:
        return c + x * q[:, 0] + y * q[:, 1]

    return at(0, 0), at(3, 0), at(2, 4), q, c


def test_plane_values_equal_the_closed_form():
    a, b, s, q, c = rotated_points()
    d = a.numel()
    h_a, h_b = spd(d, 4), spd(d, 5)
    m_a, m_b = a, b + 0.5 * q[:, 2]  # B's minimum off the plane: its bowl is cut, not centred
    xs, ys = np.linspace(-1, 4, 6), np.linspace(-1, 5, 5)
    plane = plane_values(a, b, s, (xs, ys), quadratics(h_a, m_a, h_b, m_b))
    assert plane.values.shape == (5, 6, 2)
    g2 = q[:, :2]  # the plane's basis, known by construction
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            p = torch.tensor([x, y], dtype=torch.float64)
            ra, rb = c + g2 @ p - m_a, c + g2 @ p - m_b
            # 0.5 (c + G p - m)^T H (c + G p - m), written out
            want = [float(0.5 * ra @ h_a @ ra), float(0.5 * rb @ h_b @ rb)]
            np.testing.assert_allclose(plane.values[j, i], want, rtol=1e-10)
    assert plane.points["A"] == pytest.approx((0, 0), abs=1e-12)
    assert plane.points["B"] == pytest.approx((3, 0), abs=1e-12)
    assert plane.points["S"] == pytest.approx((2, 4), abs=1e-12)
    # the grid of a number of points holds all three with room
    auto = plane_values(a, b, s, 5, quadratics(h_a, m_a, h_b, m_b), margin=0.25)
    assert auto.values.shape == (5, 5, 2)
    assert auto.xs[0] == pytest.approx(-1.0) and auto.xs[-1] == pytest.approx(4.0)
    assert auto.ys[0] == pytest.approx(-1.0) and auto.ys[-1] == pytest.approx(5.0)


def test_gram_schmidt_basis_is_orthonormal_and_places_the_points():
    g = torch.Generator().manual_seed(7)
    a, b, s = (torch.randn(20_000, generator=g) for _ in range(3))  # float32, like a network
    u, v = gram_schmidt(a, b, s)
    assert float(u @ u) == pytest.approx(1, abs=1e-12)
    assert float(v @ v) == pytest.approx(1, abs=1e-12)
    assert abs(float(u @ v)) < 1e-12
    xb, yb = plane_coordinates(b, a, u, v)
    xs, ys = plane_coordinates(s, a, u, v)
    assert xb == pytest.approx(float(torch.linalg.vector_norm((b - a).double())))
    assert yb == pytest.approx(0, abs=1e-9) and ys > 0
    back = a.double() + xs * u + ys * v  # S lies in the plane: its coordinates rebuild it
    assert torch.allclose(back, s.double(), atol=1e-5)
    with pytest.raises(LandscapeError, match="on the line"):
        gram_schmidt(a, b, a + 0.3 * (b - a))
    with pytest.raises(LandscapeError, match="same point"):
        gram_schmidt(a, a, s)


def test_plane_axes_hold_the_points_with_a_margin():
    pts = [(0, 0), (3, 0), (2, 0.01)]  # nearly on a line: the margin comes from the larger span
    xs, ys = plane_axes(pts, 21, 0.25)
    assert len(xs) == len(ys) == 21
    assert xs[0] == pytest.approx(-0.75) and xs[-1] == pytest.approx(3.75)
    assert ys[0] == pytest.approx(-0.75) and ys[-1] == pytest.approx(0.76)


# -- a network as evaluate(theta) ---------------------------------------------------------------
class TinyNet(nn.Module):
    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5) if norm else nn.Identity()
        self.out = nn.Linear(5, 3)

    def features(self, x):
        return self.fc(x)

    def forward(self, x, task=None):
        return self.out(torch.relu(self.bn(self.fc(x))))


def tiny_batches() -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(2):
        x = torch.randn(37, 4, generator=g) + t
        y = torch.randint(0, 3, (37,), generator=g)
        out.append(Batch(x, y, torch.full((37,), t), torch.arange(37)))
    return out


def test_model_loss_is_the_network_at_theta():
    torch.manual_seed(0)
    net, other = TinyNet(norm=False), TinyNet(norm=False)
    batches = tiny_batches()
    theta = flat_parameters(other)
    got = ModelLoss(net, batches, batch_size=8)(theta)  # batches of 8: sums, not means of means
    with torch.no_grad():
        want = [F.cross_entropy(other(b.x), b.y).item() for b in batches]
        want += [(other(b.x).argmax(1) == b.y).float().mean().item() for b in batches]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert torch.equal(flat_parameters(net), theta)  # the evaluator loaded theta into net


def test_parallel_workers_give_the_serial_values_in_order():
    torch.manual_seed(0)
    a, b = flat_parameters(TinyNet(norm=False)), flat_parameters(TinyNet(norm=False))
    alphas = list(line_alphas((-0.25, 1.25), 13))
    serial = line_values(a, b, alphas, ModelLoss(TinyNet(norm=False), tiny_batches(), 8))
    evaluate = ModelLoss(TinyNet(norm=False), tiny_batches(), 8, workers=3)  # 3 replicas
    parallel = line_values(a, b, alphas, evaluate, workers=3)
    np.testing.assert_allclose(parallel, serial, rtol=1e-6)
    assert evaluate.replicas.qsize() == 3  # every replica handed back


def test_batchnorm_statistics_are_recomputed_at_each_point():
    torch.manual_seed(0)
    net = TinyNet(norm=True)
    batches = tiny_batches()
    evaluate = ModelLoss(net, batches, batch_size=64)  # one batch per task
    theta = flat_parameters(net) * 1.5
    first = evaluate(theta)
    with torch.no_grad():
        feats = [net.features(b.x) for b in batches]  # at theta, which evaluate loaded
    # momentum=None: the plain average of the batches' statistics (unbiased variances)
    assert torch.allclose(net.bn.running_mean, sum(f.mean(0) for f in feats) / 2, atol=1e-6)
    assert torch.allclose(net.bn.running_var, sum(f.var(0) for f in feats) / 2, atol=1e-6)
    assert net.bn.momentum == 0.1  # restored
    net.bn.running_mean.fill_(100.0)  # stale statistics from elsewhere do not leak in
    np.testing.assert_allclose(evaluate(theta), first, rtol=1e-6)
    assert not net.bn.training


def test_another_task_sequence_or_network_is_refused():
    def checkpoint(*overrides: str) -> Checkpoint:
        cfg = compose("synthetic_forgetting", list(overrides))
        model = build_model(cfg.model, (1, 28, 28), [10, 10], cfg.scenario)
        return Checkpoint("r" + str(len(overrides)), "x.ckpt", model, cfg)

    ref = checkpoint()
    check_comparable(ref, checkpoint("strategy=[ewc]"))  # another strategy: fine
    other_tasks = "data.tasks=[{dataset: synthetic, seed: 0},{dataset: synthetic, seed: 2}]"
    with pytest.raises(LandscapeError, match="same task sequence"):
        check_comparable(ref, checkpoint(other_tasks))
    with pytest.raises(LandscapeError, match="same scenario"):
        check_comparable(ref, checkpoint("scenario=task"))
    with pytest.raises(LandscapeError, match="different networks"):
        check_comparable(ref, checkpoint("model=mlp"))


# -- end to end on tiny synthetic runs ----------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A naive run drawn by `run --landscape` (what `make forget` does), an l2 run, and a run
    without checkpoints; the working directory is a temporary one (reports/ lands there)."""
    root = tmp_path_factory.mktemp("landscape")
    store = root / "mlruns"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir("/")  # reports go to paths.reports, not to the working directory
        base = ["run", "synthetic_forgetting", f"paths.store={store}", *TINY]
        base += [f"paths.reports={root / 'reports'}"]
        base += ["trainer.progress_bar=false", "trainer.threads=1"]
        assert main([*base, "--landscape"]) == 0
        assert main([*base, "strategy=[l2]"]) == 0
        assert main([*base, "tracking.log_checkpoints=false", "tracking.run_name=nockpt"]) == 0
    client = client_for(store)
    exp = client.get_experiment_by_name("synthetic_forgetting").experiment_id
    by = {}
    for r in client.search_runs([exp]):
        key = r.info.run_name if r.info.run_name == "nockpt" else r.data.tags["strategy"]
        by[key] = r.info.run_id
    return root, store, by


def artifacts(store: Path, run_id: str) -> set[str]:
    return {a.path for a in client_for(store).list_artifacts(run_id, "landscape")}


def test_run_with_landscape_flag_logs_the_line(runs):
    root, store, by = runs
    assert artifacts(store, by["naive"]) == {"landscape/line.png", "landscape/line.json"}
    line = json.loads((root / f"reports/landscape-{by['naive'][:8]}/line.json").read_text())
    assert len(line["alphas"]) == 31 and line["samples"] == [40, 40]  # all of a small split
    assert line["split"] == "test" and line["run_id"] == by["naive"]
    i0, i1 = line["alphas"].index(0.0), line["alphas"].index(1.0)
    # naive fine-tuning forgets: task A's loss is higher at theta_B than at theta_A
    assert line["loss_a"][i1] > line["loss_a"][i0]
    assert line["loss_b"][i1] < line["loss_b"][i0]


def test_cli_draws_line_and_plane_and_logs_them(runs, tmp_path, capsys):
    _, store, by = runs
    out = tmp_path / "out"
    argv = ["landscape", by["naive"], "--vs", by["l2"], f"paths.store={store}", "--out", str(out)]
    assert main([*argv, *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "line: 7 points" in printed and "plane: 4x4 points" in printed and " s (" in printed
    line, plane_stem = "line-points7-samples30", f"plane-vs-{by['l2'][:8]}-grid4-samples30"
    names = {f"{stem}.{ext}" for stem in (line, plane_stem) for ext in ("png", "json")}
    assert {p.name for p in out.iterdir()} == names
    assert {f"landscape/{n}" for n in names} <= artifacts(store, by["naive"])
    plane = json.loads((out / f"{plane_stem}.json").read_text())
    assert plane["vs_run_id"] == by["l2"] and plane["vs_strategy"] == "l2"
    pts = np.array(list(plane["points"].values()))
    assert pts[0] == pytest.approx([0, 0]) and pts[1][1] == pytest.approx(0, abs=1e-6)
    xs, ys = np.array(plane["xs"]), np.array(plane["ys"])
    assert np.all((xs[0] < pts[:, 0]) & (pts[:, 0] < xs[-1]))  # every point inside, with room
    assert np.all((ys[0] < pts[:, 1]) & (pts[:, 1] < ys[-1]))
    assert np.array(plane["loss_a"]).shape == (4, 4)
    assert (out / f"{plane_stem}.png").stat().st_size > 10_000


def test_landscapes_of_other_settings_keep_their_own_files(runs, tmp_path, capsys):
    """`make landscape` again with other points or samples, or against another VS run, adds
    files beside the first ones; the same settings again say that they replace them."""
    _, store, by = runs
    out = tmp_path / "out"
    base = ["landscape", by["naive"], f"paths.store={store}", "--out", str(out), "--grid", "2"]
    assert main([*base, "--points", "3", "--samples", "10"]) == 0
    assert main([*base, "--points", "4", "--samples", "10"]) == 0
    assert main([*base, "--points", "3", "--samples", "10", "--vs", by["l2"]]) == 0
    assert "replacing line-points3-samples10.png" in capsys.readouterr().out
    plane = f"plane-vs-{by['l2'][:8]}-grid2-samples10"
    stems = {"line-points3-samples10", "line-points4-samples10", plane}
    assert {p.name for p in out.iterdir()} == {f"{s}.{e}" for s in stems for e in ("png", "json")}
    assert {f"landscape/{s}.png" for s in stems} <= artifacts(store, by["naive"])


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("missing", "no MLflow run 'nope0000' in the store"),
        ("nockpt", "has no checkpoints"),
        ("vs-missing", "no MLflow run 'nope0000' in the store"),
        ("vs-nockpt", "has no checkpoints"),
        ("vs-self", "theta_S lies on the line"),  # theta_S = theta_B: no plane
        ("short", "is too short: give at least 8 of its characters"),
    ],
)
def test_clear_error_exit_2_nothing_written(runs, tmp_path, capsys, which, message):
    _, store, by = runs
    run = {"missing": "nope0000", "nockpt": by["nockpt"], "short": by["naive"][:7]}.get(
        which, by["naive"]
    )
    vs = {
        "vs-missing": ["--vs", "nope0000"],
        "vs-nockpt": ["--vs", by["nockpt"]],
        "vs-self": ["--vs", by["naive"]],
    }.get(which, [])
    before = artifacts(store, by["naive"])
    out = tmp_path / "out"
    code = main(["landscape", run, *vs, f"paths.store={store}", "--out", str(out), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists() and artifacts(store, by["naive"]) == before


def test_runs_are_named_by_the_8_characters_printed(runs, tmp_path, capsys):
    """`make landscape RUN=<prefix> VS=<prefix>`: the ids as the commands print them."""
    _, store, by = runs
    out = tmp_path / "out"
    argv = ["landscape", by["naive"][:8], "--vs", by["l2"][:8], f"paths.store={store}"]
    assert main([*argv, "--out", str(out), *SMALL]) == 0
    assert f"logged them to run(s) {by['naive'][:8]}" in capsys.readouterr().out
    plane = json.loads(next(out.glob("plane-*.json")).read_text())
    assert plane["run_id"] == by["naive"] and plane["vs_run_id"] == by["l2"]  # the full ids


def test_no_store_is_an_error_and_creates_none(tmp_path, capsys):
    assert main(["landscape", "abc", f"paths.store={tmp_path / 'none'}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def fake_result(run_id: str, val_avg: float) -> SequenceResult:
    return SequenceResult(
        run_id, "0", ["a", "b"], ["A", "B"], {}, {}, {"val": {"avg_acc": val_avg}}
    )


def comparison(rows: list[Row], report: Path, parent: str = "") -> Comparison:
    return Comparison(
        "synthetic_forgetting", ["a", "b"], ["A", "B"], "domain", [0], rows, {}, parent, report
    )


def test_best_raw_free_strategy_by_mean_val_accuracy(tmp_path):
    rows = [
        Row("naive", [fake_result("n", 0.5)]),
        Row("joint", [fake_result("j", 0.99)]),  # keeps raw data, and a baseline
        Row("replay", [fake_result("r", 0.95)]),  # keeps raw data
        Row("ewc+replay", [fake_result("er", 0.97)]),  # a part keeps raw data
        Row("ewc", [fake_result("e1", 0.6), fake_result("e2", 0.8)]),  # mean 0.7
        Row("lwf", [fake_result("l", 0.69)]),
    ]
    assert best_raw_free(comparison(rows, tmp_path)) == "ewc"
    assert best_raw_free(comparison(rows[:4], tmp_path)) is None


def test_comparison_plane_naive_vs_best_and_ewc(runs, tmp_path):
    _, store, by = runs
    rows = [Row("naive", [fake_result(by["naive"], 0.5)]), Row("l2", [fake_result(by["l2"], 0.6)])]
    with Run.start(Store.at(store), "synthetic_forgetting", "parent") as parent:
        c = comparison(rows, tmp_path, parent.run_id)
        lines = comparison_plane(c, Store.at(store), DATA, Options(grid=3, samples=20), print)
    assert "![loss landscape: naive vs l2](landscape/plane-l2.png)" in lines
    assert (tmp_path / "landscape" / "plane-l2.png").is_file()
    assert artifacts(store, parent.run_id) == {"landscape/plane-l2.png", "landscape/plane-l2.json"}
    # EWC, the reference regulariser, gets its plane too when it is not the best one
    rows.append(Row("ewc", [fake_result(by["l2"], 0.55)]))
    c = comparison(rows, tmp_path / "e", parent.run_id)
    lines = comparison_plane(c, Store.at(store), DATA, Options(grid=3, samples=20), print)
    pictures = [line for line in lines if line.startswith("![")]
    assert pictures == [
        "![loss landscape: naive vs l2](landscape/plane-l2.png)",
        "![loss landscape: naive vs ewc](landscape/plane-ewc.png)",
    ]
    assert (tmp_path / "e" / "landscape" / "plane-ewc.json").is_file()
    # without naive: nothing drawn, the reason in the report
    c = comparison(rows[1:], tmp_path / "x", "p")
    lines = comparison_plane(c, Store.at(store), DATA, None, print)
    assert "not drawn" in lines[0] and not (tmp_path / "x").exists()
