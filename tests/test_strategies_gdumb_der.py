"""DER and GDumb: each test checks one defining property on tiny synthetic data.

DER: its penalty is ``alpha * MSE(f(x'), z')`` on a replayed draw, and DER++'s is DER's plus its
label term (the two share one implementation, ``pipeline/strategies/_dark.py``). GDumb: the
greedy sampler keeps the memory class-balanced as the paper defines it, and the network after a
task is trained from scratch on the memory alone, whatever the stream did to it.
"""

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers.runs import same, small_synthetic

from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch, TaskDataset
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.models import build_model
from pipeline.module import ContinualModule
from pipeline.strategies import REGISTRY, Strategy, StrategyRefused, TaskContext, parse_params
from pipeline.strategies.gdumb import GreedyMemory, gdumb_lr


class Rig:
    """A real data module and model around one strategy, driven hook by hook."""

    def __init__(self, name: str, **params: Any) -> None:
        cfg = small_synthetic(Path("/unused"))
        self.dm = ContinualDataModule(cfg.data)
        self.dm.setup()
        torch.manual_seed(0)  # the model's initialisation and the strategy's seed
        model = build_model(cfg.model, self.dm.input_shape, self.dm.classes_per_task)
        self.strategy: Any = REGISTRY[name](parse_params(name, params))
        self.module = ContinualModule(model, [self.strategy], cfg.optim)
        self.model = self.module.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05)

    def ctx(self, i: int) -> TaskContext:
        return TaskContext(i, self.dm.tasks[i], self.dm, self.model, torch.device("cpu"))

    def batch(self, i: int, start: int, n: int = 32) -> Batch:
        task = self.dm.tasks[i]
        return TaskDataset([(task.train, task)], self.dm.tasks)[torch.arange(start, start + n)]

    def step(self, s: Strategy[Any], batch: Batch, ctx: TaskContext) -> torch.Tensor | None:
        """One host training step through the hooks; the strategy's penalty."""
        b = s.transform_batch(batch, ctx)
        logits = self.model(b.x, b.task)
        pen = s.penalty(self.model, b, logits)
        loss = F.cross_entropy(logits, b.y) + (0 if pen is None else pen)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return pen


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save and a weights-only load, as a checkpoint goes."""
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


# -- DER ---------------------------------------------------------------------------------------
def test_der_penalty_is_alpha_times_the_mse_to_the_logits_stored_with_a_replayed_draw():
    r = Rig("der", size=64, alpha=0.7, batch_size=16)
    s, ctx = r.strategy, r.ctx(0)
    r.module.start_task(ctx)
    for k in range(3):  # 96 samples offered online, with their logits; the model moves on
        r.step(s, r.batch(0, 32 * k), ctx)
    assert len(s.buffer) == 64 and s.buffer.logits.shape == (64, 10)
    batch = r.batch(1, 0)  # another task's: nothing enters the buffer while we look
    logits = r.model(batch.x, batch.task)
    state = s.generator.get_state()
    pen = s.penalty(r.model, batch, logits)
    s.generator.set_state(state)  # the same draw again, by hand: Mammoth's models/der.py
    slots = s.draw(16)
    memory = r.dm.batch_from(*s.buffer.get(slots))
    expected = 0.7 * F.mse_loss(r.model(memory.x, memory.task), s.buffer.logits[slots])
    assert pen is not None and float(pen.detach()) > 0
    assert torch.allclose(pen, expected, rtol=1e-6, atol=0)
    pen.backward()  # it trains the current network
    assert all(p.grad is not None for p in r.model.parameters())


def test_derpp_penalty_is_ders_plus_its_label_term():
    r = Rig("derpp", size=64, alpha=0.7, beta=0.4, batch_size=16)
    derpp, ctx = r.strategy, r.ctx(0)
    r.module.start_task(ctx)
    for k in range(3):
        r.step(derpp, r.batch(0, 32 * k), ctx)
    der = REGISTRY["der"](parse_params("der", {"size": 64, "alpha": 0.7, "batch_size": 16}))
    der.load_state_dict(roundtrip(derpp.state_dict()))  # the same buffer and generator
    der.on_task_start(ctx)
    batch = r.batch(1, 0)  # another task's: nothing enters the buffers while we look
    logits = r.model(batch.x, batch.task)
    with torch.no_grad():
        plus = derpp.penalty(r.model, batch, logits)
        base = der.penalty(r.model, batch, logits)  # DER++'s first draw: the logit term
        second = der.draw(16)  # the generator goes on to DER++'s second draw
        memory = r.dm.batch_from(*der.buffer.get(second))
        label = F.cross_entropy(r.model(memory.x, memory.task), memory.y)
    assert plus is not None and base is not None and float(base) > 0 and float(label) > 0
    assert torch.allclose(plus, base + 0.4 * label, rtol=1e-6, atol=0)


def test_der_refuses_a_negative_weight_naming_the_key():
    with pytest.raises(ConfigError, match=r"strategies\.der\.alpha"):
        compose("synthetic_forgetting", ["strategy=[der]", "strategies.der.alpha=-1"])


# -- GDumb: the sampler ------------------------------------------------------------------------
def offer(memory: GreedyMemory, target: int, ids: list[int]) -> int:
    """Offer samples of class ``target`` (task 0; image of id i: i in every pixel), in order."""
    ids_t = torch.tensor(ids)
    source = torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1).expand(64, 1, 2, 2)
    keys = torch.stack([ids_t, torch.full_like(ids_t, target), torch.zeros_like(ids_t), ids_t], 1)
    return memory.offer(source, keys)


def held(memory: GreedyMemory) -> dict[int, set[int]]:
    """Stored ids by class; each stored image is its id's."""
    slots = memory.slots()
    x, y, _, ids = memory.get(slots)
    assert torch.equal(x[:, 0, 0, 0].long(), ids)
    return {c: set(ids[y == c].tolist()) for c in y.unique().tolist()}


def test_greedy_sampler_keeps_the_memory_class_balanced_as_the_paper_defines():
    m = GreedyMemory(6, seed=0)
    offer(m, 0, list(range(8)))  # one class, share 6/1: the first six enter
    assert held(m) == {0: set(range(6))}
    # a second class, share 6/2 = 3: its first three enter, each evicting a sample of class 0
    # (the largest); its fourth finds its class at its share
    offer(m, 1, [10, 11, 12, 13])
    h = held(m)
    assert h[1] == {10, 11, 12} and len(h[0]) == 3 and h[0] < set(range(6))
    # a third class, share 2: 20 evicts from class 0 (tied with class 1 at 3: the first class),
    # 21 from class 1 (now the largest), 22 is refused
    offer(m, 2, [20, 21, 22])
    h = held(m)
    assert h[2] == {20, 21} and len(h[0]) == len(h[1]) == 2
    assert h[0] < set(range(6)) and h[1] < {10, 11, 12}
    assert m.classes.numel() == 3 and m.slots().numel() == 6
    # the same stream offered one sample at a time: the same memory (the order is what counts)
    one = GreedyMemory(6, seed=0)
    for target, ids in ((0, range(8)), (1, [10, 11, 12, 13]), (2, [20, 21, 22])):
        for i in ids:
            offer(one, target, [i])
    assert same(one.state_dict(), m.state_dict())


def test_greedy_sampler_never_takes_an_erased_sample_back():
    m = GreedyMemory(4, seed=0)
    offer(m, 0, [1, 2])
    assert m.erase(0, torch.tensor([2, 9])) == 1 and held(m) == {0: {1}}
    assert m.images is not None and int(m.images.sum()) == 4  # image 1 (2 x 2 ones) only
    assert offer(m, 0, [2, 3]) == 1 and held(m) == {0: {1, 3}}


# -- GDumb: the learner --------------------------------------------------------------------------
def test_gdumb_learning_rate_is_the_authors_warm_up_and_warm_restarts():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.05)
    cosine = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=1, T_mult=2, eta_min=5e-4
    )
    for epoch in range(130):  # as src/main.py of drimpossible/GDumb steps it
        if epoch == 0:
            opt.param_groups[0]["lr"] = 0.005
        elif epoch == 1:
            opt.param_groups[0]["lr"] = 0.05
        else:
            cosine.step()
        assert math.isclose(gdumb_lr(epoch, 0.05, 5e-4), opt.param_groups[0]["lr"], rel_tol=1e-12)


def gdumb_task(r: Rig, batches: int, host_lr: float) -> None:
    """Task 0 of GDumb: ``batches`` stream batches through the host's steps, then its end."""
    ctx = r.ctx(0)
    r.module.start_task(ctx)
    r.opt.param_groups[0]["lr"] = host_lr
    for k in range(batches):
        r.step(r.strategy, r.batch(0, 32 * k), ctx)
    r.module.end_task(ctx)


def weights(r: Rig) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in r.model.state_dict().items()}


def test_gdumb_model_after_a_task_depends_only_on_its_memory():
    params = {"size": 20, "epochs": 8, "batch_size": 8}
    a, b = Rig("gdumb", **params), Rig("gdumb", **params)
    with torch.no_grad():  # b starts from other weights, and its host trains differently
        for p in b.model.parameters():
            p.add_(torch.randn_like(p))
    gdumb_task(a, 4, host_lr=0.05)
    first = held_ids(a)
    assert len(first) == 20  # ten classes, two each: every class is at its share
    gdumb_task(b, 6, host_lr=0.5)  # two more batches: all refused by the sampler
    assert held_ids(b) == first
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # ... and on what the memory holds: one sample fewer, another network
    c = Rig("gdumb", **params)
    ctx = c.ctx(0)
    c.module.start_task(ctx)
    for k in range(4):
        c.step(c.strategy, c.batch(0, 32 * k), ctx)
    c.strategy.erase(0, torch.tensor(sorted(first)[:1]))
    c.module.end_task(ctx)
    assert len(held_ids(c)) == 19
    assert not torch.equal(weights(c)["head.linear.weight"], wa["head.linear.weight"])


def held_ids(r: Rig) -> set[int]:
    return set(r.strategy.stored_ids(0).tolist())


def test_gdumb_fits_its_memory_from_a_fresh_initialisation():
    r = Rig("gdumb", size=20, epochs=16, batch_size=8)
    gdumb_task(r, 4, host_lr=0.05)
    s = r.strategy
    memory = r.dm.batch_from(*s.memory.get(s.memory.slots()))
    with torch.no_grad():
        acc = (r.model(memory.x, memory.task).argmax(1) == memory.y).float().mean()
    assert float(acc) == 1.0  # 20 samples, 16 passes: learned by heart
    r.module.start_task(r.ctx(1))  # the retention ledger counts the memory's samples
    kept = s.retention()
    assert kept.raw_samples == {"synthetic0": 20} and kept.raw_bytes == 20 * (784 + 24)


def test_gdumb_state_round_trips_and_the_run_goes_on_identically():
    params = {"size": 24, "epochs": 2, "batch_size": 8}
    r = Rig("gdumb", **params)
    gdumb_task(r, 2, host_lr=0.05)
    fresh = REGISTRY["gdumb"](r.strategy.params)
    fresh.load_state_dict(roundtrip(r.strategy.state_dict()))
    assert same(fresh.state_dict(), r.strategy.state_dict())
    start = weights(r)
    ctx = r.ctx(1)
    outcomes = []
    for s in (r.strategy, fresh):
        r.model.load_state_dict(start)
        r.module.strategies = [s]
        r.module.start_task(ctx)
        for k in range(3):
            r.step(s, r.batch(1, 32 * k), ctx)
        r.module.end_task(ctx)
        outcomes.append((s.state_dict(), weights(r)))
    assert same(outcomes[0], outcomes[1])
    assert set(fresh.stored_ids(1).tolist()) and set(fresh.stored_ids(0).tolist())


def test_gdumb_refuses_to_be_composed_and_names_a_bad_key():
    with pytest.raises(StrategyRefused, match="run it alone"):
        compose("synthetic_forgetting", ["strategy=[gdumb,ewc]"])
    with pytest.raises(ConfigError, match=r"strategies\.gdumb\.min_lr"):
        compose("synthetic_forgetting", ["strategy=[gdumb]", "strategies.gdumb.min_lr=1"])
