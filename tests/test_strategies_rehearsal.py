"""Rehearsal and distillation strategies: the reservoir buffer, replay, A-GEM, DER++ and LwF.

Each test checks one defining property; the end-to-end runs check that the strategies train
through the real runner, compose, and that replay forgets less than plain fine-tuning.
"""

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers.runs import run, small_synthetic
from helpers.stores import checkpoint

from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch, TaskDataset
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.models import build_model
from pipeline.module import ContinualModule
from pipeline.strategies import REGISTRY, Strategy, TaskContext, parse_params
from pipeline.strategies._frozen import distillation
from pipeline.strategies._reservoir import water_fill
from pipeline.strategies.agem import project
from pipeline.strategies.buffer import ReservoirBuffer


# -- helpers ---------------------------------------------------------------------------------
def offer(buf: ReservoirBuffer, source: torch.Tensor, rows: torch.Tensor, labels, task=0) -> int:
    """Offer ``source[rows]`` (sample id = row) to the buffer."""
    labels = torch.as_tensor(labels).expand(rows.shape[0])
    return buf.add(source, rows, labels, torch.full_like(rows, task), rows)


def images(n: int) -> torch.Tensor:
    """n distinct uint8 images (1 x 2 x 2): image i holds i's two base-256 digits."""
    i = torch.arange(n)
    return torch.stack([i % 256, i // 256, i % 7, i % 11], 1).to(torch.uint8).view(n, 1, 2, 2)


class Harness:
    """A real data module, model and LightningModule around one strategy, driven by hand."""

    def __init__(
        self, name: str, scenario: str = "domain", device: str = "cpu", **params: Any
    ) -> None:
        self.device = torch.device(device)
        cfg = small_synthetic(Path("/unused"), f"scenario={scenario}")
        self.dm = ContinualDataModule(cfg.data, scenario=scenario)
        self.dm.setup()
        torch.manual_seed(0)
        model = build_model(cfg.model, self.dm.input_shape, self.dm.classes_per_task, scenario)
        self.strategy = REGISTRY[name](parse_params(name, params))
        self.module = ContinualModule(model, [self.strategy], cfg.optim)
        self.model = self.module.model.to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-3)

    def ctx(self, i: int) -> TaskContext:
        return TaskContext(i, self.dm.tasks[i], self.dm, self.module.model, self.device)

    def batch(self, i: int, start: int = 0, n: int = 32) -> Batch:
        task = self.dm.tasks[i]
        batch = TaskDataset([(task.train, task)], self.dm.tasks)[torch.arange(start, start + n)]
        return Batch(*(t.to(self.device) for t in batch))

    def forward(self, s: Strategy, batch: Batch, ctx: TaskContext) -> list[torch.Tensor]:
        """One training step's computation (no optimizer step); returns what it produced."""
        self.model.zero_grad()
        b = s.transform_batch(batch, ctx)
        logits = self.model(b.x, b.task)
        pen = s.penalty(self.model, b, logits)
        loss = F.cross_entropy(logits, b.y) + (0 if pen is None else pen)
        loss.backward()
        s.after_backward(self.model)
        grads = [p.grad.clone() for p in self.model.parameters() if p.grad is not None]
        return [*b, loss.detach(), *grads]

    def train_task(self, i: int, steps: int = 4, n: int = 32) -> None:
        """Train task ``i`` for a few steps between its start and end hooks."""
        ctx = self.ctx(i)
        self.module.start_task(ctx)
        for k in range(steps):
            self.forward(self.strategy, self.batch(i, k * n, n), ctx)
            self.opt.step()
        self.module.end_task(ctx)


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save and a weights-only load, as a checkpoint goes."""
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


# -- the buffer --------------------------------------------------------------------------------
def test_reservoir_keeps_every_seen_sample_with_equal_probability():
    n, k, reps = 1000, 100, 500
    src = images(n)
    hits = torch.zeros(n)
    for r in range(reps):
        buf = ReservoirBuffer(k, seed=r)
        for s in range(0, n, 250):  # a stream of 4 batches
            offer(buf, src, torch.arange(s, s + 250), 0)
        assert len(buf) == k
        hits[buf.ids[buf.slots()]] += 1
    p = k / n
    expected = reps * p
    # Chi-square of the inclusion counts: ~ chi2(n - 1) (mean 999, sd 45) if uniform.
    chi2 = float(((hits - expected) ** 2 / (expected * (1 - p))).sum())
    assert 999 - 5 * 45 < chi2 < 999 + 5 * 45, chi2
    # No drift along the stream: early and late samples are kept equally often.
    for part in hits.view(4, 250):
        assert abs(float(part.mean()) - expected) < 0.1 * expected


def test_reservoir_is_seeded_and_a_restored_buffer_continues_identically():
    src = images(600)
    a, b = ReservoirBuffer(50, seed=7), ReservoirBuffer(50, seed=7)
    for buf in (a, b):
        offer(buf, src, torch.arange(300), 0)
    assert torch.equal(a.ids, b.ids)
    restored = ReservoirBuffer(50, seed=123)
    restored.load_state_dict(roundtrip(a.state_dict()))
    for buf in (a, restored):
        offer(buf, src, torch.arange(300, 600), 1)
    assert torch.equal(a.ids, restored.ids) and torch.equal(a.images, restored.images)
    assert torch.equal(
        a.sample(20, torch.Generator().manual_seed(1)),
        restored.sample(20, torch.Generator().manual_seed(1)),
    )


def test_water_fill_shares_capacity_equally_as_samples_allow():
    assert water_fill([3, 100, 100, 7], 50) == [3, 20, 20, 7]
    assert water_fill([10, 10, 10], 20) == [7, 7, 6]
    assert water_fill([1, 2], 10) == [1, 2]


def test_class_balanced_buffer_keeps_per_class_quotas():
    src = images(3000)
    buf = ReservoirBuffer(100, class_balanced=True, seed=0)
    # Task 0: ten classes, very unbalanced (class c has 10 + 40 c samples; class 0 only 10).
    labels = torch.cat([torch.full((10 + 40 * c,), c) for c in range(10)])
    rows = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))
    buf.add(src, rows, labels[rows], torch.zeros_like(rows), rows)
    counts = torch.bincount(buf.labels[buf.slots()], minlength=10)
    assert counts.sum() == 100 and counts.tolist() == water_fill(
        [10 + 40 * c for c in range(10)], 100
    )
    assert counts.max() - counts.min() <= 1  # 10 per class: class 0 has exactly enough
    # Task 1 brings ten new (task, target) classes with the same targets: quotas halve.
    rows = torch.arange(2000, 3000)
    buf.add(src, rows, rows % 10, torch.ones_like(rows), rows)
    key = buf.tasks[buf.slots()] * 10 + buf.labels[buf.slots()]
    assert torch.bincount(key, minlength=20).tolist() == [5] * 20
    # A plain reservoir on the same stream follows the class frequencies instead.
    plain = ReservoirBuffer(100, seed=0)
    plain.add(src, rows, rows % 10, torch.ones_like(rows), rows)
    assert plain.empty is False


def test_erase_removes_exactly_those_samples_for_good():
    src = images(400)
    buf = ReservoirBuffer(50, seed=0)
    offer(buf, src, torch.arange(200), 3, task=1)
    stored = buf.ids[buf.slots()]
    victims = torch.cat([stored[:5], torch.tensor([10_000])])  # one id never stored
    assert buf.erase(0, victims) == 0  # task 0 holds none of them
    assert buf.erase(1, victims) == 5
    assert len(buf) == 45
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat([buf.ids[buf.sample(50, gen)] for _ in range(20)])
    assert not torch.isin(drawn, victims).any()
    state = roundtrip(buf.state_dict())
    assert not torch.isin(state["ids"], victims).any() and state["ids"].numel() == 45
    gone = {bytes(src[int(i)].numpy()) for i in victims[:5]}
    assert not gone & {bytes(img.numpy()) for img in state["images"]}
    # Offered again (their task's data is still around): refused; later samples refill.
    offer(buf, src, victims[:5], 3, task=1)
    assert len(buf) == 45
    offer(buf, src, torch.arange(200, 400), 3, task=1)
    assert len(buf) == 50 and not torch.isin(buf.ids[buf.slots()], victims).any()


def test_buffer_stores_raw_uint8_copies():
    src = images(20)
    original = src.clone()
    buf = ReservoirBuffer(20, seed=0)
    offer(buf, src, torch.arange(20), 1)
    src.fill_(0)  # the dataset's tensor changes (or goes away): the buffer keeps its own
    assert buf.images is not None and buf.images.dtype == torch.uint8
    x, y, task, ids = buf.get(buf.slots())
    assert torch.equal(x, original[ids]) and (y == 1).all() and (task == 0).all()


# -- A-GEM -------------------------------------------------------------------------------------
def test_agem_projection_formula():
    g_ref = torch.tensor([1.0, 0.0])
    g = torch.tensor([-1.0, 1.0])  # g . g_ref < 0: the component against g_ref is removed
    assert torch.equal(project(g, g_ref), torch.tensor([0.0, 1.0]))
    g = torch.tensor([1.0, 1.0])  # g . g_ref >= 0: unchanged
    assert torch.equal(project(g, g_ref), g)


def test_agem_update_never_opposes_the_reference_gradient():
    h = Harness("agem", size=64, sample_size=32)
    h.train_task(0)
    s = h.strategy
    ctx = h.ctx(1)
    h.module.start_task(ctx)
    # The memory batch the next call will draw, and a training batch that opposes it.
    state = s.generator.get_state()
    memory = s.memory_batch(32)
    s.generator.set_state(state)
    params = list(h.model.parameters())
    ref = torch.cat(
        [
            g.flatten()
            for g in torch.autograd.grad(
                F.cross_entropy(h.model(memory.x, memory.task), memory.y), params
            )
        ]
    )
    # A step gradient that opposes it (plus noise, so it is not just -g_ref).
    g = -ref + ref.abs().mean() * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    offset = 0
    for p in params:
        p.grad = g[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    assert g @ ref < 0  # the case A-GEM exists for
    s.after_backward(h.model)
    g_new = flat_grad(h.model)
    assert g_new @ ref >= -1e-6 * ref.norm() * g.norm()
    assert torch.allclose(g_new, project(g, ref))
    # A gradient that agrees with the reference (the memory batch itself) is left alone.
    s.generator.set_state(state)
    h.model.zero_grad()
    F.cross_entropy(h.model(memory.x, memory.task), memory.y).backward()
    g = flat_grad(h.model)
    s.after_backward(h.model)
    assert torch.equal(flat_grad(h.model), g)


# -- DER++ -------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["domain", "class"])
def test_derpp_replays_the_logits_stored_at_insertion(scenario):
    h = Harness("derpp", scenario, size=200, alpha=1.0, beta=0.0, batch_size=16)
    s = h.strategy
    ctx = h.ctx(0)
    h.module.start_task(ctx)
    batch = h.batch(0, 0, 32)
    logits = h.model(batch.x, batch.task)
    assert s.penalty(h.model, batch, logits) is None  # empty buffer: nothing to replay
    assert len(s.buffer) == 32
    stored, widths = s.buffer.stored_logits(s.buffer.slots())
    order = torch.argsort(s.buffer.ids[s.buffer.slots()])
    assert torch.equal(stored[order], logits.detach()) and (widths == 10).all()
    # Seen again (a later epoch): not offered twice.
    s.penalty(h.model, batch, h.model(batch.x, batch.task))
    assert s.buffer.seen == 32
    if scenario == "class":  # the head grows to 20 outputs; stored logits stay 10 wide
        h.module.end_task(ctx)
        ctx = h.ctx(1)
        h.module.start_task(ctx)
        assert h.model.head.num_active == 20
    # Model unchanged since insertion: the logit-matching term is exactly 0.
    other = h.batch(ctx.index, 32, 32)
    pen = s.penalty(h.model, other, h.model(other.x, other.task))
    assert pen is not None and float(pen.detach()) == 0.0
    # Train a step: the term becomes > 0, and the stored logits stay those of insertion time.
    h.opt.zero_grad()
    F.cross_entropy(h.model(other.x, other.task), other.y).backward()
    h.opt.step()
    other = h.batch(ctx.index, 64, 32)
    pen = s.penalty(h.model, other, h.model(other.x, other.task))
    assert pen is not None and float(pen.detach()) > 0
    slots = s.buffer.slots()
    first = slots[(s.buffer.tasks[slots] == 0) & torch.isin(s.buffer.ids[slots], batch.id)]
    first = first[torch.argsort(s.buffer.ids[first])]
    stored, widths = s.buffer.stored_logits(first)
    assert torch.equal(stored[:, :10], logits.detach()[torch.argsort(batch.id)])
    assert (stored[:, 10:] == 0).all() and (widths == 10).all()


# -- LwF ---------------------------------------------------------------------------------------
def test_distillation_is_zero_only_for_equal_outputs():
    a = torch.randn(8, 5)
    assert float(distillation(a, a.clone(), 2.0)) == 0.0
    assert float(distillation(a + torch.randn(8, 5), a, 2.0)) > 0


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_lwf_loss_is_zero_when_the_model_equals_its_old_copy(scenario):
    h = Harness("lwf", scenario)
    s = h.strategy
    ctx0 = h.ctx(0)
    h.module.start_task(ctx0)
    b0 = h.batch(0)
    assert s.penalty(h.model, b0, h.model(b0.x, b0.task)) is None  # no old model yet
    h.module.end_task(ctx0)
    h.module.start_task(h.ctx(1))  # heads: task 1's own head / 20 class outputs
    batch = h.batch(1)
    pen = s.penalty(h.model, batch, h.model(batch.x, batch.task))
    assert pen is not None and float(pen.detach()) == 0.0
    with torch.no_grad():
        for p in h.model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pen = s.penalty(h.model, batch, h.model(batch.x, batch.task))
    assert pen is not None and float(pen.detach()) > 0
    pen.backward()  # and it trains the current model, not the frozen copy
    assert not any(m._forward_hooks for m in s.old.modules())  # no hook came along
    assert all(p.grad is None for p in s.old.parameters())
    assert any(p.grad is not None for p in h.model.parameters())
    r = s.retention()
    assert r.raw_samples == {} and r.raw_bytes == 0 and r.state_bytes > 0


def lwf_at_the_second_task(scenario: str, alpha: float) -> tuple[Harness, Batch, torch.Tensor]:
    """LwF after the first task, at the start of the second, the backbone nudged away from
    its old copy: the harness, a batch of the second task and the model's logits on it."""
    h = Harness("lwf", scenario, alpha=alpha)
    h.train_task(0)
    h.module.start_task(h.ctx(1))
    with torch.no_grad():
        for p in h.model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = h.batch(1)
    return h, batch, h.model(batch.x, batch.task)


@pytest.mark.parametrize("scenario", ["domain", "class"])
def test_lwf_weighted_by_tasks_is_van_de_vens_loss_times_t(scenario):
    """``weighting=tasks``: ``CE + alpha (t - 1) KD`` at the t-th task (van de Ven and Tolias's
    ``(1/t) CE + (1 - 1/t) KD``, times t); ``fixed``: ``CE + alpha KD`` whatever t."""
    h, batch, logits = lwf_at_the_second_task(scenario, alpha=0.5)
    s = h.strategy
    fixed = s.penalty(h.model, batch, logits)
    s.old_tasks = 3  # as at the fourth task
    assert fixed is not None and torch.equal(s.penalty(h.model, batch, logits), fixed)
    s.params = dataclasses.replace(s.params, weighting="tasks")
    assert torch.allclose(s.penalty(h.model, batch, logits), 3 * fixed)


def test_lwf_class_outputs_seen_distils_every_output_with_zero_padded_targets():
    """``class_outputs=seen`` (van de Ven and Tolias's code): in the class scenario, the
    current model's softmax over every output seen so far, against the old model's padded
    with 0 on the new classes, so the new classes are pulled down even while the model still
    equals its old copy; ``old`` distils the old classes' outputs only; the domain scenario
    has no new outputs, and both forms agree there."""
    for scenario in ("class", "domain"):
        h = Harness("lwf", scenario, alpha=1.0)
        s = h.strategy
        h.train_task(0)
        h.module.start_task(h.ctx(1))
        batch = h.batch(1)
        logits = h.model(batch.x, batch.task).detach().requires_grad_(True)
        old = s.penalty(h.model, batch, logits)
        s.params = dataclasses.replace(s.params, class_outputs="seen")
        seen = s.penalty(h.model, batch, logits)
        assert old is not None and seen is not None
        if scenario == "domain":
            assert torch.equal(seen, old)
            continue
        assert float(old.detach()) == 0.0  # the model is still its old copy
        t, k = s.params.temperature, s.old_active
        assert logits.shape[1] > k  # the current task's classes are output too
        p_old = F.softmax(logits[:, :k].detach() / t, dim=1)
        log_q = F.log_softmax(logits.detach() / t, dim=1)[:, :k]
        by_hand = t * t * (p_old * (p_old.log() - log_q)).sum(1).mean()
        assert float(seen.detach()) > 0 and torch.allclose(seen, by_hand)
        (grad,) = torch.autograd.grad(seen, logits)
        assert (grad[:, k:] > 0).all()  # descending it lowers the new classes' outputs
    with pytest.raises(ConfigError, match=r"strategies\.lwf\.class_outputs: must be old or seen"):
        compose("synthetic_forgetting", ["strategy=[lwf]", "strategies.lwf.class_outputs=all"])


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_lwf_outputs_mean_averages_the_distillation_over_the_outputs(scenario):
    """``outputs=mean`` (van de Ven and Tolias's 2019 ``loss_fn_kd``: the mean over the batch
    and the outputs): the summed form divided by the number of outputs compared, each head's
    own, or every output seen so far with ``class_outputs=seen``."""
    h, batch, logits = lwf_at_the_second_task(scenario, alpha=1.0)
    s = h.strategy
    s.params = dataclasses.replace(s.params, class_outputs="seen")
    summed = s.penalty(h.model, batch, logits)
    s.params = dataclasses.replace(s.params, outputs="mean")
    mean = s.penalty(h.model, batch, logits)
    assert summed is not None and mean is not None and float(summed.detach()) > 0
    # the outputs compared: a task's head (as wide as the current one), the shared head, or
    # every class seen so far
    assert torch.allclose(mean, summed / logits.shape[1])
    with pytest.raises(ConfigError, match=r"strategies\.lwf\.outputs: must be sum or mean"):
        compose("synthetic_forgetting", ["strategy=[lwf]", "strategies.lwf.outputs=avg"])


# -- checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["replay", "agem", "derpp", "lwf"])
def test_restored_state_behaves_identically(name):
    h = Harness(name) if name == "lwf" else Harness(name, size=64)
    h.train_task(0)
    state = roundtrip(h.strategy.state_dict())  # what the task-0 checkpoint holds
    fresh = REGISTRY[name](h.strategy.params)
    fresh.load_state_dict(state)
    ctx = h.ctx(1)
    h.module.start_task(ctx)
    fresh.on_task_start(ctx)
    for start in (0, 32):  # two steps: generators and buffers advance alike
        batch = h.batch(1, start)
        ours, theirs = h.forward(h.strategy, batch, ctx), h.forward(fresh, batch, ctx)
        assert len(ours) == len(theirs)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["replay", "agem", "derpp", "lwf"])
def test_everything_stays_on_cuda(name):
    for scenario in ("task", "domain", "class"):
        h = Harness(name, scenario, "cuda", **({} if name == "lwf" else {"size": 64}))
        h.train_task(0)
        h.train_task(1)
        state = h.strategy.state_dict()
        if name == "lwf":
            assert next(h.strategy.old.parameters()).is_cuda
        else:
            buf = h.strategy.buffer
            assert buf.images.is_cuda and buf.valid.is_cuda and len(buf) == 64
        fresh = REGISTRY[name](h.strategy.params)
        fresh.load_state_dict(roundtrip(state))
        fresh.on_task_start(h.ctx(1))
        out = h.forward(fresh, h.batch(1, 64), h.ctx(1))
        assert all(t.is_cuda for t in out)


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("strategies.replay.size=0", "strategies.replay.size"),
        ("strategies.replay.batch_size=-1", "strategies.replay.batch_size"),
        ("strategies.agem.sample_size=0", "strategies.agem.sample_size"),
        ("strategies.derpp.alpha=-1", "strategies.derpp.alpha"),
        ("strategies.lwf.temperature=0", "strategies.lwf.temperature"),
        ("strategies.lwf.alpha=-0.5", "strategies.lwf.alpha"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, key):
    name = key.split(".")[1]
    with pytest.raises(ConfigError, match=key):
        compose("synthetic_forgetting", [f"strategy=[{name}]", override])


def test_retention_none_refuses_the_buffers_but_not_lwf():
    for name in ("replay", "agem", "derpp"):
        with pytest.raises(ConfigError, match="retention=none"):
            compose("synthetic_forgetting", [f"strategy=[{name}]", "retention=none"])
    compose("synthetic_forgetting", ["strategy=[lwf]", "retention=none"])


# -- end to end (domain scenario, two synthetic tasks) -------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs on the two synthetic tasks, made once each. Naive and replay train fully (their
    forgetting is compared); ``agem,derpp,lwf`` run composed in one run capped at a few batches
    per epoch (checked for running end to end, not for accuracy; every strategy alone in every
    scenario is in test_strategies_smoke.py)."""
    store = tmp_path_factory.mktemp("rehearsal") / "mlruns"
    done: dict[str, Any] = {}

    def get(names: str):
        if names not in done:
            full = names in ("naive", "replay")
            cfg = small_synthetic(
                store,
                f"strategy=[{names}]",
                "trainer.validate_every_epoch=false",
                f"trainer.max_batches={0 if full else 6}",
                f"tracking.log_checkpoints={names == 'replay'}",
            )
            done[names] = run(cfg)
        return store, done[names]

    return get


def test_replay_runs_through_the_runner(runs):
    _, r = runs("replay")
    assert r.train_samples[1] == 2 * r.train_samples[0]  # each task-1 batch doubled by replay
    kept = r.records[-1].retention
    assert kept["raw_samples"] == 500 and set(kept["raw_from"]) == {"synthetic0", "synthetic1"}
    assert kept["raw_bytes"] == 500 * (784 + 4 * 8)  # image + target, task, id, priority
    assert r.records[0].retention["raw_from"] == {"synthetic0": 500}


def test_agem_derpp_lwf_compose_through_the_runner(runs):
    _, r = runs("agem,derpp,lwf")
    R = r.matrix["test"]
    assert R.shape == (2, 2) and ((R >= 0) & (R <= 1)).all()
    kept = r.records[-1].retention
    assert kept["raw_samples"] == 1000  # two buffers of 500 (A-GEM's and DER++'s)
    assert kept["state_bytes"] > 100_000  # LwF's copy of the model (and the generators)
    first = r.records[0].retention
    assert first["raw_from"] == {"synthetic0": 1000}  # 2 epochs x 6 batches x 64 > 500 each


def test_replay_forgets_less_than_naive(runs):
    _, naive = runs("naive")
    _, replay = runs("replay")
    old_naive, old_replay = naive.matrix["test"][1, 0], replay.matrix["test"][1, 0]
    assert old_replay > old_naive + 0.3, (old_naive, old_replay)
    assert replay.matrix["test"][1, 1] > 0.8


def test_buffer_offers_each_sample_once_and_restores_from_the_checkpoint(runs):
    store, r = runs("replay")
    module, cfg, _ = checkpoint(store, r.run_id, 1)
    buf = module.strategies[0].buffer
    assert cfg.trainer.epochs == 2
    assert buf.seen == 2 * 900  # 900 training samples per task, offered once despite 2 epochs
    assert len(buf) == 500 and buf.images.dtype == torch.uint8
