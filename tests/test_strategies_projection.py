"""GPM (gradient projection memory): its defining properties, and a real run against naive."""

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers.runs import run, small_synthetic
from torch import nn

import pipeline.strategies.gpm as gpm_module
from pipeline.config.schema import ModelConfig
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.models import Classifier, MultiHead, SharedHead, build_model
from pipeline.strategies import parse_params
from pipeline.strategies.gpm import (
    GPM,
    grow_basis,
    input_grams,
    layer_inputs,
    project_out,
    protected_layers,
)


def tiny(head: nn.Module | None = None) -> Classifier:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())  # 6x6 -> 2x4x4
    return Classifier(backbone, 32, head or SharedHead(32, 3))


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


def gpm(threshold: float) -> GPM:
    return GPM(parse_params("gpm", {"threshold": threshold}))


def test_grow_basis_holds_the_energy_asked_and_keeps_the_old_directions() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64) * torch.tensor([5, 3, 1, 0.5, 0.1, 0])
    gram = x.T @ x
    total = float(torch.trace(gram))
    for threshold in (0.5, 0.9, 0.99):
        m = grow_basis(None, gram, threshold).double()
        assert torch.allclose(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-6)
        held = float(torch.trace(m.T @ gram @ m))
        assert held >= threshold * total - 1e-6
        # the fewest directions: one fewer would not hold the threshold
        if m.shape[1] > 1:
            assert float(torch.trace(m[:, :-1].T @ gram @ m[:, :-1])) < threshold * total
    full = grow_basis(None, gram, 1.0)
    assert full.shape[1] == 5  # the rank: no direction for the zero-variance coordinate
    # a second task: the old basis is kept as the first columns, the new ones are orthogonal
    old = grow_basis(None, gram, 0.9)
    y = torch.randn(50, 6, generator=g, dtype=torch.float64)
    new = grow_basis(old, y.T @ y, 0.9)
    assert new.shape[1] >= old.shape[1]
    assert torch.allclose(new[:, : old.shape[1]].abs(), old.abs(), atol=1e-5)
    n = new.double()
    assert torch.allclose(n.T @ n, torch.eye(n.shape[1], dtype=n.dtype), atol=1e-6)
    # nothing new asked: the same basis back
    assert torch.equal(grow_basis(new, y.T @ y, 0.5), new)


def test_conv_inputs_match_the_weight_layout() -> None:
    conv = nn.Conv2d(2, 3, 3)
    x = images(4, 1).repeat(1, 2, 1, 1)
    rows = layer_inputs(conv, x)  # (N * L) x (C*k*k + 1)
    w = torch.cat([conv.weight.reshape(3, -1), conv.bias.unsqueeze(1)], dim=1)
    out = (rows @ w.T).reshape(4, 16, 3).permute(0, 2, 1).reshape(4, 3, 4, 4)
    assert torch.allclose(out, conv(x), atol=1e-5)


def test_a_strided_bias_free_conv_has_no_constant_input() -> None:
    """A ResNet's convolution (stride 2, padding 1, no bias): its unfolded patches with its own
    stride and padding, and no column of ones (it has no bias to pair with one)."""
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
    x = images(4, 1).repeat(1, 2, 1, 1)  # 6x6 -> 3x3
    rows = layer_inputs(conv, x)
    assert rows.shape == (4 * 9, 2 * 9)
    out = (rows @ conv.weight.reshape(3, -1).T).reshape(4, 9, 3).permute(0, 2, 1)
    assert torch.allclose(out.reshape(4, 3, 3, 3), conv(x), atol=1e-5)


def test_the_gram_matrices_are_summed_over_chunks_of_samples(monkeypatch: Any) -> None:
    model = tiny()
    data = [(images(8, 0), torch.zeros(8, dtype=torch.long))]
    whole = input_grams(model, data)
    monkeypatch.setattr(gpm_module, "GRAM_CHUNK", 40)  # a few samples' rows per chunk
    chunked = input_grams(model, data)
    assert all(torch.allclose(chunked[k], whole[k]) for k in whole)


def small_resnet() -> Classifier:
    """The ResNet-18 at width 4 on 3x8x8 images, its running statistics moved off 0 and 1 by
    the first task's training-mode passes."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18", width=4), (3, 8, 8), [3], "domain")
    with torch.no_grad():
        for seed in range(3):
            model(torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) + 1)
    return model


@pytest.mark.parametrize("shared", [True, False])
def test_on_a_resnet_old_outputs_stay_with_the_batch_norms_shared(shared: bool) -> None:
    """Bias-free strided convolutions, 1x1 shortcuts, batch norms: after the first task, AdamW
    steps with GPM, the model in training mode, leave old inputs' outputs as they were. The
    control (``shared`` off: the batch norms not held in eval mode) shows the running
    statistics, re-estimated on new batches, would change them."""
    model = small_resnet()
    g = torch.Generator().manual_seed(9)
    old, new = torch.randn(8, 3, 8, 8, generator=g), torch.randn(16, 3, 8, 8, generator=g) + 2
    strategy = gpm(1.0)
    grams = input_grams(model, [(old, torch.zeros(8, dtype=torch.long))])
    strategy.bases = {k: grow_basis(None, v, 1.0) for k, v in grams.items()}
    model.eval()
    before_old, before_new = model(old).detach(), model(new).detach()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    statistics = [m.running_mean.clone() for m in norms]  # type: ignore[union-attr]
    if shared:
        strategy.on_task_start(SimpleNamespace(model=model))  # type: ignore[arg-type]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(new), torch.arange(16) % 3).backward()
        strategy.after_backward(model)
        opt.step()
        strategy.after_optimizer_step(model)
    model.eval()
    moved = (model(old) - before_old).abs().max()
    assert (moved < 1e-4) == shared, float(moved)
    kept = all(torch.equal(m.running_mean, s) for m, s in zip(norms, statistics, strict=True))
    assert kept == shared
    assert (model(new) - before_new).abs().max() > 1e-2  # the network did learn


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_projected_step_leaves_old_inputs_outputs_unchanged(optimizer: str) -> None:
    model = tiny()
    old = images(8, 0)
    strategy = gpm(1.0)
    grams = input_grams(model, [(old, torch.zeros(8, dtype=torch.long))])
    assert set(grams) == {"backbone.0", "head.linear"}
    strategy.bases = {k: grow_basis(None, v, 1.0) for k, v in grams.items()}
    before_old = model(old).detach()
    new = images(16, 1)
    before_new = model(new).detach()
    head_before = model.head.linear.weight.detach().clone()  # type: ignore[union-attr]
    opt = (
        torch.optim.Adam(model.parameters(), lr=0.1)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    )
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(new), torch.arange(16) % 3).backward()
        strategy.after_backward(model)
        opt.step()
        strategy.after_optimizer_step(model)
    assert torch.allclose(model(old), before_old, atol=1e-4)
    # the network did learn: the head moved and new inputs' outputs changed
    assert not torch.allclose(model.head.linear.weight, head_before)  # type: ignore[union-attr]
    assert (model(new) - before_new).abs().max() > 1e-2


def test_without_gpm_the_same_step_changes_old_outputs() -> None:
    """The control of the test above: the property is GPM's, not the data's."""
    model = tiny()
    old, new = images(8, 0), images(16, 1)
    before_old = model(old).detach()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(new), torch.arange(16) % 3).backward()
        opt.step()
    assert (model(old) - before_old).abs().max() > 1e-2


def test_projected_gradient_is_orthogonal_to_the_basis() -> None:
    g = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(10, 4, generator=g))
    update = torch.randn(3, 10, generator=g)
    assert (project_out(update, basis) @ basis).abs().max() < 1e-5


def test_task_incremental_heads_are_not_protected() -> None:
    model = tiny(MultiHead(32, [3, 3]))
    assert set(protected_layers(model)) == {"backbone.0"}


def test_state_round_trip_and_retention_counts_the_bases() -> None:
    model = tiny()
    strategy = gpm(0.9)
    grams = input_grams(model, [(images(8, 0), torch.zeros(8, dtype=torch.long))])
    strategy.bases = {k: grow_basis(None, v, 0.9) for k, v in grams.items()}
    fresh = gpm(0.9)
    fresh.load_state_dict(strategy.state_dict())
    assert fresh.bases.keys() == strategy.bases.keys()
    assert all(torch.equal(fresh.bases[k], v) for k, v in strategy.bases.items())
    kept = sum(v.numel() * 4 for v in strategy.bases.values())
    assert strategy.retention().state_bytes == kept > 0
    assert strategy.retention().raw_bytes == 0 and not GPM.keeps_raw_data


@pytest.mark.parametrize(("key", "value"), [("threshold", 0), ("threshold", 1.5), ("samples", 0)])
def test_bad_params_are_refused_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^strategies\.gpm\.{key}: "):
        compose("synthetic_forgetting", ["strategy=[gpm]", f"strategies.gpm.{key}={value}"])


def test_forgets_less_than_naive_on_synthetic_tasks(tmp_path: Any) -> None:
    store = tmp_path / "mlruns"
    runs = {
        name: run(small_synthetic(store, f"strategy=[{name}]", "trainer.epochs=1"))
        for name in ("naive", "gpm")
    }
    naive, result = runs["naive"].matrix["test"], runs["gpm"].matrix["test"]
    assert result[0, 0] == naive[0, 0]  # task 0 trains identically
    assert result[1, 0] > naive[1, 0] + 0.05
