"""Deep Generative Replay (``dgr``) and DGR+distill (``dgr_distill``): the VAE's loss, the
replayed batch (drawn by the previous generator, labelled by the previous classifier, scored on
each scenario's heads), the penalty's weighting, the generator's own step, the state.

Each test drives the hooks by hand on three tiny synthetic tasks (normalised with their own,
different statistics: the un-normalising and re-normalising are part of what is checked);
tests/test_strategies_smoke.py and tests/test_strategies_resnet.py run both strategies through
the runner in every scenario.
"""

import copy
import dataclasses
import io
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
from pipeline.strategies import REGISTRY, TaskContext, parse_params
from pipeline.strategies._generative import VAE, share_rows
from pipeline.strategies.dgr import DGRDistillParams, DGRParams, GenerativeReplay

TASKS = "data.tasks=[" + ",".join(f"{{dataset: synthetic, seed: {i}}}" for i in range(3)) + "]"
#: a small generator: the tests check what it computes, not how well it generates
SMALL = {"latent": 8, "hidden": 32}


class Rig:
    """Three synthetic tasks, a model and one generative replay strategy, driven hook by hook
    as the module drives them (the strategy's generator steps after the classifier's)."""

    def __init__(self, store: Path, name: str, scenario: str, *overrides: str, **params: Any):
        cfg = small_synthetic(
            store, f"scenario={scenario}", TASKS, "data.synthetic.n_train=120", *overrides
        )
        self.dm = ContinualDataModule(cfg.data, scenario=scenario)
        self.dm.setup()
        torch.manual_seed(0)
        self.model = build_model(cfg.model, self.dm.input_shape, self.dm.classes_per_task, scenario)
        self.strategy: GenerativeReplay[Any] = REGISTRY[name](
            parse_params(name, {**SMALL, **params})
        )
        self.module = ContinualModule(self.model, [self.strategy], cfg.optim)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-3)

    def ctx(self, i: int) -> TaskContext:
        return TaskContext(i, self.dm.tasks[i], self.dm, self.model, torch.device("cpu"))

    def batch(self, i: int, start: int = 0, n: int = 16) -> Batch:
        task = self.dm.tasks[i]
        return TaskDataset([(task.train, task)], self.dm.tasks)[torch.arange(start, start + n)]

    def backward(self, batch: Batch) -> torch.Tensor | None:
        """A training step up to its backward pass; the penalty (detached)."""
        self.model.zero_grad()
        logits = self.model(batch.x, batch.task)
        pen = self.strategy.penalty(self.model, batch, logits)
        (F.cross_entropy(logits, batch.y) + (0 if pen is None else pen)).backward()
        return None if pen is None else pen.detach()

    def step(self, batch: Batch) -> None:
        self.backward(batch)
        self.opt.step()
        self.strategy.after_optimizer_step(self.model)

    def train_task(self, i: int, steps: int = 2, end: bool = True) -> None:
        self.module.start_task(self.ctx(i))
        for k in range(steps):
            self.step(self.batch(i, 16 * k))
        if end:
            self.module.end_task(self.ctx(i))


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save and a weights-only load, as a checkpoint goes."""
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


def rng_copy(strategy: GenerativeReplay[Any]) -> torch.Generator:
    return torch.Generator().set_state(strategy.rng.get_state())


def expected_replay_loss(
    rig: Rig, z: torch.Tensor, scenario: str, soft: bool, per_output: bool = False
) -> torch.Tensor:
    """The replay loss written out: the previous generator's images for ``z``, normalised as
    the classifier saw each previous task (task scenario) or with the moments of the equal
    mixture of the previous tasks (the others), the current model against the previous one.
    ``per_output``: the distillation averaged over the outputs too (their 2019 ``loss_fn_kd``)."""
    s = rig.strategy
    assert s.old is not None and s.old_generator is not None
    x = torch.sigmoid(s.old_generator.decode(z))
    tasks = rig.dm.tasks[: s.old_tasks]
    means = torch.tensor([t.mean for t in tasks]).view(len(tasks), 1, -1, 1, 1)
    stds = torch.tensor([t.std for t in tasks]).view(len(tasks), 1, -1, 1, 1)

    def term(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        if not soft:  # hard: the previous model's most likely class among its outputs
            return F.cross_entropy(new, old.argmax(1))
        t = 2.0  # van de Ven's loss_fn_kd: targets padded with 0 for the outputs old lacks
        target = F.pad(F.softmax(old / t, dim=1), (0, new.shape[1] - old.shape[1]))
        kd = t * t * F.kl_div(F.log_softmax(new / t, dim=1), target, reduction="batchmean")
        return kd / new.shape[1] if per_output else kd

    with torch.no_grad():
        if scenario == "task":
            terms = []
            for k in range(len(tasks)):
                xk = (x - means[k]) / stds[k]
                new = rig.model.head.heads[k](rig.model.backbone(xk))
                terms.append(term(new, s.old.head.heads[k](s.old.backbone(xk))))
            return torch.stack(terms).mean()
        mean = means.mean(0)
        std = ((stds.square() + means.square()).mean(0) - mean.square()).sqrt()
        xs = (x - mean) / std
        return term(rig.model(xs), s.old(xs))


# -- the generator ------------------------------------------------------------------------------
def test_vae_loss_is_bce_plus_kl_per_pixel_and_a_few_steps_lower_it():
    torch.manual_seed(0)
    vae = VAE((1, 6, 5), hidden=16, layers=2, latent=4)
    x, noise = torch.rand(8, 1, 6, 5), torch.randn(8, 4)
    mean, logvar = vae.encode(x)
    p = torch.sigmoid(vae.decode(mean + noise * (0.5 * logvar).exp())).flatten(1)
    target = x.flatten(1)
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).sum(1)
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(1)
    assert torch.allclose(vae(x, noise), ((bce + kl) / 30).mean(), rtol=1e-5)
    # van de Ven's architecture: two hidden ReLU layers each way, the latent's mean and log-var
    widths = [m.out_features for m in vae.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [16, 16, 2 * 4, 16, 16, 30]
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    first = vae(x, noise).item()
    for _ in range(20):
        opt.zero_grad()
        vae(x, noise).backward()
        opt.step()
    assert vae(x, noise).item() < 0.9 * first


@pytest.mark.parametrize("normalise", [True, False])
def test_the_generator_sees_the_pixels_the_classifier_sees(tmp_path, normalise):
    rig = Rig(tmp_path / "mlruns", "dgr", "domain", f"data.normalise={normalise}")
    rig.train_task(0)
    rig.module.start_task(rig.ctx(1))
    batch = rig.batch(1)
    rig.backward(batch)
    step = rig.strategy._step
    assert step is not None and step.replay is not None
    raw = rig.dm.tasks[1].train.images[:16].float() / 255  # the task's raw pixels
    assert torch.allclose(step.current, raw, atol=1e-5)
    assert step.replay.shape == raw.shape and 0 < step.replay.min() <= step.replay.max() < 1


# -- the replayed batch --------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
@pytest.mark.parametrize("name", ["dgr", "dgr_distill"])
def test_replay_is_the_previous_generators_labelled_by_the_previous_classifier(
    tmp_path, name, scenario
):
    rig = Rig(tmp_path / "mlruns", name, scenario)
    rig.train_task(0)
    rig.train_task(1)
    rig.train_task(2, steps=5, end=False)  # the live model and generator have moved on since
    s = rig.strategy
    assert s.old_tasks == 2
    batch = rig.batch(2, 80)
    rng = rng_copy(s)
    penalty = rig.backward(batch)
    z = torch.randn(16, SMALL["latent"], generator=rng)
    soft = name == "dgr_distill"
    replay = expected_replay_loss(rig, z, scenario, soft)
    # the t-th task (t = 3) weighs the replay (t - 1) times the current batch
    # atol: a distillation near 0 (the task and domain heads barely moved) is a difference of
    # nearly equal float32 log-probabilities, exact only to about eps * |log p|; the two forms
    # (ours, F.kl_div) round differently by CPU: 2e-7 apart on an AMD EPYC, 0 on an Intel Xeon
    assert penalty is not None and torch.allclose(penalty, 2 * replay, rtol=1e-4, atol=1e-6)
    # the live generator's images, or other latents, would give another loss
    old_generator, s.old_generator = s.old_generator, s.generator
    assert not torch.allclose(replay, expected_replay_loss(rig, z, scenario, soft))
    s.old_generator = old_generator
    assert not torch.allclose(replay, expected_replay_loss(rig, torch.randn(16, 8), scenario, soft))
    if scenario == "class":  # scored on all 30 classes now active, against the old 20
        assert rig.model.head.num_active == 30 and s.old is not None
        assert s.old.head.num_active == 20


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_outputs_mean_averages_the_distillation_over_the_outputs(tmp_path, scenario):
    """``outputs=mean``: van de Ven and Tolias's 2019 loss_fn_kd, the mean over the batch and
    the outputs compared (here a head's 10, or the 30 classes seen), 1/10 or 1/30 of the sum."""
    rig = Rig(tmp_path / "mlruns", "dgr_distill", scenario, outputs="mean")
    rig.train_task(0)
    rig.train_task(1)
    rig.train_task(2, steps=5, end=False)  # the live model has moved from the previous one
    rng = rng_copy(rig.strategy)
    penalty = rig.backward(rig.batch(2, 80))
    z = torch.randn(16, SMALL["latent"], generator=rng)
    mean = expected_replay_loss(rig, z, scenario, soft=True, per_output=True)
    assert penalty is not None and torch.allclose(penalty, 2 * mean, rtol=1e-4, atol=1e-7)
    summed = expected_replay_loss(rig, z, scenario, soft=True)
    outputs = 30 if scenario == "class" else 10
    assert torch.allclose(summed, outputs * mean, rtol=1e-5)
    assert not torch.allclose(penalty, 2 * summed, rtol=1e-3)


def test_the_replay_is_labelled_by_the_old_classifier_not_the_live_one(tmp_path):
    rig = Rig(tmp_path / "mlruns", "dgr", "domain")
    rig.train_task(0)
    rig.module.start_task(rig.ctx(1))
    s = rig.strategy
    assert s.old is not None
    # the previous copy's outputs rolled by one class: its labels are never the live model's
    head = s.old.head.linear
    head.weight.copy_(head.weight.roll(1, 0))
    head.bias.copy_(head.bias.roll(1, 0))
    rng = rng_copy(s)
    penalty = rig.backward(rig.batch(1))
    z = torch.randn(16, SMALL["latent"], generator=rng)
    assert penalty is not None
    assert torch.allclose(penalty, expected_replay_loss(rig, z, "domain", soft=False), rtol=1e-4)
    s.old = copy.deepcopy(rig.model).eval()  # labelled by the live model instead
    assert not torch.allclose(penalty, expected_replay_loss(rig, z, "domain", soft=False))


def test_fixed_weighting_uses_the_constant_share(tmp_path):
    rig = Rig(tmp_path / "mlruns", "dgr", "domain", weighting="fixed", ratio=0.25)
    rig.train_task(0)
    rig.train_task(1)
    rig.module.start_task(rig.ctx(2))
    s = rig.strategy
    rng = rng_copy(s)
    penalty = rig.backward(rig.batch(2))
    replay = expected_replay_loss(rig, torch.randn(16, 8, generator=rng), "domain", soft=False)
    assert penalty is not None and torch.allclose(penalty, 3 * replay, rtol=1e-4)  # 0.75/0.25
    assert s.current_share == 0.25


def test_a_replay_size_draws_that_many_samples_beside_each_batch(tmp_path):
    """``replay_size`` (Avalanche's count beside each batch): that many generated samples,
    labelled and weighted as the batch-sized replay is; over processes, the replayed rows are
    split as the batch's rows are, covering every row once."""
    rig = Rig(tmp_path / "mlruns", "dgr", "domain", weighting="fixed", ratio=0.25, replay_size=5)
    rig.train_task(0)
    rig.module.start_task(rig.ctx(1))
    s = rig.strategy
    rng = rng_copy(s)
    penalty = rig.backward(rig.batch(1))
    z = torch.randn(5, SMALL["latent"], generator=rng)
    assert s._step is not None and s._step.replay is not None
    assert s._step.replay.shape[0] == 5 and s._step.replay_rows == (5, 0, 5)  # the batch: 16
    replay = expected_replay_loss(rig, z, "domain", soft=False)
    assert penalty is not None and torch.allclose(penalty, 3 * replay, rtol=1e-4)
    for sizes, size in [([16], 5), ([6, 5, 5], 100), ([3, 3], 7), ([8, 8], 0)]:
        slices = [share_rows((sum(sizes), sum(sizes[:r]), n), size) for r, n in enumerate(sizes)]
        assert all(total == size for total, _, _ in slices)
        covered = [i for _, first, n in slices for i in range(first, first + n)]
        assert covered == list(range(size))
    with pytest.raises(ConfigError, match=r"strategies\.dgr\.replay_size: must be >= 0"):
        compose("synthetic_forgetting", ["strategy=[dgr]", "strategies.dgr.replay_size=-1"])


# -- the generator's own step --------------------------------------------------------------------
def test_the_generator_steps_on_its_own_loss_and_never_touches_the_classifier(tmp_path):
    rig = Rig(tmp_path / "mlruns", "dgr", "class")
    rig.train_task(0)
    rig.train_task(1, end=False)
    s = rig.strategy
    assert s.generator is not None and s.optimizer is not None
    twin = copy.deepcopy(s.generator)  # the step by hand, from the same weights and moments
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-3)
    twin_opt.load_state_dict(copy.deepcopy(s.optimizer.state_dict()))
    rig.backward(rig.batch(1, 32))
    assert all(p.grad is None for p in s.generator.parameters())  # no classifier loss reaches it
    grads = [p.grad.clone() for p in rig.model.parameters() if p.grad is not None]
    weights = [p.detach().clone() for p in rig.model.parameters()]
    step = s._step
    assert step is not None and step.replay is not None
    rng = rng_copy(s)
    s.after_optimizer_step(rig.model)
    # at the second task: (1/2) loss on the current batch + (1/2) on the replayed one
    current = twin(step.current, torch.randn(16, 8, generator=rng))
    replayed = twin(step.replay, torch.randn(16, 8, generator=rng))
    twin_opt.zero_grad()
    (0.5 * current + 0.5 * replayed).backward()
    twin_opt.step()
    for a, b in zip(s.generator.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    after = [p.grad for p in rig.model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(grads, after, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(weights, rig.model.parameters(), strict=True))


# -- state -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mid_task", [False, True])
def test_a_restored_strategy_replays_and_trains_identically(tmp_path, mid_task):
    rig = Rig(tmp_path / "mlruns", "dgr_distill", "task")
    rig.train_task(0)
    rig.train_task(1, end=not mid_task)  # mid-task the old generator is not the live one
    s = rig.strategy
    state = roundtrip(s.state_dict())
    assert (state["old_generator"] is not None) == mid_task
    fresh = REGISTRY["dgr_distill"](s.params)
    fresh.load_state_dict(state)
    assert same(fresh.state_dict(), state)  # as it was loaded, until a task starts
    i = 1 if mid_task else 2
    for strategy in (s, fresh):
        strategy.on_task_start(rig.ctx(i))
    batch = rig.batch(i, 48)
    logits = rig.model(batch.x, batch.task)
    penalties = [st.penalty(rig.model, batch, logits) for st in (s, fresh)]
    assert penalties[0] is not None and penalties[1] is not None
    assert torch.equal(penalties[0], penalties[1])
    assert torch.equal(s._step.replay, fresh._step.replay)  # type: ignore[union-attr]
    for st in (s, fresh):
        st.after_optimizer_step(rig.model)
    assert same(s.state_dict(), fresh.state_dict())


def test_retention_counts_the_generator_and_the_old_model_and_no_sample(tmp_path):
    rig = Rig(tmp_path / "mlruns", "dgr", "domain")
    rig.train_task(0)
    s = rig.strategy
    kept = s.retention()
    assert not s.keeps_raw_data and kept.raw_samples == {} and kept.raw_bytes == 0
    weights = sum(p.numel() * 4 for p in s.generator.parameters())  # type: ignore[union-attr]
    model = sum(t.numel() * t.element_size() for t in rig.model.state_dict().values())
    # the generator, its two Adam moments (and step counts), the previous model, the rng
    assert 3 * weights + model < kept.state_bytes < 3 * weights + model + 10_000


# -- configuration ---------------------------------------------------------------------------------
def test_the_defaults_are_van_de_vens_and_distill_differs_only_by_its_targets():
    hard, soft = DGRParams(), DGRDistillParams()
    assert (hard.latent, hard.hidden, hard.layers, hard.lr) == (100, 400, 2, 1e-3)
    assert (hard.weighting, hard.targets, hard.temperature) == ("tasks", "hard", 2.0)
    assert dataclasses.asdict(soft) == dataclasses.asdict(DGRParams(targets="soft"))
    assert (
        REGISTRY["dgr"].Params is DGRParams and REGISTRY["dgr_distill"].Params is DGRDistillParams
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("targets", "bogus"),
        ("weighting", "bogus"),
        ("ratio", 0.0),
        ("temperature", 0.0),
        ("outputs", "bogus"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(key, value):
    with pytest.raises(ConfigError, match=rf"strategies\.dgr_distill\.{key}: must"):
        compose(
            "synthetic_forgetting",
            ["strategy=[dgr_distill]", f"strategies.dgr_distill.{key}={value}"],
        )
