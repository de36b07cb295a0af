"""The networks: the parameter count the config check reports against what is built, and the
ResNet-18 of the continual-learning literature (its layout, its inputs, its memory layout)."""

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from pipeline.config.schema import ModelConfig
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.models import RESNET_CHANNELS_LAST_WIDTH, build_model, parameter_count

CONFIGS = {
    "cnn": ModelConfig(name="cnn"),
    "cnn_last": ModelConfig(name="cnn", channels=[8, 16], kernel_size=3, pool="last"),
    "mlp": ModelConfig(name="mlp", hidden=[64, 32]),
    "resnet18_20": ModelConfig(name="resnet18", width=20),
    "resnet18_64": ModelConfig(name="resnet18", width=64),
}


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count_is_that_of_the_built_network(
    name: str, shape: tuple[int, int, int], scenario: str
) -> None:
    cfg = CONFIGS[name]
    model = build_model(cfg, shape, [10, 5], scenario)
    outputs = 10 if scenario == "domain" else 15  # a shared head is as wide as the widest task
    assert parameter_count(cfg, shape, outputs) == sum(p.numel() for p in model.parameters())


def test_resnet18_counts_of_the_literature() -> None:
    """11.2 M parameters for CIFAR-10 at width 64 (He et al.'s ResNet-18 with the small-image
    stem), 1.1 M for GEM's reduced ResNet-18 (width 20)."""
    assert parameter_count(CONFIGS["resnet18_64"], (3, 32, 32), 10) == 11_173_962
    assert parameter_count(CONFIGS["resnet18_20"], (3, 32, 32), 10) == 1_094_750


def test_resnet18_is_the_small_image_network() -> None:
    model = build_model(ModelConfig(name="resnet18", width=20), (3, 32, 32), [10])
    stem = model.backbone[0]
    assert isinstance(stem, nn.Conv2d) and stem.bias is None
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert [b.conv1.out_channels for b in blocks] == [20, 20, 40, 40, 80, 80, 160, 160]
    assert [b.stride for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    shortcuts = [b.downsample for b in blocks if b.downsample is not None]
    assert len(shortcuts) == 3  # where the width and the stride change
    for shortcut in shortcuts:
        conv, norm = shortcut
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None
        assert isinstance(norm, nn.BatchNorm2d)
    assert model.feature_dim == 160 and model.head.linear.in_features == 160


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 7, 9)])
def test_resnet18_takes_any_image_size_and_channels(shape: tuple[int, int, int]) -> None:
    """MNIST, CIFAR, TinyImageNet sizes (and odd ones): the global pooling hands on 8 * width
    features whatever is left of the image."""
    model = build_model(ModelConfig(name="resnet18", width=4), shape, [10, 10], "task")
    model.eval()
    assert model.backbone(torch.randn(2, *shape)).shape == (2, 32)
    assert model(torch.randn(2, *shape), torch.tensor([0, 1])).shape == (2, 10)


@pytest.mark.parametrize("width", [8, 16, 20])
def test_resnet_is_channels_last_from_its_width_and_its_gradients_are_right(width: int) -> None:
    """Channels-last from :data:`RESNET_CHANNELS_LAST_WIDTH` on (narrower, oneDNN's CPU weight
    gradient of a 1x1 stride-2 convolution in that layout is wrong or crashes): its gradients
    are those of the same network channels-first."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18", width=width), (3, 16, 16), [10])
    # (a 1x1 convolution's weight is both layouts at once)
    weights = [
        m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1
    ]
    last = width >= RESNET_CHANNELS_LAST_WIDTH
    assert all(w.is_contiguous(memory_format=torch.channels_last) == last for w in weights)
    first = build_model(ModelConfig(name="resnet18", width=width), (3, 16, 16), [10])
    first.load_state_dict(model.state_dict())
    first = first.to(memory_format=torch.contiguous_format)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    for net in (model, first):
        nn.functional.cross_entropy(net(x), y).backward()
    for (name, a), b in zip(model.named_parameters(), first.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), name


def test_the_resnet_configs_and_the_width_rule() -> None:
    assert compose("synthetic_forgetting", ["model=resnet18"]).model.width == 64
    reduced = compose("synthetic_forgetting", ["model=resnet18_reduced"]).model
    assert (reduced.name, reduced.width) == ("resnet18", 20)
    with pytest.raises(ConfigError, match=r"^model\.width: "):
        compose("synthetic_forgetting", ["model=resnet18", "model.width=0"])


def test_the_mlp_activation_is_relu_or_tanh() -> None:
    """``model.activation``: the hidden layers' nonlinearity (continual-learning-baselines' LwF
    MLP is tanh); a CNN's convolutions keep ReLU; another name is refused in one line."""
    relu = build_model(ModelConfig(name="mlp", hidden=[20, 20]), (1, 4, 4), [2])
    tanh = build_model(ModelConfig(name="mlp", hidden=[20, 20], activation="tanh"), (1, 4, 4), [2])
    assert sum(isinstance(m, nn.Tanh) for m in tanh.modules()) == 2
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())
    assert sum(isinstance(m, nn.ReLU) for m in relu.modules()) == 2
    tanh.load_state_dict(relu.state_dict())  # the same parameters; only the nonlinearity differs
    x = torch.randn(5, 1, 4, 4)
    first = nn.Sequential(*list(relu.backbone)[:2])
    assert torch.allclose(tanh.backbone[:3](x), torch.tanh(first(x)))
    cfg = compose("permuted_mnist", ["model.activation=tanh"])
    assert cfg.model.activation == "tanh"
    with pytest.raises(ConfigError, match=r"model\.activation"):
        compose("permuted_mnist", ["model.activation=gelu"])
