"""iCaRL and the two hooks it needs: each test checks one defining piece (herding, the nearest
mean of exemplars, the binary cross-entropy with distillation, the union's replay, the memory's
budget and erasure), the module's use of ``task_loss`` and ``predict``, and the state's round
trip, on tiny synthetic tasks."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers.runs import same, small_synthetic, train_tasks
from torch import Tensor, nn

from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.tasks import Batch
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.models import Classifier, IncrementalHead
from pipeline.module import ContinualModule
from pipeline.runner import Loop, prepare, restore_rng, rng_state, train_task
from pipeline.strategies import REGISTRY, Strategy, StrategyRefused, TaskContext, parse_params
from pipeline.strategies.base import NoParams
from pipeline.strategies.icarl import ICaRL, bce_distillation, herding

CLASS = (
    "scenario=class",
    "strategy=[icarl]",
    "trainer.epochs=1",
    "trainer.max_batches=3",
    "data.synthetic.n_train=200",
    "data.synthetic.n_test=100",
    "data.batch_size=32",
)


def icarl(**params: Any) -> ICaRL:
    return ICaRL(parse_params("icarl", params))  # type: ignore[arg-type]


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save and a weights-only load, as a checkpoint goes."""
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


def flat_model(logit_bias: tuple[float, ...]) -> Classifier:
    """Features = the flattened input; a head whose bias alone decides the logits' argmax."""
    head = IncrementalHead(2, [len(logit_bias)])
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.tensor(logit_bias))
    return Classifier(nn.Flatten(), 2, head)


def fill(s: ICaRL, pixels: list[tuple[int, int]], labels: list[int]) -> None:
    """Put 1x1x2 uint8 exemplars in the memory (one task, unnormalised: mean 0, std 1)."""
    n = len(labels)
    s.images = torch.tensor(pixels, dtype=torch.uint8).view(n, 1, 1, 2)
    s.labels, s.tasks = torch.tensor(labels), torch.zeros(n, dtype=torch.long)
    s.ids, s.order = torch.arange(n), torch.zeros(n, dtype=torch.long)
    s.mean, s.std = torch.zeros(1, 1), torch.ones(1, 1)
    s.changes += 1


def nearest_mean(features: Tensor, exemplars: Tensor, labels: Tensor) -> Tensor:
    """The definition: each class's mean of its exemplars' normalised features, renormalised;
    the class of the nearest mean (Euclidean) of each normalised feature."""
    f, e = F.normalize(features, dim=1), F.normalize(exemplars, dim=1)
    means = torch.stack([F.normalize(e[labels == c].mean(0), dim=0) for c in labels.unique()])
    return torch.cdist(f, means).argmin(1)


# -- herding ----------------------------------------------------------------------------------
def greedy(features: Tensor, m: int) -> list[int]:
    """Herding as Rebuffi et al. define it, by brute force: pick the unpicked sample whose
    addition brings the mean of the picked closest to the class mean (all normalised)."""
    f = F.normalize(features.double(), dim=1)
    mu = F.normalize(f.mean(0), dim=0)
    picked: list[int] = []
    for k in range(m):
        best = min(
            (i for i in range(len(f)) if i not in picked),
            key=lambda i: float(torch.linalg.norm(mu - (f[picked].sum(0) + f[i]) / (k + 1))),
        )
        picked.append(best)
    return picked


def test_herding_picks_what_the_greedy_rule_defines() -> None:
    # three samples near 10 degrees and one at -30: their mean points near 0 degrees
    angles = torch.tensor([10.0, -30.0, 9.0, 11.0]) * math.pi / 180
    unit = torch.stack([angles.cos(), angles.sin()], 1)
    features = unit * torch.tensor([1.0, 3.0, 0.5, 2.0]).unsqueeze(1)  # the norms do not count
    picks = herding(features, 4).tolist()
    assert picks == greedy(features, 4) == [2, 0, 1, 3]
    # not the samples nearest the mean: after 9 and 10 degrees the picked mean needs -30 to
    # come back towards 0, although 11 lies nearer the mean
    by_distance = torch.linalg.norm(unit - F.normalize(unit.mean(0), dim=0), dim=1).argsort()
    assert by_distance.tolist() == [2, 0, 3, 1]
    assert herding(features, 10).tolist() == picks  # all of a small class, no repeat


def test_herding_is_the_greedy_rule_on_random_features() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(40, 8, generator=g) + 0.5
    assert herding(features, 12).tolist() == greedy(features, 12)


# -- the nearest mean of exemplars --------------------------------------------------------------
def test_predictions_are_the_nearest_class_mean_not_the_logits_argmax() -> None:
    s, model = icarl(), flat_model((0.0, 5.0))  # the logits always say class 1
    fill(s, [(200, 20), (180, 60), (250, 10), (20, 200), (60, 220)], [0, 0, 0, 1, 1])
    x = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.6, 0.5], [0.55, 0.45]]).view(4, 1, 1, 2)
    logits = model(x)
    scores = s.predict(model, x, torch.zeros(4, dtype=torch.long), logits)
    assert scores is not None and scores.shape == logits.shape
    exemplars = s.images.float().flatten(1) / 255  # type: ignore[union-attr]
    expected = nearest_mean(x.flatten(1), exemplars, s.labels)
    assert torch.equal(scores.argmax(1), expected)
    assert expected.tolist() == [0, 1, 0, 0] and logits.argmax(1).tolist() == [1, 1, 1, 1]
    # the scores are minus the squared distances to the means
    f = F.normalize(x.flatten(1), dim=1)
    e = F.normalize(exemplars, dim=1)
    means = torch.stack([F.normalize(e[s.labels == c].mean(0), dim=0) for c in (0, 1)])
    assert torch.allclose(scores, -(torch.cdist(f, means) ** 2), atol=1e-6)


def test_during_a_task_and_without_exemplars_the_logits_predict() -> None:
    s, model = icarl(), flat_model((0.0, 5.0))
    x = torch.rand(3, 1, 1, 2)
    assert s.predict(model, x, torch.zeros(3, dtype=torch.long), model(x)) is None  # empty
    fill(s, [(200, 20), (20, 200)], [0, 1])
    s.ctx = object()  # type: ignore[assignment]  # between on_task_start and on_task_end
    assert s.predict(model, x, torch.zeros(3, dtype=torch.long), model(x)) is None


def test_the_means_follow_the_weights_and_the_memory() -> None:
    """Cached, but recomputed once a weight changed in place (a load, a fine-tuning) or the
    memory changed (an erasure)."""
    s, model = (
        icarl(),
        Classifier(
            nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False)), 2, IncrementalHead(2, [2])
        ),
    )
    fill(s, [(200, 20), (180, 60), (20, 200), (60, 220)], [0, 0, 1, 1])
    first, _ = s._class_means(model, share=False)
    assert s._class_means(model, share=False)[0] is first  # cached
    with torch.no_grad():
        model.backbone[1].weight.mul_(-1)
    moved, _ = s._class_means(model, share=False)
    assert torch.allclose(moved, -first, atol=1e-6)
    assert s.erase(0, torch.tensor([0])) == 1
    assert 0 not in s.stored_ids(0).tolist()
    after, present = s._class_means(model, share=False)
    f = F.normalize(model.backbone(s.images.float() / 255), dim=1)  # type: ignore[union-attr]
    assert torch.allclose(after[0], F.normalize(f[s.labels == 0].mean(0), dim=0), atol=1e-6)
    assert present.all()


# -- the loss ----------------------------------------------------------------------------------
def test_bce_distillation_is_the_formula() -> None:
    logits = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.5, -1.0, 0.2], [2.0, 0.1, 0.3, -0.4]])
    y = torch.tensor([2, 3, 1])
    old = torch.tensor([[0.4, -1.0], [2.0, 0.5], [-3.0, 1.0]])
    t = 2.0
    expected = []
    for i in range(3):
        total = 0.0
        for j in range(4):
            target = 1 / (1 + math.exp(-float(old[i, j]) / t)) if j < 2 else float(y[i] == j)
            p = 1 / (1 + math.exp(-float(logits[i, j])))
            total -= target * math.log(p) + (1 - target) * math.log(1 - p)
        expected.append(total)
    assert torch.allclose(bce_distillation(logits, y, old, t), torch.tensor(expected))
    # the strategy's task loss: the mean over the step's samples, old logits from the old model
    s = icarl(temperature=t)
    s.old = lambda x, task: torch.cat([old, torch.full((3, 2), 9.0)], 1)  # type: ignore[assignment]
    s.old_active = 2
    s.old.parameters = lambda: iter([logits])  # type: ignore[attr-defined]
    batch = Batch(torch.zeros(3, 1), y, torch.zeros(3, dtype=torch.long), torch.arange(3))
    loss = s.task_loss(nn.Identity(), batch, logits)
    assert loss is not None and math.isclose(float(loss), sum(expected) / 3, rel_tol=1e-6)
    # before any task has ended: binary cross-entropy on the one-hot targets alone
    plain = icarl().task_loss(nn.Identity(), batch, logits)
    one_hot = F.one_hot(y, 4).float()
    bce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="sum") / 3
    assert plain is not None and torch.allclose(plain, bce)


# -- the hooks in the module ---------------------------------------------------------------------
class Answers(Strategy[NoParams]):
    """A strategy whose task_loss and predict return what it was given (None: not its own)."""

    name = "answers"

    def __init__(self, loss: Tensor | None = None, flip: bool = False) -> None:
        super().__init__(NoParams())
        self.loss, self.flip = loss, flip

    def task_loss(self, model: nn.Module, batch: Batch, logits: Tensor) -> Tensor | None:
        return None if self.loss is None else self.loss + 0 * logits.sum()

    def predict(self, model: nn.Module, x: Tensor, task: Tensor, logits: Tensor) -> Tensor | None:
        return -logits if self.flip else None


def module_and_batch(where: Path, *strategies: Strategy[Any]) -> tuple[ContinualModule, Batch]:
    cfg = small_synthetic(where, "scenario=class")
    dm = ContinualDataModule(cfg.data, scenario="class")
    dm.setup()
    torch.manual_seed(0)
    from pipeline.models import build_model

    model = build_model(cfg.model, dm.input_shape, dm.classes_per_task, "class")
    module = ContinualModule(model, list(strategies), cfg.optim)
    module.start_task(TaskContext(0, dm.tasks[0], dm, model, torch.device("cpu")))
    loader = dm.loader(dm.tasks[0], "test", batch_size=64)
    return module, next(iter(loader))


def test_the_module_trains_on_task_loss_and_evaluates_on_predict(tmp_path: Path) -> None:
    module, batch = module_and_batch(tmp_path)
    loss = module.training_step(batch, 0)
    logits = module.model(batch.x, batch.task)
    assert torch.equal(loss, F.cross_entropy(logits, batch.y))  # no strategy: as it was
    plain_acc = module.accuracy([batch], torch.device("cpu"))
    _, plain_right = module.sample_losses(batch, torch.device("cpu"))

    module.strategies = [Answers(), Answers()]  # both say "not mine": bit for bit the same
    assert torch.equal(module.training_step(batch, 0), loss)
    assert module.accuracy([batch], torch.device("cpu")) == plain_acc
    assert torch.equal(module.sample_losses(batch, torch.device("cpu"))[1], plain_right)

    module.strategies = [Answers(), Answers(torch.tensor(7.0)), Answers(torch.tensor(3.0))]
    assert float(module.training_step(batch, 0).detach()) == 7.0  # the first value, in list order
    module.strategies = [Answers(flip=True)]
    module.eval()
    with torch.no_grad():
        worst = (module.model(batch.x, batch.task).argmin(1) == batch.y).float().mean()
    assert module.accuracy([batch], torch.device("cpu")) == pytest.approx(float(worst))
    losses, right = module.sample_losses(batch, torch.device("cpu"))
    assert torch.equal(right, module.model(batch.x, batch.task).argmin(1) == batch.y)
    assert torch.allclose(losses, F.cross_entropy(logits, batch.y, reduction="none"))  # logits
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no Trainer here
    module.on_validation_epoch_start()
    module.validation_step(batch, 0)
    assert int(module._val_correct) == int(right.sum())


def test_two_strategies_replacing_the_same_hook_are_refused(monkeypatch) -> None:
    class Rival(Strategy[NoParams]):
        name = "rival"

        def predict(self, model: nn.Module, x: Tensor, task: Tensor, logits: Tensor) -> Tensor:
            return logits

    monkeypatch.setitem(REGISTRY, "rival", Rival)
    cfg = compose("synthetic_forgetting", ["scenario=class", "strategy=[icarl]"])
    cfg.strategy = ["icarl", "rival"]
    with pytest.raises(StrategyRefused, match="both replace the module's predict"):
        ICaRL.check_config(cfg.strategies["icarl"], cfg)  # type: ignore[arg-type]


@pytest.mark.parametrize("scenario", ["task", "domain"])
def test_it_is_refused_outside_the_class_incremental_scenario(scenario: str) -> None:
    with pytest.raises(StrategyRefused, match="does not work in"):
        compose("synthetic_forgetting", [f"scenario={scenario}", "strategy=[icarl]"])
    with pytest.raises(ConfigError, match=r"strategies\.icarl\.memory"):
        compose(
            "synthetic_forgetting", ["scenario=class", *CLASS[1:2], "strategies.icarl.memory=x"]
        )


# -- the memory ----------------------------------------------------------------------------------
def harness(where: Path, **params: Any) -> tuple[ICaRL, TaskContext]:
    cfg = small_synthetic(where, *CLASS)
    dm = ContinualDataModule(cfg.data, scenario="class")
    dm.setup()
    model = flat_model((0.0,) * 10)
    s = icarl(**params)
    return s, TaskContext(1, dm.tasks[1], dm, model, torch.device("cpu"))


def test_each_step_replays_its_share_of_the_union(tmp_path: Path) -> None:
    """Step i appends floor((i+1) r) - floor(i r) exemplars, r = batch * |P| / |D_t|, walking
    permutations of the memory: a pass shows every exemplar once before any twice."""
    s, ctx = harness(tmp_path)
    fill(s, [(i, 2 * i) for i in range(10)], list(range(10)))
    s.on_task_start(ctx)  # the exemplars are normalised with their task's statistics
    new = Batch(
        torch.zeros(32, 1, 1, 2),
        torch.full((32,), 10),
        torch.ones(32, dtype=torch.long),
        torch.arange(32),
    )
    shown: list[int] = []
    seen = len(ctx.task.train)
    for step in range(60):
        out = s.transform_batch(new, ctx)
        added = out.id[32:].tolist()
        assert len(added) == ((step + 1) * 320) // seen - (step * 320) // seen
        rows = torch.tensor(added, dtype=torch.long)
        stored = ctx.datamodule.batch_from(s.images[rows], s.labels[rows], s.tasks[rows], rows)  # type: ignore[index]
        assert torch.equal(out.x[32:], stored.x) and torch.equal(out.y[32:], stored.y)
        shown += added
    assert len(shown) == (60 * 320) // seen
    assert sorted(shown[:10]) == list(range(10)) and sorted(shown[10:20]) == list(range(10))


def test_it_keeps_herded_exemplars_and_predicts_by_their_means(tmp_path: Path) -> None:
    cfg = small_synthetic(tmp_path, *CLASS, "strategies.icarl.budget=5")
    data, module, rows = train_tasks(cfg, tmp_path)
    (s,) = module.strategies
    assert isinstance(s, ICaRL)
    assert torch.equal(s.labels, torch.arange(20).repeat_interleave(5))
    assert torch.equal(s.order, torch.arange(5).repeat(20))
    assert s.retention().raw_samples == {"synthetic0": 50, "synthetic1": 50}
    # the last task's classes: herding on the final network's features of their samples
    task, model = data.tasks[1], module.model.eval()
    with torch.no_grad():
        x = data.loader(task, "train", batch_size=1000)
        batch = next(iter(x))
        features = model.backbone(batch.x)
    for c in range(10, 20):
        mine = batch.y == c
        want = batch.id[mine][herding(features[mine], 5)]
        assert torch.equal(s.ids[s.labels == c], want), c
    # the accuracy after the last task is the nearest mean of exemplars', not the logits'
    with torch.no_grad():
        exemplars = model.backbone(s._batch(torch.arange(100)).x)
        for t in (0, 1):
            test = next(iter(data.loader(data.tasks[t], "test", batch_size=1000)))
            nme = nearest_mean(model.backbone(test.x), exemplars, s.labels)
            assert rows[-1][t] == pytest.approx(float((nme == test.y).float().mean()))
            logits = model(test.x, test.task).argmax(1)
            assert rows[-1][t] != pytest.approx(float((logits == test.y).float().mean()))


def test_a_total_budget_is_shared_and_cut_in_herding_order(tmp_path: Path) -> None:
    cfg = small_synthetic(
        tmp_path, *CLASS, "strategies.icarl.memory=total", "strategies.icarl.budget=30"
    )
    _, module, _ = train_tasks(cfg, tmp_path)  # 10 classes: 3 each; 20 classes: 1 each
    (s,) = module.strategies
    assert torch.equal(s.labels, torch.arange(20))  # type: ignore[union-attr]
    assert s.order.tolist() == [0] * 20  # type: ignore[union-attr]


def test_the_state_round_trips_and_a_restored_run_trains_as_the_original(tmp_path: Path) -> None:
    cfg = small_synthetic(tmp_path, *CLASS, "strategies.icarl.budget=4")
    data, module, device = prepare(cfg)
    loop = Loop(cfg, None, data, module, device, ("test",), tmp_path, resumed=False)
    train_task(loop, data.tasks[0])
    weights, states, rng = roundtrip(module.state_dict()), module.strategy_states(), rng_state()
    states = roundtrip(states)
    fresh = REGISTRY["icarl"](module.strategies[0].params)
    fresh.load_state_dict(states["icarl"])
    assert same(fresh.state_dict(), states["icarl"])
    after = train_task(loop, data.tasks[1]).acc["test"]

    data2, module2, _ = prepare(cfg)
    module2.load_state_dict(weights)
    module2.load_strategy_states(states)
    restore_rng(rng)
    loop2 = Loop(cfg, None, data2, module2, device, ("test",), tmp_path, resumed=True)
    assert train_task(loop2, data2.tasks[1]).acc["test"] == after
    for k, v in module.state_dict().items():
        assert torch.equal(v, module2.state_dict()[k]), k
    assert same(module.strategy_states(), module2.strategy_states())
