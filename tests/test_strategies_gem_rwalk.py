"""GEM (gradient episodic memory) and RWalk (Riemannian walk): each one's defining property,
their state round trips and config checks, and RWalk against naive through the real runner."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers.runs import run, small_synthetic
from torch import Tensor, nn

from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch, TaskDataset
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.models import build_model
from pipeline.strategies import REGISTRY, Strategy, TaskContext, parse_params
from pipeline.strategies.gem import GEM, project
from pipeline.strategies.rwalk import RWalk, rescaled

CPU = torch.device("cpu")
THREE_TASKS = (
    "data.tasks=[" + ",".join(f"{{dataset: synthetic, seed: {i}}}" for i in range(3)) + "]"
)


def make(name: str, **params: Any) -> Strategy[Any]:
    return REGISTRY[name](parse_params(name, params))


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save and a weights-only load, as a checkpoint goes."""
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


# -- GEM: the projection ---------------------------------------------------------------------------
def test_gem_projection_with_one_constraint_is_the_closed_form() -> None:
    """One past task: the dual is one number, ``v = max(-g.g1 / |g1|^2, margin)``, and
    ``g~ = g + v g1`` (margin 0: A-GEM's projection, ``g~ . g1 = 0``)."""
    g1 = torch.tensor([[1.0, 0.0, 2.0]])
    g = torch.tensor([-3.0, 1.0, 1.0])  # g . g1 = -1 < 0
    assert torch.allclose(project(g, g1, 0.0), g + 0.2 * g1[0], atol=1e-6)
    assert abs(float(project(g, g1, 0.0) @ g1[0])) < 1e-6
    assert torch.allclose(project(g, g1, 0.5), g + 0.5 * g1[0], atol=1e-6)  # v = margin


def test_gem_projection_satisfies_every_constraint_and_is_the_closest() -> None:
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(4, 30, generator=gen)
    g = -G.sum(0) + 0.3 * torch.randn(30, generator=gen)
    assert (G @ g < 0).all()
    tol = 1e-5 * G.norm(dim=1) * g.norm()
    for margin in (0.0, 0.5):
        z = project(g, G, margin)
        assert (G @ z >= -tol).all(), (margin, (G @ z).tolist())
    # margin 0: the closest point of the cone {z : G z >= 0}. KKT: z - g = G^T v with v >= 0,
    # and v_k > 0 only on the constraints z holds with equality.
    z = project(g, G, 0.0)
    v = torch.linalg.lstsq(G.T.double(), (z - g).double().unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose((G.T.double() @ v).float(), z - g, atol=1e-5)
    assert (v >= -1e-6).all()
    assert ((v.abs() < 1e-6) | ((G @ z).abs() < tol)).all()
    # nothing to project: a gradient within the cone comes back (projected onto itself)
    inside = G.T @ torch.linalg.solve(G @ G.T, torch.ones(4))
    assert torch.allclose(project(inside, G, 0.0), inside, atol=1e-5)


# -- GEM: through its hooks, on a real data module and CNN ---------------------------------------
class Harness:
    """Three synthetic tasks, the CNN and GEM, driven by hand."""

    def __init__(self, tmp: Path, scenario: str = "domain", **params: Any) -> None:
        cfg = small_synthetic(
            tmp / "mlruns", f"scenario={scenario}", THREE_TASKS, "data.synthetic.n_train=120"
        )
        self.dm = ContinualDataModule(cfg.data, scenario=scenario)
        self.dm.setup()
        torch.manual_seed(0)
        self.model = build_model(cfg.model, self.dm.input_shape, self.dm.classes_per_task, scenario)
        self.strategy = make("gem", **params)
        assert isinstance(self.strategy, GEM)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05)

    def ctx(self, i: int) -> TaskContext:
        return TaskContext(i, self.dm.tasks[i], self.dm, self.model, CPU)

    def batch(self, i: int, start: int = 0, n: int = 32) -> Batch:
        task = self.dm.tasks[i]
        return TaskDataset([(task.train, task)], self.dm.tasks)[torch.arange(start, start + n)]

    def start(self, i: int) -> TaskContext:
        ctx = self.ctx(i)
        self.model.head.start_task(i)
        self.strategy.on_task_start(ctx)
        return ctx

    def train_task(self, i: int, steps: int = 3) -> None:
        ctx = self.start(i)
        for k in range(steps):
            b = self.strategy.transform_batch(self.batch(i, 32 * k), ctx)
            self.opt.zero_grad()
            F.cross_entropy(self.model(b.x, b.task), b.y).backward()
            self.strategy.after_backward(self.model)
            self.opt.step()
        self.strategy.on_task_end(ctx)

    def memory_grads(self) -> Tensor:
        """Each past task's memory-loss gradient, computed here from the stored samples."""
        params = list(self.model.parameters())
        rows = []
        for memory in self.strategy.memories:  # type: ignore[attr-defined]
            b = self.dm.batch_from(*memory.get(memory.slots()))
            loss = F.cross_entropy(self.model(b.x, b.task), b.y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        torch.zeros(p.numel()) if d is None else d.flatten()
                        for d, p in zip(grads, params, strict=True)
                    ]
                )
            )
        return torch.stack(rows)

    def set_grad(self, flat: Tensor) -> None:
        offset = 0
        for p in self.model.parameters():
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def grad(self) -> Tensor:
        return torch.cat([p.grad.flatten() for p in self.model.parameters()])  # type: ignore[union-attr]


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_gem_step_never_raises_a_past_memory_loss(tmp_path: Path, scenario: str) -> None:
    """Two past tasks: a gradient that opposes both memories is projected so that its dot
    product with each memory gradient is >= 0; one that agrees with both is left unchanged."""
    h = Harness(tmp_path, scenario, size=24)
    h.train_task(0)
    h.train_task(1)
    memories = h.strategy.memories  # type: ignore[attr-defined]
    assert [len(m) for m in memories] == [24, 24]
    assert [set(m.tasks[m.slots()].tolist()) for m in memories] == [{0}, {1}]
    h.start(2)
    G = h.memory_grads()
    noise = torch.randn(G.shape[1], generator=torch.Generator().manual_seed(1))
    g = -G.sum(0) + 0.1 * G.norm(dim=1).mean() * noise / noise.norm()
    assert (G @ g < 0).all()  # the case GEM exists for
    h.set_grad(g)
    h.strategy.after_backward(h.model)
    projected = h.grad()
    assert (G @ projected >= -1e-5 * G.norm(dim=1) * projected.norm()).all(), G @ projected
    assert not torch.allclose(projected, g)
    # A gradient inside the cone of the memories' gradients: G g = 1 > 0, nothing to project.
    inside = G.T.double() @ torch.linalg.solve(G.double() @ G.T.double(), torch.ones(2).double())
    g = inside.float()
    assert (G @ g > 0).all()
    h.set_grad(g)
    h.strategy.after_backward(h.model)
    assert torch.equal(h.grad(), g)


def test_gem_memories_erase_and_round_trip(tmp_path: Path) -> None:
    h = Harness(tmp_path, size=24)
    h.train_task(0)
    h.train_task(1)
    s = h.strategy
    kept = s.retention()
    names = [t.name for t in h.dm.tasks]
    assert kept.raw_samples == {names[0]: 24, names[1]: 24} and kept.raw_bytes > 0
    ids = s.stored_ids(0)
    assert ids is not None and ids.numel() == 24
    assert s.erase(0, ids[:5]) == 5
    after = s.stored_ids(0)
    assert after is not None and not set(after.tolist()) & set(ids[:5].tolist())
    assert s.erase(2, torch.tensor([0, 1])) == 0  # a task not trained yet holds nothing
    stored = s.stored_ids(2)
    assert stored is not None and stored.numel() == 0
    fresh = make("gem", size=24)
    fresh.load_state_dict(roundtrip(s.state_dict()))
    assert fresh.retention() == s.retention()
    # the restored strategy projects exactly as the original does
    h.start(2)
    fresh.on_task_start(h.ctx(2))
    g = -h.memory_grads().sum(0)
    out = []
    for strategy in (s, fresh):
        h.set_grad(g)
        strategy.after_backward(h.model)
        out.append(h.grad())
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], g)


def test_gem_refuses_bad_values_and_retention_none() -> None:
    with pytest.raises(ConfigError, match=r"^strategies\.gem\.margin: "):
        compose("synthetic_forgetting", ["strategy=[gem]", "strategies.gem.margin=-0.1"])
    with pytest.raises(ConfigError, match=r"^strategies\.gem\.size: "):
        compose("synthetic_forgetting", ["strategy=[gem]", "strategies.gem.size=0"])
    with pytest.raises(ConfigError, match="retention=none"):
        compose("synthetic_forgetting", ["strategy=[gem]", "retention=none"])


# -- RWalk: the importance on a hand-made walk -----------------------------------------------------
class Vector(nn.Module):
    """One trainable vector: what RWalk tracks, and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0]))


def walk(strategy: RWalk, model: Vector, steps: list[tuple[list[float], list[float]]]) -> None:
    """Steps of a given task-loss gradient and a given update (not the gradient's: a descent
    for some weights, an ascent for others), through the hooks. The gradient the hooks see is
    the total one, task loss plus RWalk's own penalty, as in training."""
    for grad, update in steps:
        model.w.grad = torch.tensor(grad, dtype=torch.float32)
        pen = strategy.penalty(model, None, torch.zeros(()))  # type: ignore[arg-type]
        if pen is not None:
            (own,) = torch.autograd.grad(pen, [model.w])
            model.w.grad += own
        strategy.after_backward(model)
        with torch.no_grad():
            model.w += torch.tensor(update, dtype=torch.float32)
        strategy.after_optimizer_step(model)


def test_rwalk_importance_is_the_papers_formula_on_a_hand_computed_walk() -> None:
    """Delta t = 2, eps = 0.1, alpha = 0.9. Per window (start theta_0): dL = -sum g * dtheta,
    s += max(dL / (1/2 F (theta - theta_0)^2 + eps), 0) with F the Fisher at the window's start
    (the first window: its own mean g^2), then F <- 0.1 F + 0.9 mean(g^2). At the task's end
    s <- (s + s_task) / 2 and importance = F / max F + s / max s."""
    model = Vector()
    ctx = SimpleNamespace(model=model, index=0, device=CPU)
    strategy = make("rwalk", lam=10.0, alpha=0.9, fisher_update_after=2, eps=0.1)
    assert isinstance(strategy, RWalk)
    strategy.on_task_start(ctx)  # type: ignore[arg-type]
    # Task 0: a full window of two steps, then a one-step tail.
    walk(strategy, model, [([1, 2], [-0.1, -0.2]), ([3, -1], [-0.3, 0.1]), ([2, 1], [0.2, -0.1])])
    strategy.on_task_end(ctx)  # type: ignore[arg-type]
    # window 1: dL = [1.0, 0.5], F = mean g^2 = [5, 2.5], dtheta = [-0.4, -0.1]
    # tail: dL = [-0.4, 0.1] (clamped to 0 for the first weight), F = [5, 2.5], dtheta = [0.2, -0.1]
    s0 = torch.tensor(
        [
            1.0 / (0.5 * 5 * 0.16 + 0.1),
            0.5 / (0.5 * 2.5 * 0.01 + 0.1) + 0.1 / (0.5 * 2.5 * 0.01 + 0.1),
        ]
    )
    f0 = torch.tensor([0.1 * 5 + 0.9 * 4, 0.1 * 2.5 + 0.9 * 1])  # = [4.1, 1.15]
    state = strategy.state_dict()
    assert torch.allclose(state["scores"]["w"], s0, rtol=1e-5)
    assert torch.allclose(state["fisher"]["w"], f0, rtol=1e-5)
    assert torch.allclose(state["importance"]["w"], f0 / f0.max() + s0 / s0.max(), rtol=1e-5)
    anchor0 = torch.tensor([0.5 - 0.2, -1.0 - 0.2])
    assert torch.allclose(state["anchor"]["w"], anchor0)
    # Task 1: one window; the penalty's own gradient is not the task's.
    strategy.on_task_start(ctx)  # type: ignore[arg-type]
    walk(strategy, model, [([1, 1], [-0.1, -0.1]), ([1, -2], [-0.1, 0.2])])
    strategy.on_task_end(ctx)  # type: ignore[arg-type]
    # dL = [0.2, 0.5], F at the window's start [4.1, 1.15], dtheta = [-0.2, 0.1]
    s1 = torch.tensor([0.2 / (0.5 * 4.1 * 0.04 + 0.1), 0.5 / (0.5 * 1.15 * 0.01 + 0.1)])
    f1 = 0.1 * f0 + 0.9 * torch.tensor([1.0, 2.5])
    scores = (s0 + s1) / 2
    importance = f1 / f1.max() + scores / scores.max()
    state = strategy.state_dict()
    assert torch.allclose(state["scores"]["w"], scores, rtol=1e-5)
    assert torch.allclose(state["fisher"]["w"], f1, rtol=1e-5)
    assert torch.allclose(state["importance"]["w"], importance, rtol=1e-5)
    # penalty = lam * sum (F + s) (theta - theta*)^2, anchored at the weights task 1 ended with
    anchor1 = model.w.detach().clone()
    with torch.no_grad():
        model.w += torch.tensor([0.3, -0.2])
    pen = strategy.penalty(model, None, torch.zeros(()))  # type: ignore[arg-type]
    assert pen is not None
    expected = 10.0 * (importance * (model.w.detach() - anchor1) ** 2).sum()
    assert torch.allclose(pen.detach(), expected, rtol=1e-5)


def test_rescaling_of_fisher_and_scores() -> None:
    values = [torch.tensor([1.0, 3.0]), torch.tensor([[2.0, 4.0]])]
    assert torch.allclose(rescaled(values, "max")[1], torch.tensor([[0.5, 1.0]]))
    assert torch.allclose(rescaled(values, "minmax")[0], torch.tensor([0.0, 2 / 3]))
    assert torch.equal(rescaled(values, "none")[0], values[0])
    zeros = rescaled([torch.zeros(3)], "max")[0]
    assert torch.equal(zeros, torch.zeros(3))  # all zero stays zero, not NaN
    assert torch.equal(rescaled([torch.ones(2)], "minmax")[0], torch.zeros(2))


def test_rwalk_state_mid_task_continues_identically() -> None:
    steps = [([1, 2], [-0.1, -0.2]), ([3, -1], [-0.3, 0.1]), ([2, 1], [0.2, -0.1])]
    results = []
    for restore in (False, True):
        model = Vector()
        ctx = SimpleNamespace(model=model, index=0, device=CPU)
        strategy = make("rwalk", fisher_update_after=2)
        assert isinstance(strategy, RWalk)
        strategy.on_task_start(ctx)  # type: ignore[arg-type]
        walk(strategy, model, steps[:1])
        if restore:
            fresh = make("rwalk", fisher_update_after=2)
            assert isinstance(fresh, RWalk)
            fresh.load_state_dict(roundtrip(strategy.state_dict()))
            strategy = fresh
        walk(strategy, model, steps[1:])
        strategy.on_task_end(ctx)  # type: ignore[arg-type]
        results.append(strategy.state_dict())
    for key in ("importance", "fisher", "scores", "anchor"):
        assert torch.equal(results[0][key]["w"], results[1][key]["w"]), key
    assert "walk" not in results[0]  # between tasks: importance, Fisher, scores and anchor


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lam", "-1"),
        ("alpha", "0"),
        ("alpha", "1.5"),
        ("fisher_update_after", "0"),
        ("eps", "0"),
        ("normalise", "median"),
    ],
)
def test_rwalk_refuses_bad_values_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^strategies\.rwalk\.{key}: "):
        compose("synthetic_forgetting", ["strategy=[rwalk]", f"strategies.rwalk.{key}={value}"])


# -- RWalk through the runner ----------------------------------------------------------------------
def test_rwalk_forgets_less_than_naive_on_synthetic_tasks(tmp_path: Path) -> None:
    """Two synthetic tasks, one epoch each (the defaults are Split MNIST's; the synthetic tasks
    need a stronger pull: lam 10 keeps the old task better, 0.53 against naive's 0.32, and
    learns the new one as well)."""
    store = tmp_path / "mlruns"
    results = {}
    for name, extra in (("naive", []), ("rwalk", ["strategies.rwalk.lam=10"])):
        cfg = small_synthetic(store, f"strategy=[{name}]", "trainer.epochs=1", *extra)
        results[name] = run(cfg).matrix["test"]
    naive, rwalk = results["naive"], results["rwalk"]
    assert rwalk[0, 0] == naive[0, 0]  # task 0 trains identically: no penalty yet
    assert rwalk[1, 0] > naive[1, 0] + 0.1, (naive.tolist(), rwalk.tolist())
    assert rwalk[1, 1] > 0.8  # and still learns the new task
