"""The strategy hooks, driven by the real runner through a toy plugin."""

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.runs import run, small_synthetic
from helpers.stores import checkpoint, client

from pipeline.checkpoints import load_checkpoint
from pipeline.module import ContinualModule, DivergenceError
from pipeline.strategies import REGISTRY, Strategy


@dataclass
class ToyParams:
    relabel: int = -1  # >= 0: train every sample with this label
    nan_at_task: int = -1  # >= 0: return a NaN penalty at this task


class Toy(Strategy):
    """Records every hook call; optionally rewrites the batch or poisons the loss."""

    name = "toy"
    Params = ToyParams

    def __init__(self, params: ToyParams) -> None:
        super().__init__(params)
        self.events: list[str] = []
        self.task = -1
        self.steps = 0

    def on_task_start(self, ctx):
        self.task = ctx.index
        self.events.append(f"start{ctx.index}")

    def transform_batch(self, batch, ctx):
        self.events.append("batch")
        if self.params.relabel >= 0:
            batch = batch._replace(y=torch.full_like(batch.y, self.params.relabel))
        return batch

    def penalty(self, model, batch, logits):
        self.events.append("penalty")
        if self.task == self.params.nan_at_task:
            return torch.tensor(float("nan"))
        return 0.0 * logits.sum()

    def after_backward(self, model):
        assert any(p.grad is not None for p in model.parameters()), "called before backward"
        self.events.append("backward")

    def after_optimizer_step(self, model):
        self.steps += 1
        self.events.append("step")

    def on_task_end(self, ctx):
        self.events.append(f"end{ctx.index}")

    def state_dict(self):
        return {"steps": self.steps, "events": len(self.events)}

    def load_state_dict(self, state):
        self.steps = state["steps"]


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(REGISTRY, "toy", Toy)
    made: list[Toy] = []
    real_init = Toy.__init__

    def spy(self, params):
        real_init(self, params)
        made.append(self)

    monkeypatch.setattr(Toy, "__init__", spy)
    return made


def toy_cfg(store: Path, **params):
    cfg = small_synthetic(store, "trainer.epochs=1", "trainer.max_batches=5")
    cfg.strategy, cfg.strategies = ["toy"], {"toy": params}
    return cfg


def test_hook_order(toy, store):
    run(toy_cfg(store))
    events = toy[0].events
    per_step = ["batch", "penalty", "backward", "step"]
    assert events == ["start0", *per_step * 5, "end0", "start1", *per_step * 5, "end1"]


def test_transformed_batch_is_what_trains(toy, store):
    result = run(toy_cfg(store, relabel=3))
    assert result.matrix["test"][1, 1] < 0.2  # every label was rewritten to 3: task not learned


def test_optimizer_is_fresh_per_task(toy, store, monkeypatch):
    made = []
    real = ContinualModule.configure_optimizers

    def spy(self):
        opt = real(self)
        assert not opt.state, "optimizer state carried over"
        made.append(opt)
        return opt

    monkeypatch.setattr(ContinualModule, "configure_optimizers", spy)
    run(toy_cfg(store))
    assert len(made) == 2 and made[0] is not made[1]


def test_optimizer_state_carries_over_tasks_with_carry_state(store, monkeypatch):
    """optim.carry_state=true (van de Ven and Tolias's Adam): the next task's Adam starts
    from the moments and step count the last one ended with."""
    made, ended = [], []
    real, real_end = ContinualModule.configure_optimizers, ContinualModule.on_train_end

    def state(opt):  # a copy: the next task's optimizer updates the carried tensors in place
        by_index = opt.state_dict()["state"]
        return {i: {k: v.clone() for k, v in s.items()} for i, s in by_index.items()}

    def spy(self):
        opt = real(self)
        made.append(state(opt["optimizer"]))  # with its schedule
        return opt

    def end(self):
        real_end(self)
        ended.append(state(self.trainer.optimizers[0]))

    monkeypatch.setattr(ContinualModule, "configure_optimizers", spy)
    monkeypatch.setattr(ContinualModule, "on_train_end", end)
    run(small_synthetic(store, "optim.carry_state=true", "optim.schedule=cosine"))
    assert len(made) == 2 and not made[0]
    assert int(ended[0][0]["step"]) > 3 and made[1].keys() == ended[0].keys()
    for i, s in ended[0].items():
        assert all(torch.equal(made[1][i][k], v) for k, v in s.items())


def test_cosine_schedule_falls_to_zero_within_each_task(store, monkeypatch):
    """optim.schedule=cosine: each task starts at optim.lr and ends near 0 (per task)."""
    seen: list[list[float]] = []
    real = ContinualModule.optimizer_step

    def spy(self, *args, **kwargs):
        if self.trainer.global_step == 0:
            seen.append([])
        seen[-1].append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ContinualModule, "optimizer_step", spy)
    run(small_synthetic(store, "optim.schedule=cosine", "optim.lr=0.002"))
    assert len(seen) == 2 and all(len(lrs) > 3 for lrs in seen)
    for lrs in seen:
        assert lrs[0] == pytest.approx(0.002) and lrs[-1] < 0.1 * 0.002
        assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_strategy_state_in_checkpoint(toy, store):
    result = run(toy_cfg(store))
    module, _, _ = checkpoint(store, result.run_id, 0)
    assert module.strategies[0].steps == 5  # restored from the task-0 checkpoint
    module, _, _ = checkpoint(store, result.run_id, 1)
    assert module.strategies[0].steps == 10


def test_divergence_fails_the_run_and_keeps_earlier_checkpoints(toy, store):
    with pytest.raises(DivergenceError, match="task 1"):
        run(toy_cfg(store, nan_at_task=1))
    c = client(store)
    (failed,) = c.search_runs([c.get_experiment_by_name("synthetic_forgetting").experiment_id])
    assert failed.info.status == "FAILED"
    assert "DivergenceError" in failed.data.tags["error"]
    ckpts = [a.path for a in c.list_artifacts(failed.info.run_id, "checkpoints")]
    assert ckpts == ["checkpoints/task00-synthetic0.ckpt"]


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a pipeline checkpoint"):
        load_checkpoint(bad)


def test_weights_gone_non_finite_between_loss_checks_fail_the_task_and_write_no_checkpoint(
    toy, store, monkeypatch
):
    """The loss is checked every 10th batch; weights that turn NaN in between must not reach a
    checkpoint (nor a FINISHED run)."""

    def poison(self, model):  # after the first step of task 1, a weight becomes NaN
        self.steps += 1
        if self.task == 1 and self.steps == 6:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")

    monkeypatch.setattr(Toy, "after_optimizer_step", poison)
    with pytest.raises(DivergenceError, match="NaN or infinite after task 1"):
        run(toy_cfg(store))  # 5 batches a task: the loss is checked at batch 0 only
    c = client(store)
    (failed,) = c.search_runs([c.get_experiment_by_name("synthetic_forgetting").experiment_id])
    assert failed.info.status == "FAILED"
    ckpts = [a.path for a in c.list_artifacts(failed.info.run_id, "checkpoints")]
    assert ckpts == ["checkpoints/task00-synthetic0.ckpt"]
